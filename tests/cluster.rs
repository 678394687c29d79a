//! The cluster's building blocks against a real Redis (Debian's `redis-server`, started by the
//! test on a free loopback port): partition leases with an epoch, and the fenced write that
//! Redis itself refuses to an instance whose lease another took over.

mod common;

use std::time::Duration;

use common::{tempdir, Redis};
use rulechain::live::lease::{acquire, fenced_set, release, PartitionKeys, WriteError};

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
