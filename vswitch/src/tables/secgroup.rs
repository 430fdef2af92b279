//! Security groups compiled into a per-port classifier.
//!
//! Design note. Neutron's rules are allows; a port's groups are their union. For each port,
//! direction (ingress / egress) and family the compiler builds a [`RuleSet`]:
//! - protocol-`any` rules go into one remote set, checked first;
//! - per protocol, the rules' port ranges (ICMP: `type << 8 | code` ranges) are cut into
//!   disjoint intervals at every range boundary; each interval points at the *remote set* of
//!   the rules covering it. A lookup is a binary search over the interval starts, so a port
//!   with 1,000 rules costs about ten compares, not a thousand.
//! - a remote set is "anyone", a prefix table (`Lpm`, a hash per prefix length) and the
//!   remote groups it accepts; identical sets are shared between intervals.
//! - remote groups are expanded once per compile into member tables (fixed IPs and allowed
//!   address pairs of every port in the group, any host): a hash set of addresses plus a
//!   prefix table for pairs that are prefixes. A 10,000-member group is one hash probe.
//!
//! The classifier is consulted for the first packet of a connection (and for each packet of
//! a stateless group); tracked packets never reach it. Each port's policy carries a
//! fingerprint of its rules and of its remote groups' members ([`PortFirewall::version`]): a
//! connection admitted under another version is re-checked against the current rules, and cut
//! if they no longer allow it.
use super::lpm::Lpm;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use vswitch_config::{Direction, EtherType, Protocol, SecurityGroupRule};

/// No rule covers this interval.
const NONE: u32 = u32::MAX;

/// The members of one remote group, per family.
#[derive(Debug, Clone, Default)]
pub struct GroupMembers {
    pub id: String,
    hosts4: FxHashSet<u32>,
    nets4: Lpm<u32>,
    hosts6: FxHashSet<u128>,
    nets6: Lpm<u128>,
    /// Fingerprint of the member list (feeds the ports' policy versions).
    fingerprint: u64,
}

impl GroupMembers {
    #[inline]
    fn contains(&self, v6: bool, a: u128) -> bool {
        if v6 {
            self.hosts6.contains(&a) || (!self.nets6.is_empty() && self.nets6.lookup(a).is_some())
        } else {
            let a = a as u32;
            self.hosts4.contains(&a) || (!self.nets4.is_empty() && self.nets4.lookup(a).is_some())
        }
    }
}

/// Who may be on the other end: anyone, some prefixes, some groups' members.
#[derive(Debug, Clone, Default)]
struct RemoteSet {
    any: bool,
    v4: Lpm<u32>,
    v6: Lpm<u128>,
    groups: Vec<u32>,
    /// The ids of the rules that built it (trace).
    rules: Vec<Arc<str>>,
}

impl RemoteSet {
    #[inline]
    fn matches(&self, groups: &[GroupMembers], v6: bool, remote: u128) -> bool {
        if self.any {
            return true;
        }
        let prefix = if v6 {
            !self.v6.is_empty() && self.v6.lookup(remote).is_some()
        } else {
            !self.v4.is_empty() && self.v4.lookup(remote as u32).is_some()
        };
        prefix
            || self.groups.iter().any(|&g| {
                groups
                    .get(g as usize)
                    .is_some_and(|m| m.contains(v6, remote))
            })
    }
}

/// One protocol's rules: disjoint port (or ICMP type/code) intervals.
#[derive(Debug, Clone, Default)]
struct Intervals {
    /// Interval start keys, ascending; interval `i` is `starts[i]..starts[i + 1]`.
    starts: Vec<u16>,
    /// Remote set of each interval, or [`NONE`].
    sets: Vec<u32>,
}

impl Intervals {
    #[inline]
    fn find(&self, key: u16) -> u32 {
        let i = self.starts.partition_point(|&s| s <= key);
        if i == 0 {
            return NONE;
        }
        self.sets.get(i - 1).copied().unwrap_or(NONE)
    }
}

/// The rules of one direction and family.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    any: u32,
    protos: Vec<(u8, Intervals)>,
    remotes: Vec<RemoteSet>,
}

