//! The running engine, wired from named parts: the MQTT connections, the alarm registry, the
//! sinks, the shards, ingest, the reloader, the HTTP API; then the
//! shutdown, in the order that loses nothing.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::os::FdBudget;
use super::shard::{self, ShardMsg};
use super::shards::Shards;
use super::trace::Tracer;
use super::{
    broker, cluster, egress, http, ingest, link, publisher, reload, store, RateLimit, Stats,
};
use crate::alarm::registry::AlarmRegistry;
use crate::clients::sim;
use crate::config::settings::{MqttConn, Settings};
use crate::engine::program::RuleSet;
use crate::engine::stats::RuleStats;
use crate::engine::Device;
use crate::sinks::Sinks;

/// `run`'s options besides the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Also run the device simulator (`--demo`).
    pub demo: bool,
    /// Move a saved state file aside and start empty (`--reset-state`).
    pub reset_state: bool,
}

/// The state store, opened and read at start.
pub(super) struct SavedState {
    pub(super) store: Arc<dyn store::StateStore>,
    /// Each shard's decoded snapshot, one per shard the state was written by (the engine runs
    /// that many).
    pub(super) snapshots: Vec<Option<crate::engine::persist::Snapshot>>,
}

/// Serves until SIGINT/SIGTERM, then shuts down.
/// The silences (read back from `silences.json` in the state dir) and the inhibition rules,
/// with what the devices file says of each device.
fn silences(
    settings: &Settings,
    devices: &HashMap<Arc<str>, Device>,
) -> Result<Arc<crate::alarm::silence::Silences>, String> {
    let mut facts = crate::alarm::silence::DeviceFacts::default();
    for (id, d) in devices {
        if let Some(t) = &d.type_ {
            facts.types.insert(id.to_string(), t.to_string());
        }
        let attrs: HashMap<String, String> = d
            .registry_attrs()
            .iter()
            .map(|(k, v)| {
                let text = match v.clone().into_immutable_string() {
                    Ok(s) => s.to_string(),
                    Err(_) => v.to_string(),
                };
                (k.to_string(), text)
            })
            .collect();
        if !attrs.is_empty() {
            facts.attrs.insert(id.to_string(), attrs);
        }
    }
    let s = crate::alarm::silence::Silences::new(
        Some(settings.state_dir.join("silences.json")),
        settings.inhibit.clone(),
        facts,
    );
    let n = s.load()?;
    if n > 0 {
        tracing::info!(silences = n, "silences read back");
    }
    Ok(Arc::new(s))
}

/// Saves the alarms' history and the channels' memory every two seconds when they changed,
/// and once more at the stop.
async fn save_files(
    h: Arc<crate::alarm::history::History>,
    m: Arc<crate::sinks::notify::memory::Memory>,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = every.tick() => false,
            _ = stop.changed() => true,
        };
        let (h2, m2) = (h.clone(), m.clone());
        if let Ok(errors) = tokio::task::spawn_blocking(move || [h2.save(), m2.save()]).await {
            for e in errors.into_iter().filter_map(Result::err) {
                tracing::warn!("{e}");
            }
        }
        if last || *stop.borrow() {
            break;
        }
    }
}

