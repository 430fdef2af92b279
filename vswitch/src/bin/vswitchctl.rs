//! `vswitchctl`: the operator's client of `vswitchd`'s API (the unix socket by default, or TCP
//! with a bearer token). Tables for people, `--json` for scripts; the exit status is 0 on
//! success, 1 when the switch refused the request (its problems are printed, one per line, with
//! their paths), 2 when it could not be reached.
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "vswitchctl",
    version,
    about = "Control and inspect a running vswitchd"
)]
struct Cli {
    /// The API's unix socket (default: the only *.sock in /run/vswitchd).
    #[arg(long, short = 's', env = "VSWITCHCTL_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// Talk to a TCP listener instead (`host:port`); needs --token-file.
    #[arg(long, global = true)]
    tcp: Option<String>,
    /// The bearer token for --tcp.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Replace the whole desired state with FILE (YAML or JSON), all or nothing.
    Apply { file: PathBuf },
    /// Show objects of the desired state as a table.
    Show {
        /// networks, subnets, ports, routers, floatingips, security-groups, security-group-rules
        what: String,
        #[arg(long)]
        json: bool,
    },
    /// Create an object: `vswitchctl create ports '{"network_id": "..."}'`.
    Create {
        what: String,
        /// The object's fields (JSON).
        fields: String,
    },
    /// Change fields of an object.
    Update {
        what: String,
        id: String,
        fields: String,
    },
    /// Delete an object.
    Delete { what: String, id: String },
    /// The host, the generation live and how many objects the state holds.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Counters: ports, stages, drop reasons by name, conntrack, per core.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// The connection table of every worker core.
    Conntrack {
        #[command(subcommand)]
        op: CtOp,
    },
    /// Explain what the switch would do with a packet, sending nothing.
    Trace(TraceArgs),
    /// Write a pcap of live traffic on a port (both directions).
    Capture {
        port: String,
        #[arg(long, short = 'c', default_value_t = 100)]
        count: usize,
        #[arg(short = 'w')]
        write: PathBuf,
        /// Stop after this many seconds even if fewer packets came.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        #[arg(long, default_value_t = 2048)]
        snaplen: usize,
    },
}