impl RuleSet {
    /// The remote set that applies to (protocol, port key) and the remote address, if any
    /// rule allows it: the ids of the rules behind the match.
    #[inline]
    pub fn check(
        &self,
        groups: &[GroupMembers],
        v6: bool,
        proto: u8,
        port_key: u16,
        remote: u128,
    ) -> Option<&[Arc<str>]> {
        if let Some(r) = self.remotes.get(self.any as usize) {
            if r.matches(groups, v6, remote) {
                return Some(&r.rules);
            }
        }
        let (_, iv) = self.protos.iter().find(|(p, _)| *p == proto)?;
        let r = self.remotes.get(iv.find(port_key) as usize)?;
        r.matches(groups, v6, remote).then_some(&r.rules[..])
    }
}

/// A port's compiled security groups.
#[derive(Debug, Clone)]
pub struct PortFirewall {
    /// The conntrack zone of this port.
    pub zone: u16,
    /// Tracked (stateful groups) or matched packet by packet.
    pub stateful: bool,
    /// TCP tracked without window checks (`conntrack.liberal_ports`).
    pub liberal: bool,
    /// Fingerprint of everything the classifier was built from, the floating IPs included.
    pub version: u32,
    /// Epoch of the port's floating IPs: 0 without any, else a non-zero fingerprint of its
    /// (floating, fixed) pairs. A connection that lived through a floating IP is cut when it
    /// changes (Neutron: "disassociation removes ... its connections").
    pub nat: u16,
    /// `[egress v4, egress v6, ingress v4, ingress v6]`.
    sets: [RuleSet; 4],
    /// Every remote group's members (shared by all ports of one compile).
    pub groups: Arc<Vec<GroupMembers>>,
    /// The port's group ids (trace).
    pub group_ids: Vec<String>,
}

impl PortFirewall {
    /// The rule set for traffic leaving (egress) or entering (ingress) the instance.
    #[inline(always)]
    pub fn rules(&self, ingress: bool, v6: bool) -> &RuleSet {
        &self.sets[(ingress as usize) << 1 | v6 as usize]
    }

    /// Whether the rules allow a new connection: `remote` is the source address for ingress,
    /// the destination for egress.
    #[inline]
    pub fn allows(
        &self,
        ingress: bool,
        v6: bool,
        proto: u8,
        port_key: u16,
        remote: u128,
    ) -> Option<&[Arc<str>]> {
        self.rules(ingress, v6)
            .check(&self.groups, v6, proto, port_key, remote)
    }
}

/// Expands every group that some rule names as `remote_group_id`.
pub fn expand_groups(
    state: &vswitch_config::DesiredState,
) -> (Vec<GroupMembers>, FxHashMap<String, u32>) {
    let mut wanted: BTreeMap<&str, u32> = BTreeMap::new();
    for r in &state.security_group_rules {
        if let Some(g) = r.remote_group_id.as_deref() {
            let n = wanted.len() as u32;
            wanted.entry(g).or_insert(n);
        }
    }
    let mut out: Vec<GroupMembers> = vec![GroupMembers::default(); wanted.len()];
    let mut members: Vec<Vec<ipnet::IpNet>> = vec![Vec::new(); wanted.len()];
    for p in &state.ports {
        for g in &p.security_groups {
            let Some(&gi) = wanted.get(g.as_str()) else {
                continue;
            };
            let m = &mut members[gi as usize];
            m.extend(p.fixed_ips.iter().map(|f| ipnet::IpNet::from(f.ip_address)));
            m.extend(p.allowed_address_pairs.iter().map(|a| a.ip_address));
        }
    }
    for ((&id, &gi), list) in wanted.iter().zip(members.iter_mut()) {
        list.sort();
        list.dedup();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        list.hash(&mut h);
        let g = &mut out[gi as usize];
        g.id = id.to_string();
        g.fingerprint = h.finish();
        let mut n4 = Vec::new();
        let mut n6 = Vec::new();
        for n in list.iter() {
            match n {
                ipnet::IpNet::V4(n) if n.prefix_len() == 32 => {
                    g.hosts4.insert(u32::from(n.addr()));
                }
                ipnet::IpNet::V6(n) if n.prefix_len() == 128 => {
                    g.hosts6.insert(u128::from(n.addr()));
                }
                ipnet::IpNet::V4(n) => n4.push((u32::from(n.network()), n.prefix_len(), 0)),
                ipnet::IpNet::V6(n) => n6.push((u128::from(n.network()), n.prefix_len(), 0)),
            }
        }
        g.nets4 = Lpm::build(n4);
        g.nets6 = Lpm::build(n6);
    }
    let index = wanted
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    (out, index)
}