pub(super) async fn serve(
    settings: Settings,
    opts: RunOptions,
    state: Option<SavedState>,
    reloader: reload::Reloader,
    rules: Arc<RuleSet>,
    devices: HashMap<Arc<str>, Device>,
    embedded: Option<broker::Links>,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let stats = Arc::new(Stats::default());
    let limit = Arc::new(RateLimit::new(5));
    let (stop_tx, stop) = watch::channel(false);
    let listener = match settings.http {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let conn = settings.mqtt();
    let tls = link::tls_connector(&conn)?;
    let (ingest_links, egress_link) = match embedded {
        Some(l) => {
            let (i, e) = l.split();
            (Some(i), Some(e))
        }
        None => (None, None),
    };
    let (done_tx, done_rx) = shard::done_channel();
    // In a cluster every instance has an egress connection of its own: its client id names
    // the instance (ingest's is the cluster's, see `cluster`).
    let egress_conn = match &settings.cluster {
        Some(c) => MqttConn {
            client_id: format!("{}-{}", conn.client_id, c.instance),
            ..conn.clone()
        },
        None => conn.clone(),
    };
    let mqtt = Mqtt::start(
        &egress_conn,
        &tls,
        egress_link,
        &done_tx,
        &stats,
        &limit,
        settings.shutdown_timeout,
    );
    // The open alarms; acknowledgements (API, WebSocket) go through it to the device's shard,
    // on the road every operator's action and question takes (pointed at the shards below).
    let shards = Shards::new();
    let alarms = Arc::new(AlarmRegistry::new(shards.ack_route()));
    alarms.set_silences(silences(&settings, &devices)?);
    let history = Arc::new(crate::alarm::history::History::new(Some(
        settings.state_dir.join("alarm-history.json"),
    )));
    history.load()?;
    alarms.set_history(history.clone());
    let fds = FdBudget::new(
        settings.http_max_connections,
        settings.websocket.max_clients,
    );
    // What the channels remember (reminders, a bot's messages) over a restart.
    let memory = Arc::new(crate::sinks::notify::memory::Memory::new(Some(
        settings.state_dir.join("channels.json"),
    )));
    let reminders = memory.load()?;
    if reminders > 0 {
        tracing::info!(reminders, "the channels' reminders read back");
    }
    let (sinks, sink_tasks) = start_sinks(&settings, fds.websocket, &alarms, &memory)?;
    let (saved_tx, saved_rx) = watch::channel(false);
    let save_task = tokio::spawn(save_files(history.clone(), memory.clone(), saved_rx));
    let outbox = egress::Outbox {
        sinks: sinks.clone(),
        alarms: alarms.clone(),
        influx_pending: Vec::new(),
        mqtt: mqtt.egress.clone(),
        mqtt_pending: Vec::new(),
        stats: stats.clone(),
        dead_letter: settings.dead_letter.as_deref().map(Arc::from),
        limit: limit.clone(),
        fanout: None,
        fanout_pending: Vec::new(),
        command_signing: settings
            .signature
            .clone()
            .filter(|s| s.commands)
            .map(Arc::new),
    };
    let (rules_tx, rules_rx) = watch::channel(rules.clone());
    let notices_done = watch::Sender::new(false);
    let mut notices_task = None;
    let engine = match (state, settings.cluster.clone()) {
        (_, Some(c)) => {
            let tracer = Arc::new(Tracer::default());
            let rule_stats: Vec<Arc<RuleStats>> =
                (0..c.partitions).map(|_| Arc::default()).collect();
            let running = cluster::start(
                cluster::Setup {
                    mqtt: conn.clone(),
                    tls: tls.clone(),
                    patterns: settings.patterns.clone(),
                    http: c.advertise.clone(),
                    template: cluster::ShardTemplate {
                        outbox,
                        checkpoint: settings.checkpoint,
                        limits: settings.payload,
                        state_limits: settings.state_limits,
                        history: settings.history,
                        offline_after: settings.offline_after,
                        tracer: tracer.clone(),
                        rule_stats: rule_stats.clone(),
                        queue: settings.queue,
                        signature: settings.signature.clone(),
                    },
                    rules: rules_rx,
                    devices,
                    shards: shards.clone(),
                    stats: stats.clone(),
                    limit: limit.clone(),
                    shutdown_timeout: settings.shutdown_timeout,
                    http_token: settings.http_token.clone(),
                    cluster: c,
                },
                stop.clone(),
            )?;
            drop(done_rx);
            Engine {
                threads: Vec::new(),
                ingest: Vec::new(),
                rule_stats,
                tracer,
                cluster: Some(running),
            }
        }
        (Some(state), None) => {
            // The notifications the shards keep in the state file, delivered from there.
            notices_task = Some(tokio::spawn(super::notices::run(
                state.store.clone(),
                sinks.notify.clone(),
                limit.clone(),
                notices_done.subscribe(),
            )));
            let StartedShards {
                tx: shard_tx,
                threads,
                rule_stats,
                tracer,
            } = start_shards(&settings, state, rules, devices, outbox, done_tx, &stats)?;
            // On the embedded broker, ingest reads its local links (messages arrive at QoS 0
            // in process: nothing is acknowledged, and the done channel stays unused).
            let ingest = match ingest_links {
                Some(links) => broker::local_ingest(
                    links,
                    &settings.patterns,
                    &shard_tx,
                    &stats,
                    &limit,
                    &stop,
                ),
                None => vec![tokio::spawn(ingest::run(
                    ingest::Ingest {
                        conn: conn.clone(),
                        tls,
                        patterns: settings.patterns.clone(),
                        shards: shard_tx.clone(),
                        done: done_rx,
                        stats: stats.clone(),
                        limit: limit.clone(),
                    },
                    stop.clone(),
                ))],
            };
            // Ingest holds the shards' queues open; the rest reach them through `shards`.
            shards.attach(&shard_tx);
            Engine {
                threads,
                ingest,
                rule_stats,
                tracer,
                cluster: None,
            }
        }
        (None, None) => return Err("no saved state was read".into()),
    };
    let Engine {
        threads: shard_threads,
        ingest: ingest_tasks,
        rule_stats,
        tracer,
        cluster,
    } = engine;
    let cluster_view = cluster.as_ref().map(|c| c.view.clone());
    let (reload_tx, reload_status, reload_task) =
        serve_reloads(reloader, shards.clone(), rules_tx, stop.clone());
    // Under systemd: readiness and the watchdog (nothing without $NOTIFY_SOCKET).
    let systemd_task = tokio::spawn(super::systemd::run(
        super::systemd::Watched {
            stats: stats.clone(),
            reload: reload_status.clone(),
            shards: shards.clone(),
            ingest: ingest_tasks.iter().map(JoinHandle::abort_handle).collect(),
            cluster: cluster.is_some(),
        },
        stop.clone(),
    ));
    let _watcher = super::os::watch_rules(&settings.rules_dir, reload_tx.clone());
    // Shadow mode: the config's candidate, else the one the API started before a restart.
    let shadows = Arc::new(super::shadows::Shadows::new(
        settings.config_given.then(|| settings.config.clone()),
        settings.rules_dir.clone(),
        settings.state_dir.clone(),
        shards.clone(),
        reload_tx.clone(),
        cluster.is_some(),
    ));
    shadows.resume(settings.shadow_dir.clone()).await;
    let http_task = listener.map(|l| {
        if let Ok(mut a) = l.local_addr() {
            if !a.ip().is_loopback() && settings.http_token.is_none() {
                tracing::warn!(
                    "the HTTP API listens on {a}, beyond this machine, with no token: anyone who can reach it can acknowledge alarms, change attributes and promote new rules (set `http.token`)"
                );
            }
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            tracing::info!("dashboard on http://{a}/ (API under /api, metrics at /metrics)");
        }
        let api = http::Api {
            stats: stats.clone(),
            reload: reload_status,
            reload_tx: reload_tx.clone(),
            shards: shards.clone(),
            rule_stats,
            hub: sinks.hub.clone(),
            alarms: alarms.clone(),
            influx: sinks.influx.as_ref().map(|i| i.stats.clone()),
            notify: sinks.notify.view(),
            token: settings.http_token.clone(),
            allowed_hosts: settings.http_allowed_hosts.clone().into(),
            config: settings
                .config_given
                .then(|| Arc::new(settings.config.clone())),
            started,
            tracer,
            device_list: Default::default(),
            cluster: cluster_view,
            shadow: shadows.clone(),
        };
        let limits = http::ConnLimits {
            max_connections: fds.http,
            header_timeout: settings.http_header_timeout,
        };
        tokio::spawn(http::serve(l, api, stop.clone(), limits))
    });
    let sim_task = opts.demo.then(|| {
        tokio::spawn(sim::run(
            conn.clone(),
            sim::SimOptions::demo(),
            stop.clone(),
        ))
    });
    let progress = tokio::spawn(super::stats::progress(stats.clone(), stop.clone()));
    super::os::wait_for_signal(reload_tx).await;
    super::systemd::stopping();
    systemd_task.abort();
    // Shutdown: stop reading, let the shards finish their queues and save, flush the sinks and
    // egress.
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    tracing::info!("shutting down: draining shards, saving state");
    let _ = stop_tx.send(true);
    let _ = reload_task.await;
    if let Some(t) = sim_task {
        let _ = t.await;
    }
    let joined = tokio::task::spawn_blocking(move || {
        for t in shard_threads {
            let _ = t.join();
        }
    });
    // A cluster member hands its ingest and partitions over and leaves.
    let joined = async move {
        let _ = joined.await;
        if let Some(c) = cluster {
            let _ = c.task.await;
        }
    };
    if tokio::time::timeout_at(deadline, joined).await.is_err() {
        tracing::error!(
            "shards did not finish within the shutdown timeout; their last checkpoint stands"
        );
    }
    // The shards' last notifications are in the state file: handed to the channels, then the
    // outbox task lets go of them (what the channels do not settle in time stays for the next
    // start).
    let _ = notices_done.send(true);
    let remover = match notices_task {
        Some(t) => match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(r)) => Some(r),
            _ => None,
        },
        None => None,
    };
    let influx_stats = sinks.influx.as_ref().map(|i| i.stats.clone());
    // The shards' sink handles are gone; with these, the sinks' inputs close and they send what
    // they hold (the InfluxDB writer spools what it cannot send in time).
    drop(sinks);
    sink_tasks.finish(deadline).await;
    if let Some(r) = remover {
        let _ = tokio::time::timeout_at(deadline, r).await;
    }
    mqtt.close(deadline, ingest_tasks).await;
    if let Some(t) = http_task {
        let _ = tokio::time::timeout_at(deadline, t).await;
    }
    progress.abort();
    // The channels have stopped: their reminders and the history are saved once more.
    let _ = saved_tx.send(true);
    let _ = save_task.await;
    tracing::info!(
        counters = %stats.to_json(),
        influx = %influx_stats.map(|s| s.to_json()).unwrap_or_default(),
        "stopped"
    );
    Ok(())
}

