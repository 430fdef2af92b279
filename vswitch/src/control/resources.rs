//! Neutron's resources over the desired state: list, show, create, update, delete, and the
//! router actions (`add_router_interface`, `remove_router_interface`, the gateway), with what
//! the Neutron server itself fills in on create (ids, MACs, fixed IPs from the subnets, the new
//! security group's egress rules, a floating IP's address, a router's interface, gateway and
//! SNAT ports).
//!
//! Every function takes the current state and returns a whole new state, or every problem with
//! the JSON path where it is: a body problem names the body's path (`port.mac_address`), a
//! problem of the state the change would make names the object the request made or changed by
//! its singular (`port.fixed_ips[0].ip_address`) and any other object by its place in the state
//! (`floatingips[2].port_id`). Nothing here touches the running tables: the caller validates the
//! new state against the host, compiles and publishes it (or not) as one change.
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::net::IpAddr;
use vswitch_config::{
    DesiredState, FixedIp, FloatingIp, MacAddr, Network, Port, Problem, Router, SecurityGroup,
    SecurityGroupRule, Subnet, OWNER_ROUTER_INTERFACE, OWNER_ROUTER_INTERFACE_DISTRIBUTED,
};

pub use crate::tables::router::{OWNER_GATEWAY, OWNER_SNAT};

/// The resource collections of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Network,
    Subnet,
    Port,
    Router,
    FloatingIp,
    SecurityGroup,
    SecurityGroupRule,
}

pub const KINDS: [Kind; 7] = [
    Kind::Network,
    Kind::Subnet,
    Kind::Port,
    Kind::Router,
    Kind::FloatingIp,
    Kind::SecurityGroup,
    Kind::SecurityGroupRule,
];

impl Kind {
    /// The URL collection: `/v2.0/<collection>`.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Network => "networks",
            Kind::Subnet => "subnets",
            Kind::Port => "ports",
            Kind::Router => "routers",
            Kind::FloatingIp => "floatingips",
            Kind::SecurityGroup => "security-groups",
            Kind::SecurityGroupRule => "security-group-rules",
        }
    }

    /// The body key of one object (`{"port": {...}}`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Subnet => "subnet",
            Kind::Port => "port",
            Kind::Router => "router",
            Kind::FloatingIp => "floatingip",
            Kind::SecurityGroup => "security_group",
            Kind::SecurityGroupRule => "security_group_rule",
        }
    }

    /// The body key of a list, and the desired state's field.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Network => "networks",
            Kind::Subnet => "subnets",
            Kind::Port => "ports",
            Kind::Router => "routers",
            Kind::FloatingIp => "floatingips",
            Kind::SecurityGroup => "security_groups",
            Kind::SecurityGroupRule => "security_group_rules",
        }
    }

    pub fn from_collection(s: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.collection() == s)
    }
}

/// Why a request was refused: the HTTP status, Neutron's error type and every problem.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub problems: Vec<Problem>,
}

impl ApiError {
    pub fn bad_request(problems: Vec<Problem>) -> Self {
        ApiError {
            status: 400,
            kind: "BadRequest",
            problems,
        }
    }
    pub fn conflict(problems: Vec<Problem>) -> Self {
        ApiError {
            status: 409,
            kind: "Conflict",
            problems,
        }
    }
    pub fn not_found(kind: Kind, id: &str) -> Self {
        ApiError {
            status: 404,
            kind: "NotFound",
            problems: vec![Problem::new(
                "",
                format!("{} {id} could not be found", kind.singular()),
            )],
        }
    }
    pub fn one(path: &str, msg: impl Into<String>) -> Self {
        Self::bad_request(vec![Problem::new(path, msg)])
    }

    /// Neutron's error body, with every problem and its path.
    pub fn body(&self) -> Value {
        let message = self
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        serde_json::json!({
            "NeutronError": {
                "type": self.kind,
                "message": message,
                "detail": "",
                "problems": self.problems.iter().map(|p| serde_json::json!({
                    "path": p.path, "message": p.message,
                })).collect::<Vec<_>>(),
            }
        })
    }
}

/// A change the API accepted before validation: the state it makes, the object it made or
/// changed (to name its problems by its singular) and the response body.
#[derive(Debug, Clone)]
pub struct Change {
    pub state: DesiredState,
    /// (kind, index in the new state) of the object the request is about.
    pub subject: Option<(Kind, usize)>,
    pub response: Value,
}

impl Change {
    /// Renames the problems of the request's own object: `ports[7].mac_address` ->
    /// `port.mac_address`.
    pub fn name_problems(&self, problems: Vec<Problem>) -> Vec<Problem> {
        let Some((kind, idx)) = self.subject else {
            return problems;
        };
        let prefix = format!("{}[{idx}]", kind.plural());
        problems
            .into_iter()
            .map(|mut p| {
                if let Some(rest) = p.path.strip_prefix(&prefix) {
                    if rest.is_empty() || rest.starts_with('.') || rest.starts_with('[') {
                        p.path = format!("{}{rest}", kind.singular());
                    }
                }
                p
            })
            .collect()
    }
}

