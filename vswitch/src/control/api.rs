//! The REST API (axum): Neutron's resources under `/v2.0`, the whole desired state at
//! `/v1/state`, status, counters, trace, conntrack and capture under `/v1`, Prometheus text at
//! `/metrics`. Bodies are JSON with Neutron's names; every refusal is Neutron's error body with
//! each problem and its JSON path, and nothing changes. Every accepted change answers with the
//! generation that is live (`X-Vswitch-Generation`) and how long it took to be live on every
//! core (`X-Vswitch-Apply-Us`).
use super::resources::{self, ApiError, Kind};
use super::store::{Accepted, Store};
use super::Daemon;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde_json::Value;
use std::sync::Arc;
use vswitch_config::Problem;

/// What every handler reaches.
pub struct Ctl {
    pub store: Store,
    pub daemon: Arc<Daemon>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

type Shared = State<Arc<Ctl>>;

/// The API's routes.
pub fn router(ctl: Arc<Ctl>) -> Router {
    let r = Router::new()
        .route("/v2.0/{collection}", get(list).post(create))
        .route(
            "/v2.0/{collection}/{id}",
            get(show).put(update).delete(delete),
        )
        .route(
            "/v2.0/routers/{id}/add_router_interface",
            put(add_interface),
        )
        .route(
            "/v2.0/routers/{id}/remove_router_interface",
            put(remove_interface),
        )
        .route("/v1/state", get(get_state).put(put_state))
        .route("/v1/status", get(status))
        .route("/v1/stats", get(stats))
        .route("/v1/conntrack", get(conntrack_list).delete(conntrack_flush))
        .route("/v1/capture", get(capture))
        .route("/v1/trace", axum::routing::post(trace))
        .route("/metrics", get(metrics));
    // Fault injection for the tests of debug builds: a panic inside a change (holding the
    // store's lock) or in a handler itself.
    #[cfg(debug_assertions)]
    let r = r.route("/v1/debug/panic", axum::routing::post(debug_panic));
    r.fallback(not_found).with_state(ctl)
}

#[cfg(debug_assertions)]
#[derive(serde::Deserialize)]
struct PanicQuery {
    #[serde(default)]
    r#in: Option<String>,
}

#[cfg(debug_assertions)]
async fn debug_panic(State(ctl): Shared, Query(q): Query<PanicQuery>) -> Response {
    if q.r#in.as_deref() == Some("handler") {
        panic!("injected panic in a request handler");
    }
    submit(ctl, StatusCode::OK, |_| {
        panic!("injected panic inside a change, holding the store's lock")
    })
    .await
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(e.body())).into_response()
}

async fn not_found() -> Response {
    error(ApiError {
        status: 404,
        kind: "NotFound",
        problems: vec![Problem::new("", "no such resource; see /v2.0/<networks|subnets|ports|routers|floatingips|security-groups|security-group-rules>, /v1/state, /v1/status, /v1/stats, /metrics")],
    })
}

fn kind(collection: &str) -> Result<Kind, ApiError> {
    Kind::from_collection(collection).ok_or_else(|| ApiError {
        status: 404,
        kind: "NotFound",
        problems: vec![Problem::new(
            "",
            format!(
                "unknown collection {collection:?}; known: {}",
                resources::KINDS
                    .iter()
                    .map(|k| k.collection())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )],
    })
}

/// A JSON body, or Neutron's error naming where it stopped parsing.
fn json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(vec![Problem::new(
            "",
            format!("the body is not valid JSON: {e}"),
        )])
    })
}

/// The generation now live and how long the change took, as response headers.
fn generation_headers(a: &Accepted) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-vswitch-generation", HeaderValue::from(a.generation));
    headers.insert(
        "x-vswitch-apply-us",
        HeaderValue::from(a.latency.as_micros() as u64),
    );
    headers.insert(
        "x-vswitch-request-us",
        HeaderValue::from(a.request.as_micros() as u64),
    );
    headers
}

fn accepted(status: StatusCode, a: Accepted) -> Response {
    let headers = generation_headers(&a);
    if a.response.is_null() {
        (StatusCode::NO_CONTENT, headers).into_response()
    } else {
        (status, headers, axum::Json(a.response)).into_response()
    }
}

/// Runs `f` off the async threads (it compiles tables, waits for the workers, ...); a panic
/// in it answers 500.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        internal(
            500,
            "InternalError",
            format!("the request failed: {e}; nothing changed"),
        )
    })
}

/// A change through the store: accepted, or refused (and counted).
async fn change(
    ctl: &Arc<Ctl>,
    f: impl FnOnce(&Store) -> Result<Accepted, ApiError> + Send + 'static,
) -> Result<Accepted, Response> {
    let c = ctl.clone();
    blocking(move || f(&c.store)).await?.map_err(|e| {
        ctl.store.rejected();
        error(e)
    })
}

