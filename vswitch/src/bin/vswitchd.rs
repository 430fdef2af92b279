//! `vswitchd`: the appliance daemon.
//!
//! `vswitchd --config host.toml --state state.yaml` validates both files as a whole (every
//! problem listed, non-zero exit, nothing started), initialises the EAL, opens every port,
//! compiles the tables, launches one poll loop per worker lcore and then waits for signals on
//! the main lcore: SIGUSR1 prints the counters, SIGHUP re-reads the state file (applied only
//! when valid, as one atomic table swap; the running state is untouched otherwise),
//! SIGINT/SIGTERM stop the workers, return every mbuf, close the ports and clean up the EAL.
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    let mut daemon = match Daemon::start(host, state, stop.clone()) {
        Ok(d) => d,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(1);
        }
    };
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            stop.store(true, Ordering::Relaxed);
            daemon.shutdown();
            return ExitCode::from(1);
        }
    };
    println!(
        "vswitchd: running ({} ports, {} workers); SIGUSR1 prints counters, SIGTERM stops",
        daemon.port_count(),
        daemon.worker_count()
    );
    for sig in signals.forever() {
        match sig {
            signal_hook::consts::SIGUSR1 => daemon.report(),
            signal_hook::consts::SIGHUP => match args.state.as_deref() {
                Some(path) => match daemon.reload(path) {
                    Ok((generation, took)) => println!(
                        "vswitchd: state reloaded, generation {generation} live on every core in {} us",
                        took.as_micros()
                    ),
                    Err(msg) => println!(
                        "vswitchd: reload rejected, the running state is unchanged:\n{msg}"
                    ),
                },
                None => println!("vswitchd: SIGHUP ignored: started without --state"),
            },
            _ => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let ok = daemon.shutdown();
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
