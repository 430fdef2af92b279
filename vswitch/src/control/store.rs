//! The desired state the control plane owns: every change is checked against the whole state
//! and this host, written to the state file (write, fsync, rename, fsync the directory) and only
//! then compiled and published as the next generation, all or nothing. Changes are applied one at
//! a time; readers see the last accepted state.
use super::resources::{ApiError, Change};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vswitch_config::{DesiredState, HostConfig, Problem};

/// Where accepted states go live: the running daemon (compile + one atomic swap).
pub trait Dataplane: Send + Sync {
    /// Makes `state` live as `generation`; returns how long until every core ran on it.
    fn apply(&self, state: &DesiredState, generation: u64) -> Duration;
}

impl Dataplane for super::Daemon {
    fn apply(&self, state: &DesiredState, generation: u64) -> Duration {
        self.apply_state(state, generation)
    }
}

/// What an accepted change reports back.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub response: serde_json::Value,
    /// The generation now live (unchanged when the change changed nothing).
    pub generation: u64,
    /// Accepted (valid and written to the state file) -> live on every core: compile + publish
    /// (zero when nothing changed).
    pub latency: Duration,
    /// The whole request: validation, the state file, compile, publish.
    pub request: Duration,
}

struct Inner {
    state: DesiredState,
    generation: u64,
}

/// The control plane's store.
pub struct Store {
    host: HostConfig,
    file: Option<PathBuf>,
    inner: Mutex<Inner>,
    plane: std::sync::Arc<dyn Dataplane>,
}

