//! What the engine asks of the operating system: the open-files limit and how it is shared
//! between HTTP and WebSocket clients, and the signals and file events that stop it or reload
//! its rules.

use std::time::Duration;

use tokio::sync::mpsc;

use super::reload::ReloadReq;

/// Raises the soft open-files limit to the hard one (a process starts with 1,024 on most
/// systems, too few for thousands of WebSocket clients) and returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                l.rlim_cur = l.rlim_max;
            }
        }
        l.rlim_cur
    }
}

/// File descriptors kept back from HTTP and WebSocket clients: broker connections, the state
/// file, the rules watcher, sink connections.
const FD_RESERVE: u64 = 256;

/// How the open-files limit is shared: HTTP connections get at most half of what the reserve
/// leaves, WebSocket clients the rest. Either is lowered from its setting only when the limit
/// cannot hold it (logged), so a flood of connections meets a clear refusal (503, or close
/// 1013) instead of "Too many open files" on the engine's own broker connection.
pub(super) struct FdBudget {
    pub(super) http: usize,
    pub(super) websocket: usize,
}

impl FdBudget {
    pub(super) fn new(http: usize, websocket: usize) -> FdBudget {
        let limit = raise_fd_limit();
        let usable = limit.saturating_sub(FD_RESERVE).max(32);
        // Never above the setting; never below 16 for the limit's sake.
        let http_cap = (http as u64).min((usable / 2).max(16));
        let ws_cap = (websocket as u64).min(usable.saturating_sub(http_cap).max(16));
        let b = FdBudget {
            http: http_cap as usize,
            websocket: ws_cap as usize,
        };
        if b.http < http || b.websocket < websocket {
            tracing::info!(
                open_files_limit = limit,
                http_max_connections = b.http,
                websocket_max_clients = b.websocket,
                "connection limits lowered to fit the open-files limit (raise `ulimit -n` for more)"
            );
        }
        b
    }
}

/// Waits for SIGINT or SIGTERM; SIGHUP asks for a reload meanwhile.
pub(super) async fn wait_for_signal(reload: mpsc::Sender<ReloadReq>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the rules");
                    let _ = reload.try_send(ReloadReq { reply: None });
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Watches the rules directory; changes (debounced 300 ms) ask for a reload.
pub(super) fn watch_rules(
    dir: &std::path::Path,
    tx: mpsc::Sender<ReloadReq>,
) -> Option<
    notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
> {
    use notify::RecursiveMode;
    let mut d = notify_debouncer_full::new_debouncer(
        Duration::from_millis(300),
        None,
        move |res: notify_debouncer_full::DebounceEventResult| {
            if res.is_ok_and(|evs| evs.iter().any(|e| !e.kind.is_access())) {
                // A full queue already holds a reload request: that one will see this change.
                let _ = tx.try_send(ReloadReq { reply: None });
            }
        },
    )
    .map_err(|e| {
        tracing::warn!(
            "cannot watch the rules directory ({e}); reload with SIGHUP or POST /api/reload"
        )
    })
    .ok()?;
    if let Err(e) = d.watch(dir, RecursiveMode::Recursive) {
        tracing::warn!(
            "cannot watch {} ({e}); reload with SIGHUP or POST /api/reload",
            dir.display()
        );
        return None;
    }
    Some(d)
}