/// One resource type of the desired state.
trait Resource: Serialize + DeserializeOwned + Clone {
    const KIND: Kind;
    fn id(&self) -> &str;
    fn all(s: &DesiredState) -> &Vec<Self>;
    fn all_mut(s: &mut DesiredState) -> &mut Vec<Self>;
}

macro_rules! resource {
    ($t:ty, $k:expr, $f:ident) => {
        impl Resource for $t {
            const KIND: Kind = $k;
            fn id(&self) -> &str {
                &self.id
            }
            fn all(s: &DesiredState) -> &Vec<Self> {
                &s.$f
            }
            fn all_mut(s: &mut DesiredState) -> &mut Vec<Self> {
                &mut s.$f
            }
        }
    };
}
resource!(Network, Kind::Network, networks);
resource!(Subnet, Kind::Subnet, subnets);
resource!(Port, Kind::Port, ports);
resource!(Router, Kind::Router, routers);
resource!(FloatingIp, Kind::FloatingIp, floatingips);
resource!(SecurityGroup, Kind::SecurityGroup, security_groups);
resource!(
    SecurityGroupRule,
    Kind::SecurityGroupRule,
    security_group_rules
);

fn to_value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// Deserializes a body object, naming the failing field by its path under `root`.
fn typed<T: DeserializeOwned>(v: Value, root: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let inner = e.path().to_string();
        let mut msg = e.into_inner().to_string();
        let mut path = if inner == "." {
            root.to_string()
        } else {
            format!("{root}.{inner}")
        };
        // An unknown field is reported at the object that holds it.
        if let Some((_, rest)) = msg.split_once("unknown field `") {
            let field = rest.split('`').next().unwrap_or_default().to_string();
            if let Some(parent) = path.strip_suffix(&format!(".{field}")) {
                path = parent.to_string();
            }
            msg = msg.split(", expected").next().unwrap_or(&msg).to_string();
        }
        ApiError::one(&path, msg)
    })
}

/// Fields of Neutron's objects that say nothing about forwarding (ownership, status,
/// timestamps, scheduling hints, DNS and binding details): accepted and dropped on create and
/// update, so bodies made for Neutron itself pass.
const NEUTRON_BOOKKEEPING: &[&str] = &[
    "tenant_id",
    "project_id",
    "status",
    "revision_number",
    "created_at",
    "updated_at",
    "tags",
    "standard_attr_id",
    "availability_zone_hints",
    "availability_zones",
    "ipv4_address_scope",
    "ipv6_address_scope",
    "is_default",
    "l2_adjacency",
    "subnets",
    "dns_domain",
    "dns_name",
    "dns_assignment",
    "binding:vif_type",
    "binding:vif_details",
    "binding:vnic_type",
    "binding:profile",
];