#[derive(Subcommand, Debug)]
enum CtOp {
    List {
        #[arg(long)]
        zone: Option<u16>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    Flush {
        #[arg(long)]
        zone: Option<u16>,
    },
}

#[derive(clap::Args, Debug)]
struct TraceArgs {
    /// The port the packet arrives on (a port name of the host config).
    #[arg(long)]
    in_port: String,
    /// The whole frame as hex.
    #[arg(long)]
    hex: Option<String>,
    /// The first frame of a pcap file.
    #[arg(long)]
    pcap: Option<PathBuf>,
    #[arg(long)]
    eth_src: Option<String>,
    #[arg(long)]
    eth_dst: Option<String>,
    #[arg(long)]
    vlan: Option<u16>,
    #[arg(long)]
    ip_src: Option<String>,
    #[arg(long)]
    ip_dst: Option<String>,
    /// tcp, udp, icmp, icmpv6 or a number.
    #[arg(long)]
    proto: Option<String>,
    #[arg(long)]
    sport: Option<u16>,
    #[arg(long)]
    dport: Option<u16>,
    /// TCP flags, e.g. S, SA, A, F, R.
    #[arg(long)]
    tcp_flags: Option<String>,
    #[arg(long)]
    icmp_type: Option<u8>,
    #[arg(long)]
    icmp_code: Option<u8>,
    #[arg(long)]
    ttl: Option<u8>,
    #[arg(long)]
    json: bool,
}

/// Where to send requests.
enum Endpoint {
    Unix(PathBuf),
    Tcp(String, String),
}

fn endpoint(cli: &Cli) -> Result<Endpoint, String> {
    if let Some(addr) = &cli.tcp {
        let f = cli
            .token_file
            .as_ref()
            .ok_or("--tcp needs --token-file (the switch's control.token_file)")?;
        let token =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        return Ok(Endpoint::Tcp(addr.clone(), token.trim().to_string()));
    }
    if let Some(s) = &cli.socket {
        return Ok(Endpoint::Unix(s.clone()));
    }
    let dir = vswitch_config::DEFAULT_CONTROL_DIR;
    let socks: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match socks.as_slice() {
        [one] => Ok(Endpoint::Unix(one.clone())),
        [] => Err(format!(
            "no vswitchd socket in {dir}; is vswitchd running? (or give --socket)"
        )),
        many => Err(format!(
            "several switches run here; pick one with --socket: {}",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// One HTTP/1.1 request; returns (status, headers, body).
async fn request(
    ep: &Endpoint,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "vswitchd");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    if let Endpoint::Tcp(_, token) = ep {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    macro_rules! send {
        ($stream:expr) => {{
            let io = hyper_util::rt::TokioIo::new($stream);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
            tokio::spawn(conn);
            sender
                .send_request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?
        }};
    }
    let resp = match ep {
        Endpoint::Unix(p) => send!(tokio::net::UnixStream::connect(p)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", p.display()))?),
        Endpoint::Tcp(addr, _) => send!(tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?),
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, headers, body))
}

/// A refusal: every problem with its path.
fn refused(status: u16, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["NeutronError"];
    let mut out = format!(
        "refused ({status} {}):",
        e["type"].as_str().unwrap_or("error")
    );
    match e["problems"].as_array() {
        Some(ps) if !ps.is_empty() => {
            for p in ps {
                let path = p["path"].as_str().unwrap_or("");
                let msg = p["message"].as_str().unwrap_or("");
                if path.is_empty() {
                    out.push_str(&format!("\n  {msg}"));
                } else {
                    out.push_str(&format!("\n  {path}: {msg}"));
                }
            }
        }
        _ => out.push_str(&format!("\n  {}", String::from_utf8_lossy(body).trim())),
    }
    out
}

/// Columns shown per collection: (header, JSON field).
fn columns(what: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match what {
        "networks" => &[
            ("id", "id"),
            ("name", "name"),
            ("type", "provider:network_type"),
            ("segment", "provider:segmentation_id"),
            ("physnet", "provider:physical_network"),
            ("external", "router:external"),
            ("mtu", "mtu"),
        ],
        "subnets" => &[
            ("id", "id"),
            ("name", "name"),
            ("network", "network_id"),
            ("cidr", "cidr"),
            ("gateway", "gateway_ip"),
        ],
        "ports" => &[
            ("id", "id"),
            ("name", "name"),
            ("network", "network_id"),
            ("mac", "mac_address"),
            ("fixed_ips", "fixed_ips"),
            ("host", "binding:host_id"),
            ("owner", "device_owner"),
        ],
        "routers" => &[
            ("id", "id"),
            ("name", "name"),
            ("distributed", "distributed"),
            ("gateway", "external_gateway_info"),
            ("routes", "routes"),
        ],
        "floatingips" => &[
            ("id", "id"),
            ("floating_ip", "floating_ip_address"),
            ("network", "floating_network_id"),
            ("port", "port_id"),
            ("fixed_ip", "fixed_ip_address"),
        ],
        "security-groups" => &[
            ("id", "id"),
            ("name", "name"),
            ("stateful", "stateful"),
            ("rules", "security_group_rules"),
        ],
        "security-group-rules" => &[
            ("id", "id"),
            ("group", "security_group_id"),
            ("direction", "direction"),
            ("ethertype", "ethertype"),
            ("protocol", "protocol"),
            ("ports", "port_range_min"),
            ("remote", "remote_ip_prefix"),
        ],
        _ => return None,
    })
}

/// A cell: strings bare, nulls empty, fixed IPs as addresses, gateways as their network.
fn cell(field: &str, row: &Value) -> String {
    let v = &row[field];
    match (field, v) {
        (_, Value::Null) => String::new(),
        (_, Value::String(s)) => s.clone(),
        ("fixed_ips", Value::Array(a)) => a
            .iter()
            .filter_map(|f| f["ip_address"].as_str())
            .collect::<Vec<_>>()
            .join(","),
        ("external_gateway_info", o) => {
            let ips: Vec<&str> = o["external_fixed_ips"]
                .as_array()
                .map(|a| a.iter().filter_map(|f| f["ip_address"].as_str()).collect())
                .unwrap_or_default();
            format!(
                "{} {}",
                o["network_id"].as_str().unwrap_or(""),
                ips.join(",")
            )
        }
        ("security_group_rules" | "routes", Value::Array(a)) => a.len().to_string(),
        ("port_range_min", _) => match (&row["port_range_min"], &row["port_range_max"]) {
            (Value::Number(a), Value::Number(b)) if a == b => a.to_string(),
            (Value::Number(a), Value::Number(b)) => format!("{a}-{b}"),
            _ => String::new(),
        },
        (_, other) => other.to_string(),
    }
}

/// Aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let s: Vec<String> = cells
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        s.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(&mut headers.iter().map(|h| h.to_uppercase()));
    for r in rows {
        out.push_str(&line(&mut r.iter().cloned()));
    }
    out
}

fn json_of(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// Neutron's URL collection for a name given in either spelling.
fn collection(what: &str) -> String {
    what.replace('_', "-")
}

/// A request whose refusal (4xx/5xx) is an error carrying every problem (exit 1); an
/// unreachable switch exits 2.
async fn call(
    ep: &Endpoint,
    method: &str,
    path: String,
    body: Option<Vec<u8>>,
) -> Result<(u16, hyper::HeaderMap, Bytes), (u8, String)> {
    let (status, headers, b) = request(ep, method, &path, body)
        .await
        .map_err(|e| (2u8, e))?;
    if status >= 400 {
        return Err((1u8, refused(status, &b)));
    }
    Ok((status, headers, b))
}

/// `create` and `update`: the fields as `{"<singular>": fields}`, the object printed back.
async fn write_object(
    ep: &Endpoint,
    method: &str,
    what: &str,
    id: Option<&str>,
    fields: &str,
) -> Result<(), (u8, String)> {
    let coll = collection(what);
    let singular = singular(&coll)?;
    let f: Value = serde_json::from_str(fields).map_err(|e| (2, format!("fields: {e}")))?;
    let body = serde_json::json!({ singular: f });
    let path = match id {
        Some(id) => format!("/v2.0/{coll}/{id}"),
        None => format!("/v2.0/{coll}"),
    };
    let (_, h, b) = call(ep, method, path, Some(body.to_string().into_bytes())).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json_of(&b)).unwrap_or_default()
    );
    print_generation(&h);
    Ok(())
}

async fn run(cli: Cli) -> Result<(), (u8, String)> {
    let ep = endpoint(&cli).map_err(|e| (2, e))?;
    match cli.cmd {
        Cmd::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| (2, format!("cannot read {}: {e}", file.display())))?;
            let v: Value = if file.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text).map_err(|e| (1, format!("{}: {e}", file.display())))?
            } else {
                serde_yaml::from_str(&text).map_err(|e| (1, format!("{}: {e}", file.display())))?
            };
            let v = if v.is_null() {
                serde_json::json!({})
            } else {
                v
            };
            let (_, _, b) = call(
                &ep,
                "PUT",
                "/v1/state".into(),
                Some(v.to_string().into_bytes()),
            )
            .await?;
            let r = json_of(&b);
            println!(
                "applied {}: generation {} live on every core ({} us)",
                file.display(),
                r["generation"],
                r["apply_us"]
            );
        }
        Cmd::Show { what, json } => {
            let coll = collection(&what);
            let cols = columns(&coll).ok_or_else(|| {
                (2, format!("cannot show {what:?}: networks, subnets, ports, routers, floatingips, security-groups, security-group-rules"))
            })?;
            let (_, _, b) = call(&ep, "GET", format!("/v2.0/{coll}"), None).await?;
            let v = json_of(&b);
            let key = coll.replace('-', "_");
            let items = v[&key].as_array().cloned().unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&items).unwrap_or_default()
                );
            } else {
                let headers: Vec<&str> = cols.iter().map(|c| c.0).collect();
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|row| cols.iter().map(|c| cell(c.1, row)).collect())
                    .collect();
                print!("{}", table(&headers, &rows));
            }
        }
        Cmd::Create { what, fields } => write_object(&ep, "POST", &what, None, &fields).await?,
        Cmd::Update { what, id, fields } => {
            write_object(&ep, "PUT", &what, Some(&id), &fields).await?
        }
        Cmd::Delete { what, id } => {
            let coll = collection(&what);
            let (_, h, _) = call(&ep, "DELETE", format!("/v2.0/{coll}/{id}"), None).await?;
            println!("deleted {} {id}", singular(&coll)?);
            print_generation(&h);
        }
        Cmd::Status { json } => {
            let (_, _, b) = call(&ep, "GET", "/v1/status".into(), None).await?;
            let v = json_of(&b);
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!(
                    "host        {} ({})",
                    v["host_id"].as_str().unwrap_or(""),
                    v["role"].as_str().unwrap_or("")
                );
                println!(
                    "generation  {} (live on the cores: {})",
                    v["generation"], v["live_generation"]
                );
                println!("workers     {}", v["workers"]);
                println!("ports       {}", v["ports"]);
                println!(
                    "state file  {}",
                    v["state_file"].as_str().unwrap_or("(none)")
                );
                if let Some(o) = v["objects"].as_object() {
                    for (k, n) in o {
                        println!("  {k:<22} {n}");
                    }
                }
            }
        }
        Cmd::Stats { json } => {
            if json {
                let (_, _, b) = call(&ep, "GET", "/v1/stats".into(), None).await?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json_of(&b)).unwrap_or_default()
                );
            } else {
                let (_, _, b) = call(&ep, "GET", "/v1/stats?format=text".into(), None).await?;
                print!("{}", String::from_utf8_lossy(&b));
            }
        }
        Cmd::Conntrack { op } => match op {
            CtOp::List { zone, limit, json } => {
                let mut q = format!("/v1/conntrack?limit={limit}");
                if let Some(z) = zone {
                    q.push_str(&format!("&zone={z}"));
                }
                let (_, _, b) = call(&ep, "GET", q, None).await?;
                let v = json_of(&b);
                if json {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    print!("{}", conntrack_table(&v));
                }
            }
            CtOp::Flush { zone } => {
                let q = match zone {
                    Some(z) => format!("/v1/conntrack?zone={z}"),
                    None => "/v1/conntrack".into(),
                };
                let (_, _, b) = call(&ep, "DELETE", q, None).await?;
                println!("flushed {} connections", json_of(&b)["flushed"]);
            }
        },
        Cmd::Trace(t) => {
            let mut spec = serde_json::json!({"in_port": t.in_port});
            let hex = match (&t.hex, &t.pcap) {
                (Some(h), _) => Some(h.clone()),
                (None, Some(p)) => {
                    let bytes = std::fs::read(p)
                        .map_err(|e| (2, format!("cannot read {}: {e}", p.display())))?;
                    let frame = vswitch::control::trace::first_pcap_packet(&bytes)
                        .map_err(|e| (2, format!("{}: {e}", p.display())))?;
                    Some(frame.iter().map(|b| format!("{b:02x}")).collect())
                }
                _ => None,
            };
            let o = spec.as_object_mut().ok_or((2, "internal".to_string()))?;
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            };
            set("hex", hex.map(Value::from));
            set("eth_src", t.eth_src.map(Value::from));
            set("eth_dst", t.eth_dst.map(Value::from));
            set("vlan", t.vlan.map(Value::from));
            set("ip_src", t.ip_src.map(Value::from));
            set("ip_dst", t.ip_dst.map(Value::from));
            set("proto", t.proto.map(Value::from));
            set("sport", t.sport.map(Value::from));
            set("dport", t.dport.map(Value::from));
            set("tcp_flags", t.tcp_flags.map(Value::from));
            set("icmp_type", t.icmp_type.map(Value::from));
            set("icmp_code", t.icmp_code.map(Value::from));
            set("ttl", t.ttl.map(Value::from));
            let (_, _, b) = call(
                &ep,
                "POST",
                "/v1/trace".into(),
                Some(spec.to_string().into_bytes()),
            )
            .await?;
            let v = json_of(&b);
            if t.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", trace_text(&v));
            }
        }
        Cmd::Capture {
            port,
            count,
            write,
            timeout,
            snaplen,
        } => {
            let q = format!(
                "/v1/capture?port={port}&count={count}&snaplen={snaplen}&timeout_ms={}",
                (timeout * 1000.0) as u64
            );
            let (_, h, b) = call(&ep, "GET", q, None).await?;
            std::fs::write(&write, &b)
                .map_err(|e| (2, format!("cannot write {}: {e}", write.display())))?;
            let n = h
                .get("x-vswitch-packets")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            let d = h
                .get("x-vswitch-capture-dropped")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("0");
            println!(
                "captured {n} packets on {port} to {} ({d} not captured: no free slot)",
                write.display()
            );
        }
    }
    Ok(())
}