/// Makes a change and answers it.
async fn submit(
    ctl: Arc<Ctl>,
    status: StatusCode,
    make: impl FnOnce(&vswitch_config::DesiredState) -> Result<resources::Change, ApiError>
        + Send
        + 'static,
) -> Response {
    match change(&ctl, move |st| st.submit(make)).await {
        Ok(a) => accepted(status, a),
        Err(r) => r,
    }
}

async fn list(State(ctl): Shared, Path(collection): Path<String>) -> Response {
    let k = match kind(&collection) {
        Ok(k) => k,
        Err(e) => return error(e),
    };
    axum::Json(ctl.store.read(|s, _| resources::list(s, k))).into_response()
}

async fn show(State(ctl): Shared, Path((collection, id)): Path<(String, String)>) -> Response {
    let k = match kind(&collection) {
        Ok(k) => k,
        Err(e) => return error(e),
    };
    match ctl.store.read(|s, _| resources::show(s, k, &id)) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(e),
    }
}

async fn create(State(ctl): Shared, Path(collection): Path<String>, body: Bytes) -> Response {
    let k = match kind(&collection) {
        Ok(k) => k,
        Err(e) => return error(e),
    };
    let v = match json(&body) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    submit(ctl, StatusCode::CREATED, move |s| {
        resources::create(s, k, v)
    })
    .await
}