/// The egress connection, or the egress link to the embedded broker (publishes, through a
/// bounded queue). Ingest's connection or links are its own.
struct Mqtt {
    egress: publisher::Egress,
    egress_task: JoinHandle<()>,
}

impl Mqtt {
    /// Starts egress: on the embedded broker's link when there is one, else a connection.
    fn start(
        conn: &MqttConn,
        tls: &Option<tokio_rustls::TlsConnector>,
        link: Option<broker::EgressLink>,
        done: &shard::Done,
        stats: &Arc<Stats>,
        limit: &Arc<RateLimit>,
        shutdown_timeout: std::time::Duration,
    ) -> Mqtt {
        // Over a broker connection, messages are acknowledged once their output has left;
        // on the embedded broker nothing is acknowledged.
        let (egress, queue) = publisher::Egress::new(egress::EGRESS_QUEUE, link.is_none());
        let egress_task = match link {
            Some(link) => broker::local_egress(link, queue, limit.clone()),
            None => tokio::spawn(publisher::run(
                conn.clone(),
                tls.clone(),
                queue,
                done.clone(),
                stats.clone(),
                limit.clone(),
                shutdown_timeout,
            )),
        };
        Mqtt {
            egress,
            egress_task,
        }
    }

    /// Queued publishes leave before the egress connection closes; ingest sends the last
    /// acknowledgements (reported by the egress connection as their output left) and
    /// disconnects once the shards and the egress connection are done.
    async fn close(self, deadline: tokio::time::Instant, ingest_tasks: Vec<JoinHandle<()>>) {
        // The shards' handles are gone; with this last one the queue closes, and the egress
        // connection writes what is queued, waits for its QoS 1 acknowledgements, reports the
        // inputs done, disconnects.
        drop(self.egress);
        for task in ingest_tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
        if tokio::time::timeout_at(deadline, self.egress_task)
            .await
            .is_err()
        {
            tracing::warn!("the egress connection did not finish within the shutdown timeout");
        }
    }
}

