//! The control loop of a cluster member, and how it joins (see the module's docs).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::lease::{self, cluster_key, PartitionKeys};
use super::placement::{self, partition_of};
use super::reader::{self, Feed, Feeds};
use super::redis_conn::{self, RedisSettings};
use super::streams::RedisStreams;
use super::view::{Holder, Member, View};
use super::{appender, fanout, outbox, pstore};
use crate::config::settings::{ClusterSettings, HistorySettings, MqttConn, StateLimits};
use crate::engine::program::RuleSet;
use crate::engine::stats::RuleStats;
use crate::engine::Device;
use crate::live::shard::{self, ShardCtx, ShardMsg};
use crate::live::shards::Shards;
use crate::live::{ingest, RateLimit, Stats};
use crate::topic::TopicPattern;

/// What a partition's executor gets, besides its state.
pub struct ShardTemplate {
    /// Where effects go.
    pub outbox: crate::live::egress::Outbox,
    /// Checkpoint interval.
    pub checkpoint: Duration,
    /// Payload limits.
    pub limits: crate::message::PayloadLimits,
    /// The whole engine's bounds (each partition takes its share).
    pub state_limits: StateLimits,
    /// Recent values, whole engine.
    pub history: HistorySettings,
    /// `engine.offline_after` (ms).
    pub offline_after: i64,
    /// The live trace.
    pub tracer: Arc<crate::live::trace::Tracer>,
    /// Each partition's chain counters (kept across moves).
    pub rule_stats: Vec<Arc<RuleStats>>,
    /// Queue length per partition.
    pub queue: usize,
    /// Signed messages (`ingest.signature`).
    pub signature: Option<crate::signature::SignatureSettings>,
}

/// Everything the cluster needs from the engine.
pub struct Setup {
    /// `cluster:`.
    pub cluster: ClusterSettings,
    /// The broker, for ingest (its client id is the cluster's: one session for all).
    pub mqtt: MqttConn,
    /// Its TLS.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Topic patterns.
    pub patterns: Vec<TopicPattern>,
    /// This instance's HTTP API, told to the others.
    pub http: Option<String>,
    /// The executors' parts.
    pub template: ShardTemplate,
    /// The rules in force (a partition taken over starts with these).
    pub rules: watch::Receiver<Arc<RuleSet>>,
    /// The devices file's devices.
    pub devices: HashMap<Arc<str>, Device>,
    /// The road to the partitions' executors (the API's).
    pub shards: Shards,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Log limiter.
    pub limit: Arc<RateLimit>,
    /// How long the stop may take.
    pub shutdown_timeout: Duration,
    /// The API's token, for the requests this instance hands to another.
    pub http_token: Option<Arc<str>>,
}

impl Setup {
    fn redis(&self) -> RedisSettings {
        RedisSettings {
            url: self.cluster.redis.clone(),
            ca: self.cluster.ca.clone(),
            password: self.cluster.password.clone(),
        }
    }
}

/// The running cluster member: its view, and its control task (which, at the stop, hands
/// everything over and leaves).
pub struct Running {
    /// The shared view.
    pub view: View,
    /// The control task.
    pub task: JoinHandle<()>,
}