fn singular(coll: &str) -> Result<&'static str, (u8, String)> {
    vswitch::control::resources::Kind::from_collection(coll)
        .map(|k| k.singular())
        .ok_or_else(|| (2, format!("unknown collection {coll:?}")))
}

fn print_generation(h: &hyper::HeaderMap) {
    if let (Some(g), Some(us)) = (h.get("x-vswitch-generation"), h.get("x-vswitch-apply-us")) {
        eprintln!(
            "generation {} live on every core ({} us)",
            g.to_str().unwrap_or("?"),
            us.to_str().unwrap_or("?")
        );
    }
}

/// `vswitchctl trace` for people: every stage line, what would leave, the verdict.
fn trace_text(v: &Value) -> String {
    let mut out = format!(
        "packet: {} bytes in on {}\n",
        v["frame_len"],
        v["in_port"].as_str().unwrap_or("")
    );
    for l in v["lines"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {}\n", l.as_str().unwrap_or("")));
    }
    for o in v["outputs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  -> {}: {}\n",
            o["port"].as_str().unwrap_or(""),
            o["summary"].as_str().unwrap_or("")
        ));
    }
    out.push_str(&format!(
        "verdict: {}\n",
        v["verdict"].as_str().unwrap_or("")
    ));
    out
}

/// `conntrack list` for people: one line per connection, the original direction.
fn conntrack_table(v: &Value) -> String {
    let items = v["connections"].as_array().cloned().unwrap_or_default();
    let ep = |t: &Value, a: &str, p: &str| match (&t[a], &t[p], &t["icmp_id"]) {
        (Value::String(ip), Value::Number(port), _) if ip.contains(':') => format!("[{ip}]:{port}"),
        (Value::String(ip), Value::Number(port), _) => format!("{ip}:{port}"),
        (Value::String(ip), _, _) => ip.clone(),
        _ => String::new(),
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            let o = &c["original"];
            let mut conn = format!("{} -> {}", ep(o, "src", "sport"), ep(o, "dst", "dport"));
            if let Some(id) = o["icmp_id"].as_u64() {
                conn.push_str(&format!(" id {id}"));
            }
            if c["reply"].is_object() {
                let r = &c["reply"];
                conn.push_str(&format!(
                    "  (reply {} -> {})",
                    ep(r, "src", "sport"),
                    ep(r, "dst", "dport")
                ));
            }
            vec![
                c["core"].to_string(),
                c["zone"].to_string(),
                c["port"]
                    .as_str()
                    .or(c["router"].as_str())
                    .unwrap_or("")
                    .to_string(),
                c["proto"].as_str().unwrap_or("").to_string(),
                c["state"].as_str().unwrap_or("").to_string(),
                c["expires_in_s"].to_string(),
                conn,
            ]
        })
        .collect();
    let mut out = table(
        &[
            "core",
            "zone",
            "owner",
            "proto",
            "state",
            "expires_s",
            "connection",
        ],
        &rows,
    );
    out.push_str(&format!("{} connections\n", items.len()));
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vswitchctl: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("vswitchctl: {msg}");
            ExitCode::from(code)
        }
    }
}
