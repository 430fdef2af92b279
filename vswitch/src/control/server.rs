//! The control plane's event loop: a tokio runtime on the main lcore (the workers' cores are
//! never used), serving the API on a unix socket (mode 0600) and, when configured, on TCP with a
//! bearer token; signals: SIGHUP reloads the state file through the same path as an API change,
//! SIGUSR1 prints the counters, SIGINT/SIGTERM stop. Nothing here can stop the workers: they
//! only read the tables the store publishes.
use super::api::{self, Ctl};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// Binds the unix socket: its directory is created (0755), a stale socket from a crashed run is
/// replaced, but a socket another live `vswitchd` answers on is an error.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, String> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{} is in use by another running vswitchd",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    // Created 0600 from the start: a umask that leaves no window where others could connect.
    let old = vswitch_ffi::set_umask(0o177);
    let l = tokio::net::UnixListener::bind(path);
    vswitch_ffi::set_umask(old);
    let l = l.map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    Ok(l)
}

/// Serves until SIGINT/SIGTERM. `state_file` is what SIGHUP re-reads.
pub fn run(ctl: Arc<Ctl>, state_file: Option<PathBuf>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("vswitch-control")
        .max_blocking_threads(4)
        .build()
        .map_err(|e| format!("cannot start the control plane runtime: {e}"))?;
    let res = rt.block_on(serve(ctl.clone(), state_file));
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    res
}

async fn serve(ctl: Arc<Ctl>, state_file: Option<PathBuf>) -> Result<(), String> {
    let host = ctl.store.host().clone();
    let socket = host.control_socket();
    let unix = bind_unix(&socket)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = api::router(ctl.clone());
    let mut tasks = Vec::new();
    {
        let mut rx = stop_rx.clone();
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let r = axum::serve(unix, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "unix API listener failed");
            }
        }));
    }
    println!("vswitchd: API on unix socket {}", socket.display());
    if let Some(addr) = host.control.listen {
        let token_file = host.control.token_file.clone().unwrap_or_default();
        let token = std::fs::read_to_string(&token_file)
            .map_err(|e| {
                format!(
                    "cannot read control.token_file {}: {e}",
                    token_file.display()
                )
            })?
            .trim()
            .to_string();
        if token.len() < 16 {
            return Err(format!(
                "control.token_file {}: the token must be at least 16 characters",
                token_file.display()
            ));
        }
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let app = app.layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            api::require_token,
        ));
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let r = axum::serve(tcp, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "TCP API listener failed");
            }
        }));
        println!("vswitchd: API on tcp {addr} (bearer token)");
    }
    let sig = |k: SignalKind| signal(k).map_err(|e| format!("cannot install signal handlers: {e}"));
    let mut hup = sig(SignalKind::hangup())?;
    let mut usr1 = sig(SignalKind::user_defined1())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut term = sig(SignalKind::terminate())?;
    println!(
        "vswitchd: running ({} ports, {} workers); SIGUSR1 prints counters, SIGHUP reloads the state file, SIGTERM stops",
        ctl.daemon.port_count(),
        ctl.daemon.worker_count()
    );
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&ctl, state_file.as_deref()).await,
            _ = usr1.recv() => {
                let d = ctl.daemon.clone();
                let _ = tokio::task::spawn_blocking(move || d.report()).await;
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), t).await;
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// SIGHUP: the state file again, applied like `PUT /v1/state` (all or nothing).
async fn reload(ctl: &Arc<Ctl>, path: Option<&Path>) {
    let Some(path) = path.map(Path::to_path_buf) else {
        println!("vswitchd: SIGHUP ignored: no state file (--state or control.state_file)");
        return;
    };
    let c = ctl.clone();
    let r = tokio::task::spawn_blocking(move || {
        let state = vswitch_config::load_state(&path).map_err(|e| e.to_string())?;
        c.store.replace(state).map_err(|e| {
            e.problems
                .iter()
                .map(|p| format!("  {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    })
    .await;
    match r {
        Ok(Ok(a)) => println!(
            "vswitchd: state reloaded, generation {} live on every core in {} us",
            a.generation,
            a.latency.as_micros()
        ),
        Ok(Err(msg)) => {
            ctl.store.rejected();
            println!("vswitchd: reload rejected, the running state is unchanged:\n{msg}")
        }
        Err(e) => println!("vswitchd: reload failed: {e}; the running state is unchanged"),
    }
}