/// Joins the cluster: checks the settings that can be checked without Redis now (a bad URL or
/// CA file is an error at once); Redis itself is reached by the control task, which retries
/// while it cannot (the HTTP API stays up and `/readyz` says why).
pub fn start(mut setup: Setup, stop: watch::Receiver<bool>) -> Result<Running, String> {
    let client = redis_conn::client(&setup.redis())?;
    let c = setup.cluster.clone();
    setup.shards.partitioned(c.partitions);
    // Every room's recent frames, for a dashboard that reconnects here from another instance.
    setup
        .template
        .outbox
        .sinks
        .hub
        .keep_recent(crate::sinks::hub::RECENT_FRAMES);
    // Reminders of an alarm come from the instance that owns its device.
    let here = setup.shards.clone();
    setup
        .template
        .outbox
        .alarms
        .set_local(Box::new(move |d| here.is_here(d)));
    let view = View::new(&c.instance, c.partitions, c.lease, &c.prefix);
    // An operator's action on another instance's alarm goes to that instance.
    setup.shards.set_remote(super::remote::remote_acks(
        view.clone(),
        setup.http_token.clone(),
    )?);
    // WebSocket frames and alarm transitions go through Redis to every instance.
    let (frames_tx, frames_rx) = mpsc::channel(1024);
    setup.template.outbox.fanout = Some(frames_tx);
    let frames = tokio::spawn(fanout::write(
        setup.redis(),
        c.prefix.clone(),
        c.stream_keep,
        frames_rx,
        view.clone(),
        setup.limit.clone(),
    ));
    let follower = tokio::spawn(fanout::follow(
        fanout::Follow {
            redis: setup.redis(),
            prefix: c.prefix.clone(),
            partitions: c.partitions,
            hub: setup.template.outbox.sinks.hub.clone(),
            alarms: setup.template.outbox.alarms.clone(),
            view: view.clone(),
            limit: setup.limit.clone(),
        },
        stop.clone(),
    ));
    let incarnation = format!(
        "{:x}",
        placement::stable_hash(&[
            &crate::engine::clock::wall_ms().to_be_bytes(),
            &std::process::id().to_be_bytes(),
            c.instance.as_bytes(),
        ])
    );
    let control = Control {
        holder: format!("{}/{incarnation}", c.instance),
        incarnation,
        client,
        view: view.clone(),
        running: BTreeMap::new(),
        stopping: Vec::new(),
        feeds: Feeds::default(),
        ingest: None,
        run_counter: 0,
        frames,
        follower,
        setup,
    };
    let task = tokio::spawn(control.run(stop));
    Ok(Running { view, task })
}

/// A partition this instance runs.
struct Partition {
    epoch: u64,
    tx: mpsc::Sender<ShardMsg>,
    thread: std::thread::JoinHandle<()>,
    /// When its lease was last renewed (by this instance's clock: only to stop early).
    renewed: Instant,
}

/// The ingest this instance runs while it holds the lease.
struct IngestRun {
    epoch: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    appender: JoinHandle<()>,
    renewed: Instant,
}

struct Control {
    setup: Setup,
    /// This run of the instance: its name and a token of this process (a restarted instance of
    /// the same name waits for its previous leases to expire).
    holder: String,
    incarnation: String,
    client: redis::Client,
    view: View,
    running: BTreeMap<u32, Partition>,
    /// Partitions being handed over or dropped: their threads finishing.
    stopping: Vec<JoinHandle<()>>,
    feeds: Feeds,
    ingest: Option<IngestRun>,
    run_counter: u64,
    /// The task sharing the partitions' frames, and the one following everyone's.
    frames: JoinHandle<()>,
    follower: JoinHandle<()>,
}

/// Heartbeat: drops expired members, refuses a name alive under another incarnation, renews
/// this one. KEYS: members (zset name → expiry ms), info (hash name → JSON), incarnations
/// (hash). ARGV: name, incarnation, ttl ms, info. Returns Redis's time (ms) and the members
/// with their expiry.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, n in ipairs(dead) do
  redis.call('ZREM', KEYS[1], n)
  redis.call('HDEL', KEYS[2], n)
  redis.call('HDEL', KEYS[3], n)
end
local alive = redis.call('ZSCORE', KEYS[1], ARGV[1])
local inc = redis.call('HGET', KEYS[3], ARGV[1])
if alive and inc and inc ~= ARGV[2] then
  return redis.error_reply('TAKEN an instance named ' .. ARGV[1] .. ' is alive (another process, or this one before a restart until its heartbeat expires)')
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
local m = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local info = redis.call('HGETALL', KEYS[2])
return {now, m, info}
";

static HEARTBEAT_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(HEARTBEAT));

/// Leaves: the member and its facts go at once. KEYS: members, info, incarnations. ARGV: name,
/// incarnation.
const LEAVE: &str = r"
if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return 1
";

/// One control step's facts.
struct Facts {
    now: i64,
    /// Live members: name, expiry (ms, Redis time), info JSON.
    members: Vec<(String, i64, Option<String>)>,
    /// Each partition's lease: holder, epoch, ms left.
    owners: Vec<Option<(String, u64, i64)>>,
    ingest: Option<(String, u64, i64)>,
}

/// `"<instance>/<incarnation> <epoch>"` → (holder, epoch).
fn parse_lease(v: &str) -> Option<(String, u64)> {
    let (holder, epoch) = v.split_once(' ')?;
    Some((holder.to_string(), epoch.parse().ok()?))
}