/// The sinks' tasks, waited for at shutdown.
struct SinkTasks {
    influx: Option<JoinHandle<()>>,
    notify: Vec<JoinHandle<()>>,
}

impl SinkTasks {
    async fn finish(self, deadline: tokio::time::Instant) {
        if let Some(t) = self.influx {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                tracing::error!("the InfluxDB writer did not finish within the shutdown timeout");
            }
        }
        for t in self.notify {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                tracing::warn!("a notification channel did not finish within the shutdown timeout");
                break;
            }
        }
    }
}

/// The InfluxDB writer, the WebSocket hub (at most `max_clients`) and the notification channels.
fn start_sinks(
    settings: &Settings,
    max_clients: usize,
    alarms: &Arc<AlarmRegistry>,
    memory: &Arc<crate::sinks::notify::memory::Memory>,
) -> Result<(Sinks, SinkTasks), String> {
    let mut hub_settings = settings.websocket.clone();
    hub_settings.max_clients = max_clients;
    let hub = Arc::new(crate::sinks::hub::Hub::new(hub_settings, alarms.clone()));
    let (influx, influx_task) = match &settings.influx {
        Some(s) => {
            tracing::info!(url = %s.write_url, batch_size = s.batch_size, "writing points to InfluxDB");
            let (h, t) = crate::sinks::influx::start(s.clone(), Arc::default())?;
            (Some(h), Some(t))
        }
        None => (None, None),
    };
    let (notify, notify_tasks) =
        crate::sinks::notify::Notifier::start(&settings.channels, alarms.clone(), memory.clone())?;
    Ok((
        Sinks {
            influx,
            hub,
            notify,
        },
        SinkTasks {
            influx: influx_task,
            notify: notify_tasks,
        },
    ))
}

/// The running engine's parts: one process's shards and ingest, or a cluster member.
struct Engine {
    threads: ShardThreads,
    ingest: Vec<JoinHandle<()>>,
    rule_stats: Vec<Arc<RuleStats>>,
    tracer: Arc<Tracer>,
    cluster: Option<cluster::Running>,
}