impl Store {
    /// The store of a daemon started with `state` as generation 1, persisting to `file`.
    pub fn new(
        host: HostConfig,
        state: DesiredState,
        file: Option<PathBuf>,
        plane: std::sync::Arc<dyn Dataplane>,
    ) -> Self {
        Store {
            host,
            file,
            inner: Mutex::new(Inner {
                state,
                generation: 1,
            }),
            plane,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-made state: the state is replaced
        // whole, so the last value is still the last accepted one.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state now live and its generation.
    pub fn snapshot(&self) -> (DesiredState, u64) {
        let g = self.lock();
        (g.state.clone(), g.generation)
    }

    /// Runs `f` on the state now live; f must not block.
    pub fn read<R>(&self, f: impl FnOnce(&DesiredState, u64) -> R) -> R {
        let g = self.lock();
        f(&g.state, g.generation)
    }

    pub fn host(&self) -> &HostConfig {
        &self.host
    }

    /// The state file accepted changes are written to.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Makes a change: `make` builds it from the state now live; the result is validated as a
    /// whole (the document's own rules and this host's), persisted, compiled and published. On
    /// any problem nothing changes and every problem comes back with its path.
    pub fn submit(
        &self,
        make: impl FnOnce(&DesiredState) -> Result<Change, ApiError>,
    ) -> Result<Accepted, ApiError> {
        let started = Instant::now();
        let mut g = self.lock();
        let change = make(&g.state)?;
        if change.state == g.state {
            return Ok(Accepted {
                response: change.response,
                generation: g.generation,
                latency: Duration::ZERO,
                request: started.elapsed(),
            });
        }
        let mut problems = change.state.validate();
        if problems.is_empty() {
            problems = vswitch_config::validate_for_host(&self.host, &change.state);
        }
        if !problems.is_empty() {
            return Err(ApiError::bad_request(change.name_problems(problems)));
        }
        if let Some(path) = &self.file {
            persist(path, &change.state).map_err(|e| ApiError {
                status: 500,
                kind: "StateNotSaved",
                problems: vec![Problem::new(
                    "",
                    format!(
                        "cannot write the state file {}: {e}; nothing changed",
                        path.display()
                    ),
                )],
            })?;
        }
        let generation = g.generation + 1;
        let accepted = Instant::now();
        self.plane.apply(&change.state, generation);
        let latency = accepted.elapsed();
        g.state = change.state;
        g.generation = generation;
        let request = started.elapsed();
        ::metrics::histogram!("vswitch_apply_latency_seconds").record(latency.as_secs_f64());
        ::metrics::histogram!("vswitch_request_latency_seconds").record(request.as_secs_f64());
        ::metrics::counter!("vswitch_apply_total").increment(1);
        ::metrics::gauge!("vswitch_table_generation").set(generation as f64);
        tracing::info!(
            generation,
            live_us = latency.as_micros() as u64,
            request_us = request.as_micros() as u64,
            "state applied"
        );
        Ok(Accepted {
            response: change.response,
            generation,
            latency,
            request,
        })
    }

    /// Replaces the whole state (`PUT /v1/state`, `SIGHUP`): idempotent, the same document twice
    /// makes one generation.
    pub fn replace(&self, state: DesiredState) -> Result<Accepted, ApiError> {
        self.submit(|_| {
            Ok(Change {
                state,
                subject: None,
                response: serde_json::Value::Null,
            })
        })
    }

    /// Counts a rejected change (the API calls it for every 4xx/5xx of a change).
    pub fn rejected(&self) {
        ::metrics::counter!("vswitch_apply_rejected_total").increment(1);
    }
}

/// Writes `state` to `path` so that a crash at any moment leaves either the old file or the new
/// one: a temporary file in the same directory, fsync, rename over the old one, fsync the
/// directory. JSON when the name ends in `.json`, else YAML.
pub fn persist(path: &Path, state: &DesiredState) -> std::io::Result<()> {
    use std::io::Write;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let text = if json {
        serde_json::to_string_pretty(state).map_err(std::io::Error::other)?
    } else {
        serde_yaml::to_string(state).map_err(std::io::Error::other)?
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Records what went live.
    #[derive(Default)]
    struct Recorder {
        applied: AtomicU64,
        last: AtomicU64,
    }
    impl Dataplane for Recorder {
        fn apply(&self, _: &DesiredState, generation: u64) -> Duration {
            self.applied.fetch_add(1, Ordering::SeqCst);
            self.last.store(generation, Ordering::SeqCst);
            Duration::from_micros(1)
        }
    }

    const HOST: &str = r#"
role = "dvr"
host_id = "compute1"
cores = [1]
[[ports]]
name = "vm1"
devargs = "net_null0"
kind = "instance"
iface_id = "p1"
"#;

    fn store(file: Option<PathBuf>) -> (Store, Arc<Recorder>) {
        let host = vswitch_config::parse_host_str(HOST).unwrap();
        let rec = Arc::new(Recorder::default());
        (
            Store::new(host, DesiredState::default(), file, rec.clone()),
            rec,
        )
    }

    fn net_body(id: &str, vni: u32) -> serde_json::Value {
        serde_json::json!({"network": {"id": id, "provider:network_type": "vxlan", "provider:segmentation_id": vni}})
    }

    #[test]
    fn accepted_change_is_persisted_then_published_as_the_next_generation() {
        let dir = std::env::temp_dir().join(format!("vsw-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        let (st, rec) = store(Some(file.clone()));
        let a = st
            .submit(|s| {
                super::super::resources::create(
                    s,
                    super::super::resources::Kind::Network,
                    net_body("n1", 5),
                )
            })
            .unwrap();
        assert_eq!(a.generation, 2);
        assert_eq!(rec.last.load(Ordering::SeqCst), 2);
        let back = vswitch_config::load_state(&file).unwrap();
        assert_eq!(back, st.snapshot().0);
        assert_eq!(back.networks[0].id, "n1");
        // The same whole state again: no new generation, nothing published.
        let a = st.replace(back.clone()).unwrap();
        assert_eq!(a.generation, 2);
        assert_eq!(rec.applied.load(Ordering::SeqCst), 1);
        // YAML too.
        let yfile = dir.join("state.yaml");
        persist(&yfile, &back).unwrap();
        assert_eq!(vswitch_config::load_state(&yfile).unwrap(), back);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejected_change_changes_nothing_and_names_every_problem() {
        let (st, rec) = store(None);
        st.submit(|s| {
            super::super::resources::create(
                s,
                super::super::resources::Kind::Network,
                net_body("n1", 5),
            )
        })
        .unwrap();
        let before = st.snapshot();
        // The same VNI twice, and a port on a network that does not exist.
        let e = st
            .submit(|s| {
                super::super::resources::create(
                    s,
                    super::super::resources::Kind::Network,
                    net_body("n2", 5),
                )
            })
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.problems.iter().any(|p| p.path.starts_with("network")),
            "{e:?}"
        );
        let e = st
            .submit(|s| {
                super::super::resources::create(
                    s,
                    super::super::resources::Kind::Port,
                    serde_json::json!({"port": {"network_id": "nope", "mac_address": "fa:16:3e:00:00:01"}}),
                )
            })
            .unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.path == "port.network_id"),
            "{e:?}"
        );
        assert_eq!(st.snapshot(), before);
        assert_eq!(rec.applied.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unwritable_state_file_refuses_the_change() {
        let (st, rec) = store(Some(PathBuf::from("/proc/vsw-no-such-dir/state.json")));
        let e = st
            .submit(|s| {
                super::super::resources::create(
                    s,
                    super::super::resources::Kind::Network,
                    net_body("n1", 5),
                )
            })
            .unwrap_err();
        assert_eq!(e.status, 500);
        assert_eq!(rec.applied.load(Ordering::SeqCst), 0);
        assert_eq!(st.snapshot().1, 1);
        assert!(st.snapshot().0.networks.is_empty());
    }
}