/// The instance part of a holder.
fn instance_of(holder: &str) -> &str {
    holder.split_once('/').map_or(holder, |(i, _)| i)
}

impl Control {
    fn c(&self) -> &ClusterSettings {
        &self.setup.cluster
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let tick = (self.c().lease / 3).max(Duration::from_millis(100));
        let mut con = None;
        let mut reader = None;
        let mut outbox = None;
        let (reader_stop_tx, reader_stop) = watch::channel(false);
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                break;
            }
            if con.is_none() {
                match self.join().await {
                    Ok(c) => {
                        *self.view.con.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
                        con = Some(c);
                        failures = 0;
                    }
                    Err(e) => {
                        self.view.redis_failed(&e);
                        failures += 1;
                        if failures == 1 || self.setup.limit.allow() {
                            tracing::error!("cluster: {e}; retrying");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(tick.min(Duration::from_secs(2))) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                }
            }
            if outbox.is_none() {
                if let Ok(oc) =
                    redis_conn::connect_with(&self.setup.redis(), Duration::from_secs(3)).await
                {
                    outbox = Some(tokio::spawn(outbox::run(
                        outbox::Outboxes {
                            con: oc,
                            prefix: self.c().prefix.clone(),
                            instance: self.c().instance.clone(),
                            feeds: self.feeds.clone(),
                            notifier: self.setup.template.outbox.sinks.notify.clone(),
                            view: self.view.clone(),
                            limit: self.setup.limit.clone(),
                            alarms: self.setup.template.outbox.alarms.clone(),
                        },
                        reader_stop.clone(),
                    )));
                }
            }
            if reader.is_none() {
                match redis_conn::connect_with(&self.setup.redis(), Duration::from_secs(3)).await {
                    Ok(rc) => {
                        let log = RedisStreams::new(rc, &self.c().prefix, self.c().stream_keep);
                        reader = Some(tokio::spawn(reader::run(
                            reader::Reader {
                                log,
                                feeds: self.feeds.clone(),
                                patterns: self.setup.patterns.clone(),
                                stats: self.setup.stats.clone(),
                                view: self.view.clone(),
                                limit: self.setup.limit.clone(),
                                linger: self.c().linger,
                            },
                            reader_stop.clone(),
                        )));
                    }
                    Err(e) => self.view.redis_failed(&e),
                }
            }
            let Some(c) = con.as_mut() else { continue };
            self.step(c).await;
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.view.wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
        // The stop: ingest first (what it read is appended and acknowledged), then every
        // partition hands over (a final snapshot, the lease released), then the member leaves.
        tracing::info!("cluster: leaving; handing the partitions over");
        let deadline = tokio::time::Instant::now() + self.setup.shutdown_timeout;
        if let Some(c) = con.as_mut() {
            self.stop_ingest(c, true, deadline).await;
        } else if let Some(i) = self.ingest.take() {
            i.task.abort();
            i.appender.abort();
        }
        let owned: Vec<u32> = self.running.keys().copied().collect();
        for p in owned {
            self.stop_partition(p, true);
        }
        for t in std::mem::take(&mut self.stopping) {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        let _ = reader_stop_tx.send(true);
        for t in [reader, outbox].into_iter().flatten() {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        // The partitions' last frames are shared before the instance leaves.
        self.setup.template.outbox.fanout = None;
        let _ = tokio::time::timeout_at(deadline, &mut self.frames).await;
        self.follower.abort();
        if let Some(c) = con.as_mut() {
            let keys = self.member_keys();
            let r: Result<u64, _> = redis::Script::new(LEAVE)
                .key(&keys[0])
                .key(&keys[1])
                .key(&keys[2])
                .arg(&self.c().instance)
                .arg(&self.incarnation)
                .invoke_async(c)
                .await;
            if let Err(e) = r {
                tracing::warn!("cluster: could not leave cleanly ({e}); the others see this instance gone when its heartbeat expires");
            }
        }
        tracing::info!("cluster: left");
    }

    fn member_keys(&self) -> [String; 3] {
        let p = &self.c().prefix;
        [
            cluster_key(p, "members"),
            cluster_key(p, "info"),
            cluster_key(p, "incarnations"),
        ]
    }

    /// Connects, and checks that the cluster's partition count is this instance's (the first
    /// instance sets it).
    async fn join(&mut self) -> Result<ConnectionManager, String> {
        let mut con = redis_conn::connect(&self.setup.redis()).await?;
        let key = cluster_key(&self.c().prefix, "partitions");
        let want = self.c().partitions;
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(want)
            .arg("NX")
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        let have: u32 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        if have != want {
            return Err(format!(
                "the cluster `{}` has {have} partitions and this instance is configured with {want}: the count is fixed for the cluster's life; set `cluster.partitions: {have}` (or use another `cluster.prefix` for a new cluster)",
                self.c().prefix
            ));
        }
        tracing::info!(
            instance = %self.c().instance,
            partitions = want,
            lease = ?self.c().lease,
            "cluster: joined"
        );
        Ok(con)
    }

    /// One control step.
    async fn step(&mut self, con: &mut ConnectionManager) {
        self.reap();
        self.stop_overdue(con).await;
        let facts = match self.facts(con).await {
            Ok(f) => f,
            Err(e) => {
                self.view.redis_failed(&e);
                if self.setup.limit.allow() {
                    tracing::warn!(
                        "cluster: {e}; the partitions held stay until their lease runs out"
                    );
                }
                return;
            }
        };
        self.view.redis_ok();
        let me = self.c().instance.clone();
        let live: Vec<&str> = facts.members.iter().map(|(n, _, _)| n.as_str()).collect();
        let current: Vec<Option<&str>> = facts
            .owners
            .iter()
            .map(|o| o.as_ref().map(|(h, _, _)| instance_of(h)))
            .collect();
        let target = placement::place(&live, &current);
        // Partitions whose lease is no longer this run's: lost (another took them after this
        // instance could not renew): stop without a word to Redis.
        let lost: Vec<u32> = self
            .running
            .iter()
            .filter(|(p, part)| {
                facts.owners[**p as usize]
                    .as_ref()
                    .is_none_or(|(h, e, _)| *h != self.holder || *e != part.epoch)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in lost {
            self.lose(p);
        }
        for p in 0..self.c().partitions {
            let mine = target.get(p as usize).is_some_and(|t| *t == me);
            let keys = PartitionKeys::new(&self.c().prefix, p);
            if let Some(part) = self.running.get(&p) {
                let epoch = part.epoch;
                if !mine {
                    // The placement gives it to another: a final snapshot, then the lease.
                    self.stop_partition(p, true);
                    continue;
                }
                match lease::acquire(con, &keys, &self.holder, self.lease_ms()).await {
                    Ok(Some(e)) if e == epoch => {
                        if let Some(part) = self.running.get_mut(&p) {
                            part.renewed = Instant::now();
                        }
                    }
                    Ok(_) => self.lose(p),
                    Err(e) => self.view.redis_failed(&e),
                }
            } else if mine && facts.owners[p as usize].is_none() {
                match lease::acquire(con, &keys, &self.holder, self.lease_ms()).await {
                    Ok(Some(epoch)) => {
                        if let Err(e) = self.start_partition(con, p, epoch).await {
                            tracing::error!(
                                partition = p,
                                "cluster: cannot take the partition: {e}; giving it back"
                            );
                            let _ = lease::release(con, &keys, &self.holder, epoch).await;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => self.view.redis_failed(&e),
                }
            }
        }
        self.step_ingest(con, &facts).await;
        self.publish(con, &facts, &target).await;
    }

    /// Stops, by this instance's clock, what it could not renew within the lease (Redis out
    /// of reach): another instance may hold it now.
    async fn stop_overdue(&mut self, con: &mut ConnectionManager) {
        let lease = self.c().lease;
        let overdue: Vec<u32> = self
            .running
            .iter()
            .filter(|(_, part)| part.renewed.elapsed() >= lease)
            .map(|(p, _)| *p)
            .collect();
        if !overdue.is_empty() {
            tracing::warn!(
                partitions = ?overdue,
                "cluster: leases not renewed within {lease:?}; stopping those partitions (another instance may own them now)"
            );
        }
        for p in overdue {
            self.lose(p);
        }
        if self
            .ingest
            .as_ref()
            .is_some_and(|i| i.renewed.elapsed() >= lease || i.appender.is_finished())
        {
            self.stop_ingest(con, false, tokio::time::Instant::now())
                .await;
        }
    }

    /// Joins the threads of partitions that finished stopping.
    fn reap(&mut self) {
        self.stopping.retain(|t| !t.is_finished());
    }

    fn lease_ms(&self) -> u64 {
        self.c().lease.as_millis() as u64
    }

    /// The heartbeat, and every lease's holder (one round trip for the leases).
    async fn facts(&mut self, con: &mut ConnectionManager) -> Result<Facts, String> {
        let keys = self.member_keys();
        let info = serde_json::json!({
            "http": self.setup.http,
        })
        .to_string();
        type Beat = (i64, Vec<(String, i64)>, Vec<(String, String)>);
        let (now, members, infos): Beat = HEARTBEAT_SCRIPT
            .key(&keys[0])
            .key(&keys[1])
            .key(&keys[2])
            .arg(&self.c().instance)
            .arg(&self.incarnation)
            .arg(self.lease_ms())
            .arg(info)
            .invoke_async(con)
            .await
            .map_err(|e| {
                if e.code() == Some("TAKEN") {
                    format!("{e}: give each instance its own `cluster.instance`")
                } else {
                    e.to_string()
                }
            })?;
        let infos: HashMap<String, String> = infos.into_iter().collect();
        let members = members
            .into_iter()
            .map(|(n, exp)| {
                let i = infos.get(&n).cloned();
                (n, exp, i)
            })
            .collect();
        let mut pipe = redis::pipe();
        let prefix = &self.c().prefix;
        for p in 0..self.c().partitions {
            let k = PartitionKeys::new(prefix, p);
            pipe.cmd("GET").arg(k.lease()).cmd("PTTL").arg(k.lease());
        }
        let ik = PartitionKeys::named(prefix, "ingest");
        pipe.cmd("GET").arg(ik.lease()).cmd("PTTL").arg(ik.lease());
        let raw: Vec<redis::Value> = pipe.query_async(con).await.map_err(|e| e.to_string())?;
        let mut leases = raw.chunks(2).map(|pair| {
            let v: Option<String> = pair
                .first()
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .flatten();
            let ttl: i64 = pair
                .get(1)
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or(-2);
            v.as_deref()
                .and_then(parse_lease)
                .map(|(h, e)| (h, e, ttl.max(0)))
        });
        let owners: Vec<_> = (0..self.c().partitions)
            .map(|_| leases.next().flatten())
            .collect();
        let ingest = leases.next().flatten();
        Ok(Facts {
            now,
            members,
            owners,
            ingest,
        })
    }

    /// Takes partition `p` at `epoch`: its snapshot and the offset it covers, an executor
    /// with that state, and a place in the reader from that offset (the replay).
    async fn start_partition(
        &mut self,
        con: &mut ConnectionManager,
        p: u32,
        epoch: u64,
    ) -> Result<(), String> {
        let began = Instant::now();
        let keys = PartitionKeys::new(&self.c().prefix, p);
        let state: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(keys.state("state"))
            .query_async(con)
            .await
            .map_err(|e| e.to_string())?;
        let saved = match state.get("s") {
            Some(s) => shard::decode_snapshot(s, state.get("a").cloned())
                .map_err(|e| format!("its saved state cannot be read: {e}"))?,
            None => None,
        };
        let after = state
            .get("o")
            .and_then(|o| String::from_utf8(o.clone()).ok())
            .unwrap_or_else(|| "0-0".into());
        let partitions = self.c().partitions;
        let devices: HashMap<Arc<str>, Device> = self
            .setup
            .devices
            .iter()
            .filter(|(id, _)| partition_of(id, partitions) == p)
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect();
        let t = &self.setup.template;
        let (tx, rx) = mpsc::channel(t.queue);
        let ctx = ShardCtx {
            index: p as usize,
            store: Arc::new(pstore::PartitionStore::new(
                self.client.clone(),
                &self.c().prefix,
                p,
                epoch,
            )),
            stats: self.setup.stats.clone(),
            outbox: t.outbox.clone(),
            done: None,
            checkpoint: t.checkpoint,
            limits: t.limits,
            state_limits: t.state_limits.per_shard(partitions as usize),
            rule_stats: t.rule_stats[p as usize].clone(),
            history: (t.history, partitions as usize),
            offline_after: t.offline_after,
            tracer: t.tracer.clone(),
            signature: t.signature.clone(),
        };
        let rules = self.setup.rules.borrow().clone();
        let thread = std::thread::Builder::new()
            .name(format!("partition-{p}"))
            .spawn(move || shard::run(rules, devices, saved, rx, ctx))
            .map_err(|e| format!("cannot start its thread: {e}"))?;
        self.run_counter += 1;
        self.feeds.insert(
            p,
            Feed {
                tx: tx.clone(),
                after: after.clone(),
                run: self.run_counter,
            },
        );
        self.setup.shards.set_partition(p, Some(&tx));
        self.running.insert(
            p,
            Partition {
                epoch,
                tx,
                thread,
                renewed: Instant::now(),
            },
        );
        let ms = began.elapsed().as_millis() as u64;
        self.view.stats.last_restore_ms.store(ms, Relaxed);
        self.view.stats.acquired.fetch_add(1, Relaxed);
        self.view
            .stats
            .owned
            .store(self.running.len() as u64, Relaxed);
        tracing::info!(
            partition = p,
            epoch,
            replay_after = %after,
            took_ms = ms,
            "cluster: partition taken"
        );
        Ok(())
    }

    /// The lease ran out or another holds it: stop at once (whatever the executor still
    /// writes is refused by the epoch).
    fn lose(&mut self, p: u32) {
        if self.running.contains_key(&p) {
            tracing::warn!(
                partition = p,
                "cluster: partition lost (its lease ran out before this instance renewed it); stopping it"
            );
            self.view.stats.lost.fetch_add(1, Relaxed);
            self.stop_partition(p, false);
        }
    }

    /// Stops partition `p`: no more messages for it; its executor finishes what it has
    /// queued, writes its last snapshot (refused when the lease was lost) and ends; a hand-over
    /// then releases the lease, so the next owner need not wait for it to expire.
    fn stop_partition(&mut self, p: u32, hand_over: bool) {
        let Some(part) = self.running.remove(&p) else {
            return;
        };
        self.feeds.remove(p);
        self.setup.shards.set_partition(p, None);
        self.view
            .stats
            .owned
            .store(self.running.len() as u64, Relaxed);
        let Partition {
            epoch, tx, thread, ..
        } = part;
        drop(tx);
        let keys = PartitionKeys::new(&self.c().prefix, p);
        let holder = self.holder.clone();
        // The control loop's own connection (a clone shares it).
        let con = self
            .view
            .con
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let stats = self.view.stats.clone();
        self.stopping.push(tokio::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            if hand_over {
                let released = match con {
                    Some(mut c) => lease::release(&mut c, &keys, &holder, epoch).await,
                    None => Err("not connected to Redis".to_string()),
                };
                match released {
                    Ok(_) => {
                        stats.released.fetch_add(1, Relaxed);
                        tracing::info!(partition = p, epoch, "cluster: partition handed over");
                    }
                    Err(e) => tracing::warn!(
                        partition = p,
                        "cluster: could not release the lease ({e}); the next owner takes it when it expires"
                    ),
                }
            }
        }));
    }

    /// Holds or seeks the ingest lease; starts or stops reading the broker accordingly.
    async fn step_ingest(&mut self, con: &mut ConnectionManager, facts: &Facts) {
        let keys = PartitionKeys::named(&self.c().prefix, "ingest");
        let held = self.ingest.as_ref().map(|i| i.epoch);
        let free = facts.ingest.is_none();
        if held.is_none() && !free {
            return;
        }
        match lease::acquire(con, &keys, &self.holder, self.lease_ms()).await {
            Ok(Some(e)) if held == Some(e) => {
                if let Some(i) = self.ingest.as_mut() {
                    i.renewed = Instant::now();
                }
            }
            Ok(Some(e)) => {
                if held.is_some() {
                    self.stop_ingest(con, false, tokio::time::Instant::now())
                        .await;
                }
                self.start_ingest(e).await;
            }
            Ok(None) => {
                if held.is_some() {
                    tracing::warn!("cluster: the ingest lease is another instance's now");
                    self.stop_ingest(con, false, tokio::time::Instant::now())
                        .await;
                }
            }
            Err(e) => self.view.redis_failed(&e),
        }
    }

    /// Reads the broker as the cluster's one ingest, appending to the partition logs.
    async fn start_ingest(&mut self, epoch: u64) {
        let con = match redis_conn::connect(&self.setup.redis()).await {
            Ok(c) => c,
            Err(e) => {
                self.view.redis_failed(&e);
                return;
            }
        };
        let log = RedisStreams::new(con, &self.c().prefix, self.c().stream_keep);
        let (tx, rx) = mpsc::channel(self.setup.template.queue);
        let (done_tx, done_rx) = shard::done_channel();
        let appender = tokio::spawn(appender::run(
            appender::Appender {
                log,
                epoch,
                partitions: self.c().partitions,
                linger: self.c().linger,
                done: done_tx,
                view: self.view.clone(),
                limit: self.setup.limit.clone(),
            },
            rx,
        ));
        // One session for the whole cluster: its client id is the configured one, on every
        // instance; persistent, at QoS 1, so that what one holder had not acknowledged the
        // next receives.
        let mut conn = self.setup.mqtt.clone();
        conn.persistent_session = true;
        conn.qos = 1;
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(ingest::run(
            ingest::Ingest {
                conn,
                tls: self.setup.tls.clone(),
                patterns: self.setup.patterns.clone(),
                shards: vec![tx],
                done: done_rx,
                stats: self.setup.stats.clone(),
                limit: self.setup.limit.clone(),
            },
            stop_rx,
        ));
        tracing::info!(
            epoch,
            "cluster: this instance holds the ingest; reading the broker"
        );
        self.view.stats.ingest_held.store(1, Relaxed);
        self.ingest = Some(IngestRun {
            epoch,
            stop: stop_tx,
            task,
            appender,
            renewed: Instant::now(),
        });
    }

    /// Stops reading the broker. `graceful` (this instance stops): what was read is appended
    /// and acknowledged first, then the lease is released. Otherwise (lost): at once, nothing
    /// more acknowledged: the broker gives the new holder what this one had not.
    async fn stop_ingest(
        &mut self,
        con: &mut ConnectionManager,
        graceful: bool,
        deadline: tokio::time::Instant,
    ) {
        let Some(i) = self.ingest.take() else { return };
        self.view.stats.ingest_held.store(0, Relaxed);
        self.setup.stats.connected.store(false, Relaxed);
        if graceful {
            let _ = i.stop.send(true);
            let abort = i.task.abort_handle();
            if tokio::time::timeout_at(deadline, i.task).await.is_err() {
                abort.abort();
            }
            let _ = tokio::time::timeout_at(deadline, i.appender).await;
            let keys = PartitionKeys::named(&self.c().prefix, "ingest");
            let _ = lease::release(con, &keys, &self.holder, i.epoch).await;
            tracing::info!("cluster: ingest handed over");
        } else {
            i.task.abort();
            i.appender.abort();
            tracing::warn!(
                "cluster: stopped reading the broker (the ingest lease is not this instance's)"
            );
        }
    }

    /// Shares what this step saw: the view (the API) and this instance's read positions
    /// (Redis: the backlog of each partition is counted from them).
    async fn publish(&mut self, con: &mut ConnectionManager, facts: &Facts, target: &[String]) {
        let positions = self.feeds.positions();
        if !positions.is_empty() {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(cluster_key(&self.c().prefix, "read"));
            for (p, o) in &positions {
                cmd.arg(*p).arg(o);
            }
            let r: Result<u64, _> = cmd.query_async(con).await;
            if let Err(e) = r {
                self.view.redis_failed(&e.to_string());
            }
        }
        let mut per: HashMap<&str, usize> = HashMap::new();
        for o in facts.owners.iter().flatten() {
            *per.entry(instance_of(&o.0)).or_default() += 1;
        }
        let instances = facts
            .members
            .iter()
            .map(|(n, exp, info)| Member {
                name: n.clone(),
                http: info
                    .as_deref()
                    .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
                    .and_then(|v| v["http"].as_str().map(str::to_string)),
                lease_ms_left: exp - facts.now,
                partitions: per.get(n.as_str()).copied().unwrap_or(0),
            })
            .collect();
        let holder = |o: &(String, u64, i64)| Holder {
            instance: instance_of(&o.0).to_string(),
            epoch: o.1,
            lease_ms_left: o.2,
        };
        let mut s = self.view.lock();
        s.instances = instances;
        s.owners = facts
            .owners
            .iter()
            .map(|o| o.as_ref().map(holder))
            .collect();
        s.ingest = facts.ingest.as_ref().map(holder);
        s.owned = self.running.keys().copied().collect();
        s.joined = !target.is_empty();
    }
}