/// The shards' threads, joined at shutdown.
type ShardThreads = Vec<std::thread::JoinHandle<()>>;

/// The running shards: their queues, threads, chain counters, and the live trace they sample
/// for.
struct StartedShards {
    tx: Vec<mpsc::Sender<ShardMsg>>,
    threads: ShardThreads,
    rule_stats: Vec<Arc<RuleStats>>,
    tracer: Arc<Tracer>,
}

/// One OS thread per shard, each with its saved state, its queue and a copy of the outbox;
/// gives their queues, their threads, their chain counters and the trace they sample for.
fn start_shards(
    settings: &Settings,
    state: SavedState,
    rules: Arc<RuleSet>,
    devices: HashMap<Arc<str>, Device>,
    outbox: egress::Outbox,
    done: shard::Done,
    stats: &Arc<Stats>,
) -> Result<StartedShards, String> {
    let rule_stats: Vec<Arc<RuleStats>> =
        (0..state.snapshots.len()).map(|_| Arc::default()).collect();
    let tracer = Arc::new(Tracer::default());
    let state_shards = state.snapshots.len();
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for (index, saved) in state.snapshots.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(settings.queue);
        senders.push(tx);
        let ctx = shard::ShardCtx {
            index,
            store: state.store.clone(),
            stats: stats.clone(),
            outbox: outbox.clone(),
            done: Some(done.clone()),
            checkpoint: settings.checkpoint,
            limits: settings.payload,
            state_limits: settings.state_limits.per_shard(settings.shards),
            rule_stats: rule_stats[index].clone(),
            history: (settings.history, state_shards),
            offline_after: settings.offline_after,
            tracer: tracer.clone(),
            signature: settings.signature.clone(),
        };
        // A shard gets the registry's devices it owns: no other shard ever sees their messages
        // (and the API lists each device once).
        let count = state_shards;
        let devices: HashMap<Arc<str>, Device> = devices
            .iter()
            .filter(|(id, _)| shard::shard_of(id, count) == index)
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect();
        let rules = rules.clone();
        let t = std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || shard::run(rules, devices, saved, rx, ctx))
            .map_err(|e| format!("cannot start shard {index}: {e}"))?;
        threads.push(t);
    }
    Ok(StartedShards {
        tx: senders,
        threads,
        rule_stats,
        tracer,
    })
}

/// Reloads: the watcher, SIGHUP and the API send requests; one task serves them in turn and
/// hands each good rule set to every shard (in a cluster: to every partition this instance
/// runs, and to `rules` for those it takes later).
fn serve_reloads(
    reloader: reload::Reloader,
    shards: Shards,
    rules_in_force: watch::Sender<Arc<RuleSet>>,
    mut stop: watch::Receiver<bool>,
) -> (
    mpsc::Sender<reload::ReloadReq>,
    Arc<std::sync::Mutex<reload::ReloadStatus>>,
    JoinHandle<()>,
) {
    let (reload_tx, mut reload_rx) = mpsc::channel::<reload::ReloadReq>(16);
    let status = reloader.status.clone();
    let status_in = status.clone();
    let reloader = Arc::new(std::sync::Mutex::new(reloader));
    let task = tokio::spawn(async move {
        loop {
            let req = tokio::select! {
                _ = stop.changed() => break,
                r = reload_rx.recv() => match r { Some(r) => r, None => break },
            };
            let r = reloader.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                r.lock().unwrap_or_else(|e| e.into_inner()).load()
            })
            .await;
            let Ok((rules, report)) = loaded else {
                tracing::error!("a reload failed unexpectedly; the rules in force stay");
                continue;
            };
            for e in &report.errors {
                tracing::error!("reload: {e}");
            }
            if let Some(rules) = rules {
                // First for the partitions taken from now on, then for those running (one
                // taken in between gets the rules twice: a reload to the same rules keeps
                // every state).
                rules_in_force.send_replace(rules.clone());
                for tx in shards.senders() {
                    let _ = tx
                        .send(ShardMsg::Reload(rules.clone(), report.generation))
                        .await;
                }
                // In force from here: every message ingested later is behind the rules in its
                // shard's queue.
                status_in
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .generation = report.generation;
                tracing::info!(
                    generation = report.generation,
                    chains = rules.chains.len(),
                    "rules reloaded"
                );
            }
            if let Some(reply) = req.reply {
                let _ = reply.send(report);
            }
        }
    });
    (reload_tx, status, task)
}