/// Where a rule's remote end may be.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Remote {
    Any,
    Prefix(ipnet::IpNet),
    Group(u32),
}

/// Compiles a port's groups. `rules` are the rules of every group of the port.
pub fn compile_port(
    zone: u16,
    stateful: bool,
    liberal: bool,
    group_ids: Vec<String>,
    rules: &[&SecurityGroupRule],
    groups: &Arc<Vec<GroupMembers>>,
    group_index: &FxHashMap<String, u32>,
) -> PortFirewall {
    let mut fp = std::collections::hash_map::DefaultHasher::new();
    (stateful, liberal).hash(&mut fp);
    // Rules in a canonical order, so the fingerprint does not depend on document order.
    let mut canon: Vec<(u8, u8, u16, u16, Remote, &str)> = Vec::new();
    for r in rules {
        let set = ((r.direction == Direction::Ingress) as u8) << 1
            | (r.ethertype == EtherType::Ipv6) as u8;
        let proto = r.protocol.unwrap_or(Protocol::Any);
        let (pnum, lo, hi) = match proto.number() {
            None => (0u8, 0u16, 0u16),
            Some(n) if proto.has_ports() => match (r.port_range_min, r.port_range_max) {
                (Some(a), Some(b)) => (n, a, b),
                _ => (n, 0, u16::MAX),
            },
            Some(n) if proto.is_icmp() => match (r.port_range_min, r.port_range_max) {
                (Some(t), Some(c)) => (n, t << 8 | c, t << 8 | c),
                (Some(t), None) => (n, t << 8, t << 8 | 0xff),
                _ => (n, 0, u16::MAX),
            },
            Some(n) => (n, 0, u16::MAX),
        };
        let any_proto = proto.number().is_none();
        let remote = if let Some(p) = r.remote_ip_prefix {
            Remote::Prefix(p)
        } else if let Some(g) = &r.remote_group_id {
            match group_index.get(g) {
                Some(&gi) => Remote::Group(gi),
                None => continue,
            }
        } else {
            Remote::Any
        };
        // Protocol-any rules are kept apart with protocol number 0 and a marker range.
        let (pnum, lo, hi) = if any_proto { ANY_PROTO } else { (pnum, lo, hi) };
        canon.push((set, pnum, lo, hi, remote, r.id.as_str()));
    }
    canon.sort();
    for (set, p, lo, hi, remote, _) in &canon {
        (set, p, lo, hi, remote).hash(&mut fp);
        if let Remote::Group(g) = remote {
            if let Some(m) = groups.get(*g as usize) {
                m.fingerprint.hash(&mut fp);
            }
        }
    }
    let mut sets: [RuleSet; 4] = Default::default();
    for (si, set) in sets.iter_mut().enumerate() {
        let mine: Vec<_> = canon.iter().filter(|c| c.0 as usize == si).collect();
        *set = build_set(&mine);
    }
    let v = fp.finish();
    PortFirewall {
        zone,
        stateful,
        liberal,
        version: (v ^ (v >> 32)) as u32,
        nat: 0,
        sets,
        groups: groups.clone(),
        group_ids,
    }
}

type Canon<'a> = (u8, u8, u16, u16, Remote, &'a str);

/// (protocol, low, high) of a protocol-`any` rule: an empty range no real rule has (protocol
/// number 0 with a range is HOPOPT's, always 0..=65535), so such rules sort apart.
const ANY_PROTO: (u8, u16, u16) = (0, 1, 0);

#[inline]
fn is_any(r: &Canon<'_>) -> bool {
    (r.1, r.2, r.3) == ANY_PROTO
}