/// `{"<singular>": {...}}` -> the object, or a 400 naming what is wrong with the envelope.
fn envelope(kind: Kind, body: Value) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(mut top) = body else {
        return Err(ApiError::one(
            "",
            format!(
                "the body must be a JSON object {{\"{}\": {{...}}}}",
                kind.singular()
            ),
        ));
    };
    let extra: Vec<String> = top
        .keys()
        .filter(|k| *k != kind.singular())
        .cloned()
        .collect();
    if !extra.is_empty() {
        return Err(ApiError::bad_request(
            extra
                .into_iter()
                .map(|k| {
                    Problem::new(
                        k,
                        format!(
                            "unknown key; the body is {{\"{}\": {{...}}}}",
                            kind.singular()
                        ),
                    )
                })
                .collect(),
        ));
    }
    match top.remove(kind.singular()) {
        Some(Value::Object(mut o)) => {
            // Neutron's bookkeeping, as `openstack` clients send it: nothing the switch
            // forwards by. Any other unknown field is still refused.
            for k in NEUTRON_BOOKKEEPING {
                o.remove(*k);
            }
            if !matches!(kind, Kind::SecurityGroup | Kind::SecurityGroupRule) {
                o.remove("description");
            }
            Ok(o)
        }
        Some(_) => Err(ApiError::one(kind.singular(), "must be a JSON object")),
        None => Err(ApiError::one(
            "",
            format!("missing \"{}\" object", kind.singular()),
        )),
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A MAC in OpenStack's default base `fa:16:3e`, not used by any port yet.
fn new_mac(s: &DesiredState) -> MacAddr {
    loop {
        let r = uuid::Uuid::new_v4();
        let b = r.as_bytes();
        let mac = MacAddr([0xfa, 0x16, 0x3e, b[0], b[1], b[2]]);
        if !s.ports.iter().any(|p| p.mac_address == mac) {
            return mac;
        }
    }
}

fn used_ips(s: &DesiredState) -> std::collections::HashSet<IpAddr> {
    let mut used: std::collections::HashSet<IpAddr> = s
        .ports
        .iter()
        .flat_map(|p| p.fixed_ips.iter().map(|f| f.ip_address))
        .collect();
    used.extend(
        s.floatingips
            .iter()
            .map(|f| IpAddr::V4(f.floating_ip_address)),
    );
    for r in &s.routers {
        if let Some(g) = &r.external_gateway_info {
            used.extend(g.external_fixed_ips.iter().map(|f| f.ip_address));
        }
    }
    used
}

/// The first free address of a subnet's allocation pools (or, with none, of the subnet less its
/// network, broadcast and gateway addresses), as Neutron's IPAM hands them out.
pub fn allocate_ip(s: &DesiredState, subnet: &Subnet) -> Option<IpAddr> {
    allocate_ip_except(s, subnet, &std::collections::HashSet::new())
}

/// [`allocate_ip`], also skipping `taken`.
fn allocate_ip_except(
    s: &DesiredState,
    subnet: &Subnet,
    taken: &std::collections::HashSet<IpAddr>,
) -> Option<IpAddr> {
    let used = used_ips(s);
    let free =
        |ip: IpAddr| !used.contains(&ip) && !taken.contains(&ip) && Some(ip) != subnet.gateway_ip;
    let ranges: Vec<(u128, u128)> = if subnet.allocation_pools.is_empty() {
        let (lo, hi) = match subnet.cidr {
            ipnet::IpNet::V4(n) => (
                u32::from(n.network()) as u128 + 1,
                (u32::from(n.broadcast()) as u128).saturating_sub(1),
            ),
            ipnet::IpNet::V6(n) => (u128::from(n.network()) + 1, u128::from(n.broadcast())),
        };
        vec![(lo, hi)]
    } else {
        subnet
            .allocation_pools
            .iter()
            .map(|p| (ip_u128(p.start), ip_u128(p.end)))
            .collect()
    };
    let v4 = subnet.cidr.addr().is_ipv4();
    for (lo, hi) in ranges {
        // Bounded: a subnet with more addresses than ports never needs many steps.
        let mut a = lo;
        let mut steps = 0u32;
        while a <= hi && steps < 1_000_000 {
            let ip = if v4 {
                IpAddr::V4(std::net::Ipv4Addr::from(a as u32))
            } else {
                IpAddr::V6(std::net::Ipv6Addr::from(a))
            };
            if free(ip) {
                return Some(ip);
            }
            a += 1;
            steps += 1;
        }
    }
    None
}

fn ip_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// `{"networks": [...]}`.
pub fn list(s: &DesiredState, kind: Kind) -> Value {
    let items = match kind {
        Kind::Network => to_value(&s.networks),
        Kind::Subnet => to_value(&s.subnets),
        Kind::Port => to_value(&s.ports),
        Kind::Router => to_value(&s.routers),
        Kind::FloatingIp => to_value(&s.floatingips),
        Kind::SecurityGroup => {
            Value::Array(s.security_groups.iter().map(|g| with_rules(s, g)).collect())
        }
        Kind::SecurityGroupRule => to_value(&s.security_group_rules),
    };
    let mut m = Map::new();
    m.insert(kind.plural().to_string(), items);
    Value::Object(m)
}

/// A security group as Neutron shows it: with its rules.
fn with_rules(s: &DesiredState, g: &SecurityGroup) -> Value {
    let mut v = to_value(g);
    if let Value::Object(o) = &mut v {
        o.insert(
            "security_group_rules".into(),
            to_value(&s.rules_of(&g.id).cloned().collect::<Vec<_>>()),
        );
    }
    v
}

fn one(kind: Kind, v: Value) -> Value {
    let mut m = Map::new();
    m.insert(kind.singular().to_string(), v);
    Value::Object(m)
}

fn find<T: Resource>(s: &DesiredState, id: &str) -> Result<usize, ApiError> {
    T::all(s)
        .iter()
        .position(|x| x.id() == id)
        .ok_or_else(|| ApiError::not_found(T::KIND, id))
}

fn show_t<T: Resource>(s: &DesiredState, id: &str) -> Result<Value, ApiError> {
    let i = find::<T>(s, id)?;
    Ok(one(T::KIND, to_value(&T::all(s)[i])))
}

/// `{"network": {...}}`.
pub fn show(s: &DesiredState, kind: Kind, id: &str) -> Result<Value, ApiError> {
    match kind {
        Kind::Network => show_t::<Network>(s, id),
        Kind::Subnet => show_t::<Subnet>(s, id),
        Kind::Port => show_t::<Port>(s, id),
        Kind::Router => show_t::<Router>(s, id),
        Kind::FloatingIp => show_t::<FloatingIp>(s, id),
        Kind::SecurityGroup => {
            let i = find::<SecurityGroup>(s, id)?;
            Ok(one(kind, with_rules(s, &s.security_groups[i])))
        }
        Kind::SecurityGroupRule => show_t::<SecurityGroupRule>(s, id),
    }
}

/// POST `/v2.0/<collection>`.
pub fn create(s: &DesiredState, kind: Kind, body: Value) -> Result<Change, ApiError> {
    let mut o = envelope(kind, body)?;
    if !o.contains_key("id") {
        o.insert("id".into(), Value::String(new_id()));
    }
    let mut next = s.clone();
    match kind {
        Kind::Network => network_defaults(s, &mut o),
        Kind::Subnet => subnet_defaults(&mut o)?,
        Kind::Port => port_defaults(s, &mut o)?,
        Kind::FloatingIp => fip_defaults(s, &mut o)?,
        Kind::SecurityGroupRule => {
            o.entry("ethertype").or_insert(Value::String("IPv4".into()));
        }
        Kind::Router | Kind::SecurityGroup => {}
    }
    let id = o
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let exists = match kind {
        Kind::Network => find::<Network>(s, &id).is_ok(),
        Kind::Subnet => find::<Subnet>(s, &id).is_ok(),
        Kind::Port => find::<Port>(s, &id).is_ok(),
        Kind::Router => find::<Router>(s, &id).is_ok(),
        Kind::FloatingIp => find::<FloatingIp>(s, &id).is_ok(),
        Kind::SecurityGroup => find::<SecurityGroup>(s, &id).is_ok(),
        Kind::SecurityGroupRule => find::<SecurityGroupRule>(s, &id).is_ok(),
    };
    if exists {
        return Err(ApiError::conflict(vec![Problem::new(
            format!("{}.id", kind.singular()),
            format!("a {} with id {id} already exists", kind.singular()),
        )]));
    }
    let v = Value::Object(o);
    let idx = match kind {
        Kind::Network => push::<Network>(&mut next, v)?,
        Kind::Subnet => push::<Subnet>(&mut next, v)?,
        Kind::Port => push::<Port>(&mut next, v)?,
        Kind::Router => {
            let i = push::<Router>(&mut next, v)?;
            sync_gateway_port(&mut next, &id)?;
            i
        }
        Kind::FloatingIp => push::<FloatingIp>(&mut next, v)?,
        Kind::SecurityGroup => {
            let i = push::<SecurityGroup>(&mut next, v)?;
            // Neutron gives a new group two rules: everything out, over IPv4 and IPv6.
            for eth in [
                vswitch_config::EtherType::Ipv4,
                vswitch_config::EtherType::Ipv6,
            ] {
                next.security_group_rules.push(SecurityGroupRule {
                    id: new_id(),
                    security_group_id: id.clone(),
                    direction: vswitch_config::Direction::Egress,
                    ethertype: eth,
                    protocol: None,
                    port_range_min: None,
                    port_range_max: None,
                    remote_ip_prefix: None,
                    remote_group_id: None,
                    description: String::new(),
                });
            }
            i
        }
        Kind::SecurityGroupRule => push::<SecurityGroupRule>(&mut next, v)?,
    };
    finish(next, kind, idx)
}

fn push<T: Resource>(s: &mut DesiredState, v: Value) -> Result<usize, ApiError> {
    let t: T = typed(v, T::KIND.singular())?;
    let all = T::all_mut(s);
    all.push(t);
    Ok(all.len() - 1)
}

fn finish(next: DesiredState, kind: Kind, idx: usize) -> Result<Change, ApiError> {
    let response = match kind {
        Kind::SecurityGroup => one(kind, with_rules(&next, &next.security_groups[idx])),
        Kind::Network => one(kind, to_value(&next.networks[idx])),
        Kind::Subnet => one(kind, to_value(&next.subnets[idx])),
        Kind::Port => one(kind, to_value(&next.ports[idx])),
        Kind::Router => one(kind, to_value(&next.routers[idx])),
        Kind::FloatingIp => one(kind, to_value(&next.floatingips[idx])),
        Kind::SecurityGroupRule => one(kind, to_value(&next.security_group_rules[idx])),
    };
    Ok(Change {
        state: next,
        subject: Some((kind, idx)),
        response,
    })
}

/// A tenant network without provider fields is a VXLAN network with the next free VNI.
fn network_defaults(s: &DesiredState, o: &mut Map<String, Value>) {
    if !o.contains_key("provider:network_type") {
        o.insert(
            "provider:network_type".into(),
            Value::String("vxlan".into()),
        );
        if !o.contains_key("provider:segmentation_id") {
            let used: std::collections::HashSet<u32> = s
                .networks
                .iter()
                .filter(|n| n.network_type == vswitch_config::NetworkType::Vxlan)
                .filter_map(|n| n.segmentation_id)
                .collect();
            let vni = (1..=16_777_215u32).find(|v| !used.contains(v)).unwrap_or(1);
            o.insert("provider:segmentation_id".into(), Value::from(vni));
        }
    }
}

/// `ip_version` from the CIDR and, unless given (even as null), the first address as gateway.
fn subnet_defaults(o: &mut Map<String, Value>) -> Result<(), ApiError> {
    let Some(cidr) = o.get("cidr").and_then(Value::as_str) else {
        return Ok(()); // the typed parse names the missing field
    };
    let Ok(net) = cidr.parse::<ipnet::IpNet>() else {
        return Ok(());
    };
    o.entry("ip_version")
        .or_insert(Value::from(if net.addr().is_ipv4() { 4 } else { 6 }));
    if !o.contains_key("gateway_ip") {
        let first = match net {
            ipnet::IpNet::V4(n) => IpAddr::V4(std::net::Ipv4Addr::from(
                u32::from(n.network()).wrapping_add(1),
            )),
            ipnet::IpNet::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(n.network()).wrapping_add(1),
            )),
        };
        o.insert("gateway_ip".into(), Value::String(first.to_string()));
    }
    Ok(())
}

