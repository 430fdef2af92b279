//! `vswitchd`: the appliance daemon.
//!
//! `vswitchd --config host.toml --state state.yaml` validates both files as a whole (every
//! problem listed, non-zero exit, nothing started), initialises the EAL, opens every port,
//! compiles the tables, launches one poll loop per worker lcore and then waits for signals on
//! the main lcore and runs the control plane there (REST API on `control.socket`, see
//! `control::server`): SIGUSR1 prints the counters, SIGHUP re-reads the state file (applied only
//! when valid, as one atomic table swap; the running state is untouched otherwise),
//! SIGINT/SIGTERM stop the workers, return every mbuf, close the ports and clean up the EAL.
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vswitch::control::api::Ctl;
use vswitch::control::store::Store;
use vswitch::control::Daemon;

#[derive(Parser, Debug)]
#[command(
    name = "vswitchd",
    version,
    about = "DPDK virtual switch and distributed router (OpenStack OVS+DVR fast path)"
)]
struct Args {
    /// Host configuration (TOML): role, cores, EAL arguments, ports, bridge mappings.
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Desired state (YAML or JSON): Neutron networks, subnets, ports, routers, ...
    #[arg(long, short = 's')]
    state: Option<PathBuf>,
    /// Only validate the two files and exit (0 when both are valid).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (host, state) = match vswitch::control::load(&args.config, args.state.as_deref()) {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!(
            "configuration ok: {} ports, {} networks",
            host.ports.len(),
            state.networks.len()
        );
        return ExitCode::SUCCESS;
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Accepted changes are written to the state file given, else to `control.state_file`;
    // a restart (even after kill -9) comes back with the last accepted state.
    let state_file = args.state.clone().or(host.control.state_file.clone());
    let state = if args.state.is_none() {
        match state_file.as_deref().filter(|p| p.exists()) {
            Some(p) => match vswitch::control::load(&args.config, Some(p)) {
                Ok((_, st)) => st,
                Err(msg) => {
                    eprintln!("{msg}");
                    return ExitCode::from(2);
                }
            },
            None => state,
        }
    } else {
        state
    };
    let metrics = match vswitch::control::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("vswitchd: metrics disabled: {e}");
            None
        }
    };
    let daemon = match Daemon::start(host.clone(), state.clone(), stop.clone()) {
        Ok(d) => Arc::new(d),
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(1);
        }
    };
    let ctl = Arc::new(Ctl {
        store: Store::new(host, state, state_file.clone(), daemon.clone()),
        daemon: daemon.clone(),
        metrics,
    });
    let served = vswitch::control::server::run(ctl, state_file);
    stop.store(true, Ordering::Relaxed);
    if let Err(msg) = &served {
        eprintln!("vswitchd: {msg}; stopping");
    }
    // The control plane is gone: the daemon is ours alone again, once the last request that
    // still holds it (a capture waiting for packets, say) has let go. Past 5 s, leave without
    // the clean-up rather than hang: the workers have stopped already.
    let mut daemon = daemon;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let daemon = loop {
        match Arc::try_unwrap(daemon) {
            Ok(d) => break d,
            Err(d) if std::time::Instant::now() < deadline => {
                daemon = d;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(_) => {
                eprintln!("vswitchd: a control request still runs after 5 s; exiting without the clean-up");
                return ExitCode::from(1);
            }
        }
    };
    let ok = daemon.shutdown() && served.is_ok();
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