fn build_set(rules: &[&Canon<'_>]) -> RuleSet {
    let mut out = RuleSet {
        any: NONE,
        protos: Vec::new(),
        remotes: Vec::new(),
    };
    // Interning: a sorted list of (remote, rule id) -> remote set index.
    let mut interned: FxHashMap<Vec<usize>, u32> = FxHashMap::default();
    let mut intern = |members: Vec<usize>, out: &mut RuleSet| -> u32 {
        if let Some(&i) = interned.get(&members) {
            return i;
        }
        let mut rs = RemoteSet::default();
        let mut p4 = Vec::new();
        let mut p6 = Vec::new();
        for &m in &members {
            let (_, _, _, _, remote, id) = rules[m];
            rs.rules.push(Arc::from(*id));
            match remote {
                Remote::Any => rs.any = true,
                Remote::Prefix(ipnet::IpNet::V4(n)) => {
                    p4.push((u32::from(n.network()), n.prefix_len(), 0))
                }
                Remote::Prefix(ipnet::IpNet::V6(n)) => {
                    p6.push((u128::from(n.network()), n.prefix_len(), 0))
                }
                Remote::Group(g) => {
                    if !rs.groups.contains(g) {
                        rs.groups.push(*g)
                    }
                }
            }
        }
        rs.v4 = Lpm::build(p4);
        rs.v6 = Lpm::build(p6);
        let i = out.remotes.len() as u32;
        out.remotes.push(rs);
        interned.insert(members, i);
        i
    };
    let any: Vec<usize> = (0..rules.len()).filter(|&i| is_any(rules[i])).collect();
    if !any.is_empty() {
        out.any = intern(any, &mut out);
    }
    let mut protos: Vec<u8> = rules.iter().filter(|r| !is_any(r)).map(|r| r.1).collect();
    protos.sort_unstable();
    protos.dedup();
    for p in protos {
        let mine: Vec<usize> = (0..rules.len())
            .filter(|&i| rules[i].1 == p && !is_any(rules[i]))
            .collect();
        // Boundaries: every range start and every end + 1.
        let mut cuts: Vec<u32> = vec![0];
        for &i in &mine {
            cuts.push(rules[i].2 as u32);
            cuts.push(rules[i].3 as u32 + 1);
        }
        cuts.sort_unstable();
        cuts.dedup();
        cuts.retain(|&c| c <= u16::MAX as u32);
        let mut iv = Intervals::default();
        // Sweep: rules sorted by start; an active list of the rules covering the interval.
        for (k, &start) in cuts.iter().enumerate() {
            let end = cuts.get(k + 1).copied().unwrap_or(u16::MAX as u32 + 1);
            let covering: Vec<usize> = mine
                .iter()
                .copied()
                .filter(|&i| (rules[i].2 as u32) <= start && (rules[i].3 as u32 + 1) >= end)
                .collect();
            let set = if covering.is_empty() {
                NONE
            } else {
                intern(covering, &mut out)
            };
            // Merge with the previous interval when it maps to the same set.
            if iv.sets.last() == Some(&set) {
                continue;
            }
            iv.starts.push(start as u16);
            iv.sets.push(set);
        }
        out.protos.push((p, iv));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_config::{Direction, EtherType, Protocol, SecurityGroupRule};

    fn rule(id: &str, dir: Direction, et: EtherType, proto: Option<Protocol>) -> SecurityGroupRule {
        SecurityGroupRule {
            id: id.into(),
            security_group_id: "g".into(),
            direction: dir,
            ethertype: et,
            protocol: proto,
            port_range_min: None,
            port_range_max: None,
            remote_ip_prefix: None,
            remote_group_id: None,
            description: String::new(),
        }
    }

    fn fw(rules: &[SecurityGroupRule]) -> PortFirewall {
        let refs: Vec<&SecurityGroupRule> = rules.iter().collect();
        compile_port(
            1,
            true,
            false,
            vec!["g".into()],
            &refs,
            &Arc::new(Vec::new()),
            &FxHashMap::default(),
        )
    }

    fn v4(s: &str) -> u128 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()) as u128
    }

    #[test]
    fn port_ranges_and_prefixes() {
        let mut a = rule(
            "ssh",
            Direction::Ingress,
            EtherType::Ipv4,
            Some(Protocol::Tcp),
        );
        a.port_range_min = Some(22);
        a.port_range_max = Some(22);
        a.remote_ip_prefix = Some("198.51.100.0/24".parse().unwrap());
        let mut b = rule(
            "web",
            Direction::Ingress,
            EtherType::Ipv4,
            Some(Protocol::Tcp),
        );
        b.port_range_min = Some(20);
        b.port_range_max = Some(80);
        b.remote_ip_prefix = Some("203.0.113.7/32".parse().unwrap());
        let f = fw(&[a, b]);
        let ck = |port, ip| f.allows(true, false, 6, port, v4(ip)).is_some();
        assert!(ck(22, "198.51.100.9"));
        assert!(ck(22, "203.0.113.7"));
        assert!(ck(80, "203.0.113.7"));
        assert!(!ck(81, "203.0.113.7"));
        assert!(!ck(23, "198.51.100.9"));
        assert!(!ck(19, "203.0.113.7"));
        // Other direction, family and protocol: nothing.
        assert!(f.allows(false, false, 6, 22, v4("198.51.100.9")).is_none());
        assert!(f.allows(true, false, 17, 22, v4("198.51.100.9")).is_none());
        assert!(f.allows(true, true, 6, 22, v4("198.51.100.9")).is_none());
        assert_eq!(
            f.allows(true, false, 6, 22, v4("203.0.113.7"))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn any_protocol_and_icmp_type_code() {
        let eg = rule("all-out", Direction::Egress, EtherType::Ipv4, None);
        let mut ping = rule(
            "ping",
            Direction::Ingress,
            EtherType::Ipv4,
            Some(Protocol::Icmp),
        );
        ping.port_range_min = Some(8);
        let mut unreach = rule(
            "frag",
            Direction::Ingress,
            EtherType::Ipv4,
            Some(Protocol::Icmp),
        );
        unreach.port_range_min = Some(3);
        unreach.port_range_max = Some(4);
        let f = fw(&[eg, ping, unreach]);
        assert!(f.allows(false, false, 6, 1, v4("203.0.113.1")).is_some());
        assert!(f.allows(false, false, 47, 0, v4("203.0.113.1")).is_some());
        assert!(f
            .allows(true, false, 1, 8 << 8, v4("203.0.113.1"))
            .is_some());
        assert!(f
            .allows(true, false, 1, 8 << 8 | 5, v4("203.0.113.1"))
            .is_some());
        assert!(f
            .allows(true, false, 1, 3 << 8 | 4, v4("203.0.113.1"))
            .is_some());
        assert!(f
            .allows(true, false, 1, 3 << 8 | 3, v4("203.0.113.1"))
            .is_none());
        assert!(f.allows(true, false, 1, 0, v4("203.0.113.1")).is_none());
    }

    #[test]
    fn thousand_rules_match_like_a_linear_scan() {
        // Random port ranges and prefixes; the interval classifier must agree with a scan.
        let mut rules = Vec::new();
        let mut x: u64 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..1000 {
            let mut r = rule(
                &format!("r{i}"),
                Direction::Ingress,
                EtherType::Ipv4,
                Some(Protocol::Udp),
            );
            let lo = (next() % 60000) as u16 + 1;
            let hi = lo + (next() % 50) as u16;
            r.port_range_min = Some(lo);
            r.port_range_max = Some(hi);
            let len = 16 + (next() % 17) as u8;
            let addr = (next() as u32) & (u32::MAX << (32 - len as u32));
            r.remote_ip_prefix = Some(
                format!("{}/{len}", std::net::Ipv4Addr::from(addr))
                    .parse()
                    .unwrap(),
            );
            rules.push(r);
        }
        let f = fw(&rules);
        for _ in 0..20000 {
            // Probe near rule boundaries and addresses inside rule prefixes half the time.
            let r = &rules[(next() % 1000) as usize];
            let port = r
                .port_range_min
                .unwrap()
                .wrapping_add((next() % 60) as u16)
                .wrapping_sub(5);
            let ip = match r.remote_ip_prefix.unwrap() {
                ipnet::IpNet::V4(n) if next() % 2 == 0 => {
                    u32::from(n.network()) | (next() as u32 & !u32::from(n.netmask()))
                }
                _ => next() as u32,
            };
            let scan = rules.iter().any(|r| {
                (r.port_range_min.unwrap()..=r.port_range_max.unwrap()).contains(&port)
                    && r.remote_ip_prefix
                        .unwrap()
                        .contains(&std::net::IpAddr::from(std::net::Ipv4Addr::from(ip)))
            });
            assert_eq!(
                f.allows(true, false, 17, port, ip as u128).is_some(),
                scan,
                "port {port} ip {ip:x}"
            );
        }
    }

    #[test]
    fn version_follows_rules_not_their_order() {
        let a = rule("a", Direction::Egress, EtherType::Ipv4, None);
        let b = rule(
            "b",
            Direction::Ingress,
            EtherType::Ipv6,
            Some(Protocol::Tcp),
        );
        let f1 = fw(&[a.clone(), b.clone()]);
        let f2 = fw(&[b.clone(), a.clone()]);
        assert_eq!(f1.version, f2.version);
        let f3 = fw(&[a]);
        assert_ne!(f1.version, f3.version);
    }
}
