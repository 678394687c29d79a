//! The cluster's building blocks against a real Redis (Debian's `redis-server`, started by the
//! test on a free loopback port): partition leases with an epoch, and the fenced write that
//! Redis itself refuses to an instance whose lease another took over.

mod common;

use std::time::Duration;

use common::{tempdir, Redis};
use rulechain::live::cluster::lease::{acquire, fenced_set, release, PartitionKeys, WriteError};

async fn connect(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(con).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_past_its_lease_can_never_write_again() {
    let dir = tempdir("cluster-lease");
    let redis = Redis::start(&dir);
    let (mut a, mut b) = (connect(&redis).await, connect(&redis).await);
    let keys = PartitionKeys::new("rc", 7);
    assert!(keys.lease().contains("{p7}") && keys.state("snapshot").contains("{p7}"));

    // rc-1 takes the partition; rc-2 cannot while the lease runs; renewing keeps the epoch.
    let e1 = acquire(&mut a, &keys, "rc-1", 1000)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(acquire(&mut b, &keys, "rc-2", 1000).await.unwrap(), None);
    assert_eq!(
        acquire(&mut a, &keys, "rc-1", 1000).await.unwrap(),
        Some(e1)
    );
    fenced_set(&mut a, &keys, e1, "snapshot", b"from rc-1")
        .await
        .unwrap();

    // rc-1 stops renewing (paused) past its lease; rc-2 takes over with a higher epoch.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let e2 = acquire(&mut b, &keys, "rc-2", 5000)
        .await
        .unwrap()
        .expect("expired");
    assert!(e2 > e1);
    fenced_set(&mut b, &keys, e2, "snapshot", b"from rc-2")
        .await
        .unwrap();

    // rc-1 wakes up: its write is refused inside Redis and changes nothing; it cannot renew.
    match fenced_set(&mut a, &keys, e1, "snapshot", b"stale").await {
        Err(WriteError::Stale(m)) => assert!(m.contains("STALE"), "{m}"),
        other => panic!("a stale write went through: {other:?}"),
    }
    assert_eq!(
        get(&mut a, &keys.state("snapshot")).await.as_deref(),
        Some("from rc-2")
    );
    assert_eq!(acquire(&mut a, &keys, "rc-1", 300).await.unwrap(), None);
    // Nor can it release what is no longer its own.
    assert!(!release(&mut a, &keys, "rc-1", e1).await.unwrap());

    // A graceful stop hands over at once: no lease wait, and the epoch moves on.
    assert!(release(&mut b, &keys, "rc-2", e2).await.unwrap());
    let e3 = acquire(&mut a, &keys, "rc-1", 300)
        .await
        .unwrap()
        .expect("released");
    assert!(e3 > e2);
    match fenced_set(&mut b, &keys, e2, "snapshot", b"late").await {
        Err(WriteError::Stale(_)) => {}
        other => panic!("a write after the hand-over went through: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_logs_keep_every_message_in_order_and_replay_from_an_offset() {
    use bytes::Bytes;
    use rulechain::live::cluster::streams::{Entry, PartitionLog, RedisStreams};
    let dir = tempdir("cluster-streams");
    let redis = Redis::start(&dir);
    use rulechain::live::cluster::redis_conn::{connect, RedisSettings};
    use rulechain::live::cluster::streams::AppendError;
    let settings = RedisSettings {
        url: redis.url(),
        ca: None,
        password: None,
    };
    let mut log = RedisStreams::new(connect(&settings).await.unwrap(), "rc", 100_000);
    // 1,000 messages of 20 devices over 4 partitions, appended in batches of 100 (a read of
    // the broker each).
    let entry = |i: u64| Entry {
        partition: (i % 20 % 4) as u32,
        topic: Bytes::from(format!("site/a/device/d{}/telemetry", i % 20)),
        payload: Bytes::from(format!("{{\"seq\":{i}}}")),
        received: 1_700_000_000_000 + i as i64,
    };
    let mut offsets = Vec::new();
    for batch in 0..10u64 {
        let entries: Vec<Entry> = (batch * 100..batch * 100 + 100).map(entry).collect();
        let o = log.append(1, &entries).await.unwrap();
        assert_eq!(o.len(), 100);
        offsets.extend(o);
    }
    // Each partition gives back exactly its messages, in the order they were appended.
    for p in 0..4u32 {
        let want: Vec<Entry> = (0..1000).map(entry).filter(|e| e.partition == p).collect();
        let mut got = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = log.read(p, after.as_deref(), 64).await.unwrap();
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            got.extend(page.into_iter().map(|(_, e)| e));
        }
        assert_eq!(got, want, "partition {p}");
    }
    // A new owner replays from the offset its snapshot covers: what came after, nothing before.
    let covered = &offsets[499]; // message 499, of partition 499 % 20 % 4 = 3
    let tail = log.read(3, Some(covered), 1000).await.unwrap();
    let want: Vec<Entry> = (500..1000)
        .map(entry)
        .filter(|e| e.partition == 3)
        .collect();
    assert_eq!(tail.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), want);
    // Nothing to read after the last.
    let last = offsets.last().unwrap();
    let p = entry(999).partition;
    assert!(log.read(p, Some(last), 10).await.unwrap().is_empty());

    // A newer ingest holder (epoch 2) appends to partition 0; the old one (epoch 1, paused
    // past its lease) is refused there from then on, and nothing of its batch is stored.
    let mut newer = RedisStreams::new(connect(&settings).await.unwrap(), "rc", 100_000);
    newer.append(2, &[entry(0)]).await.unwrap();
    let before = log.len(0).await.unwrap();
    match log.append(1, &[entry(4)]).await {
        Err(AppendError::Stale(m)) => assert!(m.contains("STALE"), "{m}"),
        other => panic!("a stale append went through: {other:?}"),
    }
    assert_eq!(log.len(0).await.unwrap(), before);
    // The reader's request for several partitions at once gives each its entries after its
    // offset (message 1 is partition 1's first: 249 of its 250 follow it).
    let many = log
        .read_many(&[(1, offsets[1].clone()), (2, "0-0".into())], 1000, 10)
        .await
        .unwrap();
    let counts: Vec<(u32, usize)> = many.iter().map(|(p, e)| (*p, e.len())).collect();
    assert_eq!(counts, vec![(1, 249), (2, 250)], "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_password_and_over_tls_is_reached_and_a_bad_setting_is_told_plainly() {
    use rulechain::live::cluster::redis_conn::{connect, RedisSettings};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempdir("cluster-redis-auth");
    let settings =
        |url: String, ca: Option<std::path::PathBuf>, password: Option<&str>| RedisSettings {
            url,
            ca,
            password: password.map(str::to_string),
        };
    // A password: refused without it, and the message never shows one.
    let secured = Redis::start_with(&dir, &["--requirepass", "s3cret-pass"]);
    let plain = format!("redis://127.0.0.1:{}/", secured.port);
    let err = connect(&settings(plain.clone(), None, None))
        .await
        .unwrap_err();
    assert!(err.contains("password"), "{err}");
    let wrong = format!("redis://:not-it@127.0.0.1:{}/", secured.port);
    let err = connect(&settings(wrong, None, None)).await.unwrap_err();
    assert!(err.contains("password") && !err.contains("not-it"), "{err}");
    let with = format!("redis://:s3cret-pass@127.0.0.1:{}/", secured.port);
    connect(&settings(with, None, None)).await.unwrap();
    connect(&settings(plain, None, Some("s3cret-pass")))
        .await
        .unwrap();

    // TLS with the test's own CA: trusted when the CA is given, told plainly when not.
    let tls_dir = tempdir("cluster-redis-tls");
    let certs = common::certs(&tls_dir);
    let (cert, key, ca) = (
        certs.cert.display().to_string(),
        certs.key.display().to_string(),
        certs.ca.display().to_string(),
    );
    let tls = Redis::start_with(
        &tls_dir,
        &[
            "--port",
            "0",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ],
    );
    let url = format!("rediss://127.0.0.1:{}/", tls.port);
    let mut con = connect(&settings(url.clone(), Some(certs.ca.clone()), None))
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    let err = connect(&settings(url, None, None)).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    // A CA for a connection that is not TLS is a mistake worth saying.
    let err = connect(&settings(
        format!("redis://127.0.0.1:{}/", secured.port),
        Some(certs.ca.clone()),
        Some("s3cret-pass"),
    ))
    .await
    .unwrap_err();
    assert!(err.contains("rediss://"), "{err}");
}