async fn update(
    State(ctl): Shared,
    Path((collection, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let k = match kind(&collection) {
        Ok(k) => k,
        Err(e) => return error(e),
    };
    let v = match json(&body) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    submit(ctl, StatusCode::OK, move |s| {
        resources::update(s, k, &id, v)
    })
    .await
}

async fn delete(State(ctl): Shared, Path((collection, id)): Path<(String, String)>) -> Response {
    let k = match kind(&collection) {
        Ok(k) => k,
        Err(e) => return error(e),
    };
    submit(ctl, StatusCode::NO_CONTENT, move |s| {
        resources::delete(s, k, &id)
    })
    .await
}

async fn add_interface(State(ctl): Shared, Path(id): Path<String>, body: Bytes) -> Response {
    let v = match json(&body) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    submit(ctl, StatusCode::OK, move |s| {
        resources::add_router_interface(s, &id, v)
    })
    .await
}

async fn remove_interface(State(ctl): Shared, Path(id): Path<String>, body: Bytes) -> Response {
    let v = match json(&body) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    submit(ctl, StatusCode::OK, move |s| {
        resources::remove_router_interface(s, &id, v)
    })
    .await
}

async fn get_state(State(ctl): Shared) -> Response {
    let (state, generation) = ctl.store.snapshot();
    let mut headers = HeaderMap::new();
    headers.insert("x-vswitch-generation", HeaderValue::from(generation));
    (headers, axum::Json(state)).into_response()
}

/// `PUT /v1/state`: the whole desired state (JSON), replaced at once; the same document twice
/// is one change.
async fn put_state(State(ctl): Shared, body: Bytes) -> Response {
    let parsed = std::str::from_utf8(&body)
        .map_err(|e| vec![Problem::new("", format!("the body is not UTF-8: {e}"))])
        .and_then(|t| {
            vswitch_config::parse_state_str(t, true).map_err(|e| match e {
                vswitch_config::ConfigError::Invalid { problems, .. } => problems,
                vswitch_config::ConfigError::Parse { path, message, .. } => {
                    vec![Problem::new(path, message)]
                }
                other => vec![Problem::new("", other.to_string())],
            })
        });
    let state = match parsed {
        Ok(s) => s,
        Err(problems) => {
            ctl.store.rejected();
            return error(ApiError::bad_request(problems));
        }
    };
    match change(&ctl, move |st| st.replace(state)).await {
        Ok(a) => {
            let body = serde_json::json!({
                "generation": a.generation,
                "apply_us": a.latency.as_micros() as u64,
            });
            (generation_headers(&a), axum::Json(body)).into_response()
        }
        Err(r) => r,
    }
}

async fn status(State(ctl): Shared) -> Response {
    let (generation, counts) = ctl.store.read(|s, g| {
        (
            g,
            serde_json::json!({
                "networks": s.networks.len(), "subnets": s.subnets.len(), "ports": s.ports.len(),
                "routers": s.routers.len(), "floatingips": s.floatingips.len(),
                "security_groups": s.security_groups.len(),
                "security_group_rules": s.security_group_rules.len(),
            }),
        )
    });
    let host = ctl.store.host();
    axum::Json(serde_json::json!({
        "host_id": host.host_id,
        "role": host.role,
        "generation": generation,
        "live_generation": ctl.daemon.publisher().current().generation,
        "workers": host.cores,
        "ports": ctl.daemon.port_names(),
        "state_file": ctl.store.file().map(|p| p.display().to_string()),
        "objects": counts,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct StatsQuery {
    #[serde(default)]
    format: Option<String>,
}

async fn stats(State(ctl): Shared, Query(q): Query<StatsQuery>) -> Response {
    let (text, json) = ctl.daemon.stats();
    if q.format.as_deref() == Some("text") {
        text.into_response()
    } else {
        axum::Json(json).into_response()
    }
}

async fn metrics(State(ctl): Shared) -> Response {
    let Some(h) = ctl.metrics.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n",
        )
            .into_response();
    };
    let d = ctl.daemon.clone();
    match blocking(move || super::metrics::render(&d, &h)).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            text,
        )
            .into_response(),
        Err(r) => r,
    }
}

fn internal(status: u16, kind: &'static str, msg: String) -> Response {
    error(ApiError {
        status,
        kind,
        problems: vec![Problem::new("", msg)],
    })
}

/// How long a request to the worker cores may wait for their answer.
const WORKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CtQuery {
    #[serde(default)]
    zone: Option<u16>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/conntrack?zone=Z&limit=N`: the connections of every worker core.
async fn conntrack_list(State(ctl): Shared, Query(q): Query<CtQuery>) -> Response {
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let d = ctl.daemon.clone();
    match blocking(move || d.conntrack_list(q.zone, limit, WORKER_TIMEOUT)).await {
        Ok(Ok(v)) => axum::Json(serde_json::json!({"connections": v})).into_response(),
        Ok(Err(e)) => internal(503, "WorkersUnavailable", e),
        Err(r) => r,
    }
}

/// `DELETE /v1/conntrack?zone=Z`: removes them (all, or one zone).
async fn conntrack_flush(State(ctl): Shared, Query(q): Query<CtQuery>) -> Response {
    let d = ctl.daemon.clone();
    match blocking(move || d.conntrack_flush(q.zone, WORKER_TIMEOUT)).await {
        Ok(Ok(n)) => axum::Json(serde_json::json!({"flushed": n})).into_response(),
        Ok(Err(e)) => internal(503, "WorkersUnavailable", e),
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureQuery {
    port: String,
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    snaplen: Option<usize>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `GET /v1/capture?port=P&count=N&snaplen=S&timeout_ms=T`: a pcap of what the port receives
/// and transmits, `count` frames or what came within the timeout.
async fn capture(State(ctl): Shared, Query(q): Query<CaptureQuery>) -> Response {
    let count = q.count.unwrap_or(100);
    if count == 0 || count > 100_000 {
        return error(ApiError::one("count", "must be 1..=100000"));
    }
    let snaplen = q.snaplen.unwrap_or(2048).clamp(64, 2048);
    let timeout = std::time::Duration::from_millis(q.timeout_ms.unwrap_or(10_000).min(600_000));
    let d = ctl.daemon.clone();
    match blocking(move || d.capture(&q.port, count, snaplen, timeout)).await {
        Ok(Ok(c)) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/vnd.tcpdump.pcap"),
                ),
                (
                    header::HeaderName::from_static("x-vswitch-packets"),
                    HeaderValue::from(c.packets as u64),
                ),
                (
                    header::HeaderName::from_static("x-vswitch-capture-dropped"),
                    HeaderValue::from(c.dropped),
                ),
            ],
            c.pcap,
        )
            .into_response(),
        Ok(Err(e)) => error(ApiError::one("port", e)),
        Err(r) => r,
    }
}

/// `POST /v1/trace`: what the switch would do with a packet (fields or hex), sending nothing.
async fn trace(State(ctl): Shared, body: Bytes) -> Response {
    let v = match json(&body) {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    let spec: super::trace::PacketSpec = match serde_path_to_error::deserialize(v) {
        Ok(s) => s,
        Err(e) => {
            let path = e.path().to_string();
            return error(ApiError::one(
                if path == "." { "" } else { &path },
                e.into_inner().to_string(),
            ));
        }
    };
    let d = ctl.daemon.clone();
    let r = blocking(move || {
        let tables = d.publisher().current();
        super::trace::trace_spec(&tables, d.shared(), &spec)
    })
    .await;
    match r {
        Ok(Ok(report)) => axum::Json(report).into_response(),
        Ok(Err(problems)) => error(ApiError::bad_request(
            problems
                .into_iter()
                .map(|p| match p.split_once(": ") {
                    Some((path, msg)) if !path.contains(' ') => Problem::new(path, msg),
                    _ => Problem::new("", p),
                })
                .collect(),
        )),
        Err(r) => r,
    }
}

/// Requires `Authorization: Bearer <token>` (the TCP listener).
pub async fn require_token(
    State(token): State<Arc<String>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
    if !ok {
        return error(ApiError {
            status: 401,
            kind: "Unauthorized",
            problems: vec![Problem::new(
                "",
                "this listener needs Authorization: Bearer <token> (control.token_file)",
            )],
        });
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