/// A MAC, fixed IPs from the network's subnets (or the subnets named), the `default` group.
fn port_defaults(s: &DesiredState, o: &mut Map<String, Value>) -> Result<(), ApiError> {
    if !o.contains_key("mac_address") {
        o.insert("mac_address".into(), Value::String(new_mac(s).to_string()));
    }
    let Some(net_id) = o
        .get("network_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Ok(());
    };
    let owner = o
        .get("device_owner")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // Addresses handed out earlier in this request.
    let mut taken = std::collections::HashSet::new();
    let mut alloc = |subnet: &Subnet, path: String| -> Result<Value, ApiError> {
        let ip = allocate_ip_except(s, subnet, &taken).ok_or_else(|| {
            ApiError::conflict(vec![Problem::new(
                path,
                format!("no free address left in subnet {}", subnet.display_name()),
            )])
        })?;
        taken.insert(ip);
        Ok(Value::String(ip.to_string()))
    };
    match o.get_mut("fixed_ips") {
        None => {
            // Neutron: one address from the first IPv4 subnet and one from the first IPv6 one.
            let mut ips = Vec::new();
            for v4 in [true, false] {
                if let Some(sub) = s
                    .subnets_of(&net_id)
                    .find(|x| x.cidr.addr().is_ipv4() == v4)
                {
                    let ip = alloc(sub, "port.fixed_ips".into())?;
                    ips.push(serde_json::json!({"subnet_id": sub.id, "ip_address": ip}));
                }
            }
            o.insert("fixed_ips".into(), Value::Array(ips));
        }
        Some(Value::Array(list)) => {
            for (i, f) in list.iter_mut().enumerate() {
                let Value::Object(f) = f else { continue };
                let path = format!("port.fixed_ips[{i}]");
                match (
                    f.get("subnet_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    f.get("ip_address")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                ) {
                    (Some(sid), None) => {
                        let sub = s.subnet(&sid).ok_or_else(|| {
                            ApiError::one(
                                &format!("{path}.subnet_id"),
                                format!("unknown subnet {sid}"),
                            )
                        })?;
                        let ip = alloc(sub, path)?;
                        f.insert("ip_address".into(), ip);
                    }
                    (None, Some(ip)) => {
                        let addr: IpAddr = ip.parse().map_err(|_| {
                            ApiError::one(
                                &format!("{path}.ip_address"),
                                format!("invalid IP address {ip:?}"),
                            )
                        })?;
                        let sub = s
                            .subnets_of(&net_id)
                            .find(|x| x.cidr.contains(&addr))
                            .ok_or_else(|| {
                                ApiError::one(
                                    &format!("{path}.ip_address"),
                                    format!("{addr} is in no subnet of network {net_id}"),
                                )
                            })?;
                        f.insert("subnet_id".into(), Value::String(sub.id.clone()));
                    }
                    _ => {}
                }
            }
        }
        Some(_) => {}
    }
    let compute = owner.is_empty() || owner.starts_with("compute:");
    if compute && !o.contains_key("security_groups") {
        if let Some(g) = s.security_groups.iter().find(|g| g.name == "default") {
            o.insert("security_groups".into(), serde_json::json!([g.id]));
        }
    }
    Ok(())
}

/// A floating IP without an address gets the first free one of its network's IPv4 subnets.
fn fip_defaults(s: &DesiredState, o: &mut Map<String, Value>) -> Result<(), ApiError> {
    if o.contains_key("floating_ip_address") {
        return Ok(());
    }
    let Some(net) = o.get("floating_network_id").and_then(Value::as_str) else {
        return Ok(());
    };
    let ip = s
        .subnets_of(net)
        .filter(|x| x.cidr.addr().is_ipv4())
        .find_map(|sub| allocate_ip(s, sub))
        .ok_or_else(|| {
            ApiError::conflict(vec![Problem::new(
                "floatingip.floating_network_id",
                format!("no free IPv4 address left on network {net}"),
            )])
        })?;
    o.insert("floating_ip_address".into(), Value::String(ip.to_string()));
    Ok(())
}

fn update_t<T: Resource>(
    s: &DesiredState,
    id: &str,
    patch: Map<String, Value>,
) -> Result<(DesiredState, usize), ApiError> {
    let i = find::<T>(s, id)?;
    let mut cur = match to_value(&T::all(s)[i]) {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    for (k, v) in patch {
        if k == "id" && v.as_str() != Some(id) {
            return Err(ApiError::one(
                &format!("{}.id", T::KIND.singular()),
                "the id of an object cannot change",
            ));
        }
        cur.insert(k, v);
    }
    let t: T = typed(Value::Object(cur), T::KIND.singular())?;
    let mut next = s.clone();
    T::all_mut(&mut next)[i] = t;
    Ok((next, i))
}

/// PUT `/v2.0/<collection>/<id>`: the fields given replace the object's (others are kept).
pub fn update(s: &DesiredState, kind: Kind, id: &str, body: Value) -> Result<Change, ApiError> {
    let patch = envelope(kind, body)?;
    let (mut next, idx) = match kind {
        Kind::Network => update_t::<Network>(s, id, patch)?,
        Kind::Subnet => update_t::<Subnet>(s, id, patch)?,
        Kind::Port => update_t::<Port>(s, id, patch)?,
        Kind::Router => update_t::<Router>(s, id, patch)?,
        Kind::FloatingIp => {
            let (mut n, i) = update_t::<FloatingIp>(s, id, patch.clone())?;
            // Neutron derives the fixed address and router from the port: a new port (or none)
            // drops what was derived from the old one unless the request sets it again.
            if patch.contains_key("port_id") {
                if !patch.contains_key("fixed_ip_address") {
                    n.floatingips[i].fixed_ip_address = None;
                }
                if !patch.contains_key("router_id") {
                    n.floatingips[i].router_id = None;
                }
            }
            (n, i)
        }
        Kind::SecurityGroup => update_t::<SecurityGroup>(s, id, patch)?,
        Kind::SecurityGroupRule => {
            // Neutron's rules are immutable but for their description.
            if patch.keys().any(|k| k != "description") {
                return Err(ApiError::one(
                    "security_group_rule",
                    "only description can change; delete the rule and create another",
                ));
            }
            update_t::<SecurityGroupRule>(s, id, patch)?
        }
    };
    if kind == Kind::Router {
        sync_gateway_port(&mut next, id)?;
    }
    finish(next, kind, idx)
}

/// DELETE `/v2.0/<collection>/<id>`. A security group goes with its rules, a router with its
/// gateway and SNAT ports (an interface still attached keeps it, as Neutron refuses that).
pub fn delete(s: &DesiredState, kind: Kind, id: &str) -> Result<Change, ApiError> {
    let mut next = s.clone();
    match kind {
        Kind::Network => {
            let i = find::<Network>(s, id)?;
            next.networks.remove(i);
        }
        Kind::Subnet => {
            let i = find::<Subnet>(s, id)?;
            next.subnets.remove(i);
        }
        Kind::Port => {
            let i = find::<Port>(s, id)?;
            next.ports.remove(i);
        }
        Kind::Router => {
            let i = find::<Router>(s, id)?;
            next.routers.remove(i);
            next.ports.retain(|p| {
                !(p.device_id == id
                    && (p.device_owner == OWNER_GATEWAY || p.device_owner == OWNER_SNAT))
            });
        }
        Kind::FloatingIp => {
            let i = find::<FloatingIp>(s, id)?;
            next.floatingips.remove(i);
        }
        Kind::SecurityGroup => {
            let i = find::<SecurityGroup>(s, id)?;
            next.security_groups.remove(i);
            next.security_group_rules
                .retain(|r| r.security_group_id != id);
        }
        Kind::SecurityGroupRule => {
            let i = find::<SecurityGroupRule>(s, id)?;
            next.security_group_rules.remove(i);
        }
    }
    Ok(Change {
        state: next,
        subject: None,
        response: Value::Null,
    })
}

/// A port the Neutron server makes for a router (interface, SNAT or gateway port): a new id,
/// no security groups, port security off.
fn router_port(
    network_id: &str,
    mac: MacAddr,
    fixed_ips: Vec<FixedIp>,
    host: Option<String>,
    owner: &str,
    router_id: &str,
) -> Port {
    Port {
        id: new_id(),
        name: String::new(),
        network_id: network_id.to_string(),
        mac_address: mac,
        fixed_ips,
        binding_host_id: host,
        security_groups: vec![],
        allowed_address_pairs: vec![],
        port_security_enabled: Some(false),
        device_owner: owner.to_string(),
        device_id: router_id.to_string(),
        admin_state_up: true,
    }
}

/// Keeps a router's `network:router_gateway` port in step with its `external_gateway_info`:
/// created (address from `external_fixed_ips`, else allocated and written back there), moved to
/// another network, or removed with the router's SNAT ports when the gateway is cleared. A new
/// gateway port is bound where the router's SNAT ports are, else where another router's gateway
/// is (the network node).
fn sync_gateway_port(s: &mut DesiredState, router_id: &str) -> Result<(), ApiError> {
    let Some(ri) = s.routers.iter().position(|r| r.id == router_id) else {
        return Ok(());
    };
    let gw = s.routers[ri].external_gateway_info.clone();
    let existing = s
        .ports
        .iter()
        .position(|p| p.device_id == router_id && p.device_owner == OWNER_GATEWAY);
    let Some(mut gw) = gw else {
        s.ports.retain(|p| {
            !(p.device_id == router_id
                && (p.device_owner == OWNER_GATEWAY || p.device_owner == OWNER_SNAT))
        });
        return Ok(());
    };
    if let Some(i) = existing {
        let p = &s.ports[i];
        let same_ips = gw.external_fixed_ips.is_empty() || gw.external_fixed_ips == p.fixed_ips;
        if p.network_id == gw.network_id && same_ips {
            if gw.external_fixed_ips.is_empty() {
                gw.external_fixed_ips = p.fixed_ips.clone();
                s.routers[ri].external_gateway_info = Some(gw);
            }
            return Ok(());
        }
    }
    let host = s
        .ports
        .iter()
        .find(|p| {
            p.device_id == router_id
                && (p.device_owner == OWNER_SNAT || p.device_owner == OWNER_GATEWAY)
        })
        .or_else(|| s.ports.iter().find(|p| p.device_owner == OWNER_GATEWAY))
        .and_then(|p| p.binding_host_id.clone());
    let mac = existing
        .map(|i| s.ports[i].mac_address)
        .unwrap_or_else(|| new_mac(s));
    if let Some(i) = existing {
        s.ports.remove(i);
    }
    if gw.external_fixed_ips.is_empty() {
        let ip = s
            .subnets_of(&gw.network_id)
            .filter(|x| x.cidr.addr().is_ipv4())
            .find_map(|sub| allocate_ip(s, sub).map(|ip| (sub.id.clone(), ip)));
        let Some((subnet_id, ip_address)) = ip else {
            return Err(ApiError::conflict(vec![Problem::new(
                "router.external_gateway_info.network_id",
                format!("no free IPv4 address left on network {}", gw.network_id),
            )]));
        };
        gw.external_fixed_ips = vec![FixedIp {
            subnet_id,
            ip_address,
        }];
    }
    s.ports.push(router_port(
        &gw.network_id,
        mac,
        gw.external_fixed_ips.clone(),
        host,
        OWNER_GATEWAY,
        router_id,
    ));
    s.routers[ri].external_gateway_info = Some(gw);
    Ok(())
}

/// `{"subnet_id": ...}` or `{"port_id": ...}` of the router interface actions.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InterfaceBody {
    #[serde(default)]
    subnet_id: Option<String>,
    #[serde(default)]
    port_id: Option<String>,
}

fn interface_body(body: Value) -> Result<InterfaceBody, ApiError> {
    let b: InterfaceBody = typed(body, "")?;
    match (&b.subnet_id, &b.port_id) {
        (Some(_), None) | (None, Some(_)) => Ok(b),
        _ => Err(ApiError::one(
            "",
            "give exactly one of subnet_id and port_id",
        )),
    }
}

/// PUT `/v2.0/routers/<id>/add_router_interface`: with `subnet_id`, a new interface port holding
/// the subnet's gateway address; with `port_id`, that port becomes the interface. A distributed
/// router with a gateway also gets a SNAT port on the subnet (IPv4), bound where its gateway is.
pub fn add_router_interface(
    s: &DesiredState,
    router_id: &str,
    body: Value,
) -> Result<Change, ApiError> {
    let ri = find::<Router>(s, router_id)?;
    let b = interface_body(body)?;
    let router = &s.routers[ri];
    let owner = if router.distributed {
        OWNER_ROUTER_INTERFACE_DISTRIBUTED
    } else {
        OWNER_ROUTER_INTERFACE
    };
    let mut next = s.clone();
    let (port_idx, subnet_id) = if let Some(sid) = &b.subnet_id {
        let sub = s
            .subnet(sid)
            .ok_or_else(|| ApiError::one("subnet_id", format!("unknown subnet {sid}")))?;
        let gw = sub.gateway_ip.ok_or_else(|| {
            ApiError::one(
                "subnet_id",
                format!(
                    "subnet {} has no gateway_ip for the router to take",
                    sub.display_name()
                ),
            )
        })?;
        next.ports.push(router_port(
            &sub.network_id,
            new_mac(s),
            vec![FixedIp {
                subnet_id: sid.clone(),
                ip_address: gw,
            }],
            None,
            owner,
            router_id,
        ));
        (next.ports.len() - 1, sid.clone())
    } else {
        let pid = b.port_id.as_deref().unwrap_or_default();
        let pi = find::<Port>(s, pid)
            .map_err(|_| ApiError::one("port_id", format!("unknown port {pid}")))?;
        let p = &mut next.ports[pi];
        if !p.device_owner.is_empty() || !p.device_id.is_empty() {
            return Err(ApiError::conflict(vec![Problem::new(
                "port_id",
                format!("port {pid} is in use by {} {}", p.device_owner, p.device_id),
            )]));
        }
        let Some(f) = p.fixed_ips.first() else {
            return Err(ApiError::one(
                "port_id",
                format!("port {pid} has no fixed IP"),
            ));
        };
        let sid = f.subnet_id.clone();
        p.device_owner = owner.into();
        p.device_id = router_id.into();
        p.binding_host_id = None;
        p.security_groups.clear();
        p.port_security_enabled = Some(false);
        (pi, sid)
    };
    // Centralized SNAT for the new subnet, where the router's gateway lives.
    let is_v4 = s
        .subnet(&subnet_id)
        .is_some_and(|x| x.cidr.addr().is_ipv4());
    let gw_host = s
        .ports
        .iter()
        .find(|p| p.device_id == router_id && p.device_owner == OWNER_GATEWAY)
        .and_then(|p| p.binding_host_id.clone());
    if router.distributed && is_v4 {
        if let (Some(host), Some(sub)) = (gw_host, s.subnet(&subnet_id)) {
            let ip = allocate_ip(&next, sub).ok_or_else(|| {
                ApiError::conflict(vec![Problem::new(
                    "subnet_id",
                    format!(
                        "no free address in subnet {} for the SNAT port",
                        sub.display_name()
                    ),
                )])
            })?;
            let mac = new_mac(&next);
            next.ports.push(router_port(
                &sub.network_id,
                mac,
                vec![FixedIp {
                    subnet_id: subnet_id.clone(),
                    ip_address: ip,
                }],
                Some(host),
                OWNER_SNAT,
                router_id,
            ));
        }
    }
    let p = &next.ports[port_idx];
    let response = serde_json::json!({
        "id": router_id,
        "subnet_id": subnet_id,
        "subnet_ids": [subnet_id],
        "port_id": p.id,
        "network_id": p.network_id,
    });
    Ok(Change {
        state: next,
        subject: Some((Kind::Port, port_idx)),
        response,
    })
}

/// PUT `/v2.0/routers/<id>/remove_router_interface`: removes the interface port on that subnet
/// (or that port) and the router's SNAT port on the same subnet.
pub fn remove_router_interface(
    s: &DesiredState,
    router_id: &str,
    body: Value,
) -> Result<Change, ApiError> {
    find::<Router>(s, router_id)?;
    let b = interface_body(body)?;
    let is_iface = |p: &Port| {
        p.device_id == router_id
            && (p.device_owner == OWNER_ROUTER_INTERFACE_DISTRIBUTED
                || p.device_owner == OWNER_ROUTER_INTERFACE)
    };
    let pi = match (&b.subnet_id, &b.port_id) {
        (Some(sid), _) => s
            .ports
            .iter()
            .position(|p| is_iface(p) && p.fixed_ips.iter().any(|f| &f.subnet_id == sid)),
        (_, Some(pid)) => s.ports.iter().position(|p| is_iface(p) && &p.id == pid),
        _ => None,
    }
    .ok_or_else(|| ApiError {
        status: 404,
        kind: "RouterInterfaceNotFound",
        problems: vec![Problem::new(
            if b.subnet_id.is_some() {
                "subnet_id"
            } else {
                "port_id"
            },
            format!("router {router_id} has no such interface"),
        )],
    })?;
    let port = s.ports[pi].clone();
    let subnets: Vec<&str> = port
        .fixed_ips
        .iter()
        .map(|f| f.subnet_id.as_str())
        .collect();
    let mut next = s.clone();
    next.ports.retain(|p| {
        p.id != port.id
            && !(p.device_id == router_id
                && p.device_owner == OWNER_SNAT
                && p.fixed_ips
                    .iter()
                    .any(|f| subnets.contains(&f.subnet_id.as_str())))
    });
    let response = serde_json::json!({
        "id": router_id,
        "subnet_id": subnets.first(),
        "subnet_ids": subnets,
        "port_id": port.id,
        "network_id": port.network_id,
    });
    Ok(Change {
        state: next,
        subject: None,
        response,
    })
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
