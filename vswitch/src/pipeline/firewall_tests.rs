//! Security groups and connection tracking through the whole pipeline: frames built by
//! etherparse, decisions read from what each port would send and from the counters.
use super::conntrack::state;
use super::output::{self, TxBuffers};
use super::testutil::*;
use super::{firewall, Batch, CoreState, NoTrace, TraceLog};
use crate::counters::{DropReason as D, Event as E};
use crate::packet::TestBuf;
use crate::tables::Tables;

const IP1: [u8; 4] = [203, 0, 113, 11];
const IP2: [u8; 4] = [203, 0, 113, 12];
const IP3: [u8; 4] = [198, 51, 100, 13];

/// vm1 (p1) is in `default` (egress anything; ingress only from `default` members), vm2 (p2)
/// in `web` (egress anything; ingress TCP 80 and UDP 5000-5010 from anyone), vm3 (p3) in a
/// stateless group that allows egress UDP and ingress UDP 53 only.
fn sg_state(extra_rules: &str, p2_groups: &str) -> String {
    let mut s = STATE
        .replace(
            "    mac_address: \"fa:16:3e:00:00:01\"\n",
            "    mac_address: \"fa:16:3e:00:00:01\"\n    security_groups: [sg-default]\n",
        )
        .replace(
            "    mac_address: \"fa:16:3e:00:00:02\"\n",
            &format!(
                "    mac_address: \"fa:16:3e:00:00:02\"\n    security_groups: [{p2_groups}]\n"
            ),
        )
        .replace(
            "    mac_address: \"fa:16:3e:00:00:03\"\n",
            "    mac_address: \"fa:16:3e:00:00:03\"\n    security_groups: [sg-stateless]\n",
        );
    s.push_str(
        r#"
security_groups:
  - {id: sg-default, name: default}
  - {id: sg-web, name: web}
  - {id: sg-stateless, name: stateless, stateful: false}
security_group_rules:
  - {id: def-eg4, security_group_id: sg-default, direction: egress, ethertype: IPv4}
  - {id: def-eg6, security_group_id: sg-default, direction: egress, ethertype: IPv6}
  - {id: def-in4, security_group_id: sg-default, direction: ingress, ethertype: IPv4, remote_group_id: sg-default}
  - {id: def-in6, security_group_id: sg-default, direction: ingress, ethertype: IPv6, remote_group_id: sg-default}
  - {id: web-eg4, security_group_id: sg-web, direction: egress, ethertype: IPv4}
  - {id: web-http, security_group_id: sg-web, direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 80, port_range_max: 80}
  - {id: web-udp, security_group_id: sg-web, direction: ingress, ethertype: IPv4, protocol: udp, port_range_min: 5000, port_range_max: 5010}
  - {id: sl-eg, security_group_id: sg-stateless, direction: egress, ethertype: IPv4, protocol: udp}
  - {id: sl-dns, security_group_id: sg-stateless, direction: ingress, ethertype: IPv4, protocol: udp, port_range_min: 53, port_range_max: 53}
"#,
    );
    s.push_str(extra_rules);
    s
}

/// Also the fixture of `control::trace`'s security-group tests.
pub(crate) fn sg_tables(extra_rules: &str, p2_groups: &str) -> Tables {
    tables_from(HOST, &sg_state(extra_rules, p2_groups), &[])
}

/// A TCP segment built by etherparse.
#[allow(clippy::too_many_arguments)]
fn tcp4(
    src: &str,
    dst: &str,
    sip: [u8; 4],
    dip: [u8; 4],
    ports: (u16, u16),
    seq: u32,
    ack: Option<u32>,
    flags: &str,
    len: usize,
) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ethernet2(mac(src).0, mac(dst).0)
        .ipv4(sip, dip, 64)
        .tcp(ports.0, ports.1, seq, 64000);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => b,
        };
    }
    if let Some(a) = ack {
        b = b.ack(a);
    }
    let payload = vec![0x5au8; len];
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

/// A client's handshake and one data segment each way between (vm, MAC, IP) pairs.
struct Tcp {
    c: (u16, &'static str, [u8; 4]),
    s: (u16, &'static str, [u8; 4]),
    ports: (u16, u16),
}

impl Tcp {
    fn syn(&self) -> Vec<u8> {
        tcp4(
            self.c.1, self.s.1, self.c.2, self.s.2, self.ports, 100, None, "S", 0,
        )
    }
    fn syn_ack(&self) -> Vec<u8> {
        tcp4(
            self.s.1,
            self.c.1,
            self.s.2,
            self.c.2,
            (self.ports.1, self.ports.0),
            9000,
            Some(101),
            "S",
            0,
        )
    }
    fn ack(&self) -> Vec<u8> {
        tcp4(
            self.c.1,
            self.s.1,
            self.c.2,
            self.s.2,
            self.ports,
            101,
            Some(9001),
            "",
            0,
        )
    }
    fn data_from_client(&self) -> Vec<u8> {
        tcp4(
            self.c.1,
            self.s.1,
            self.c.2,
            self.s.2,
            self.ports,
            101,
            Some(9001),
            "P",
            100,
        )
    }
    fn data_from_server(&self) -> Vec<u8> {
        tcp4(
            self.s.1,
            self.c.1,
            self.s.2,
            self.c.2,
            (self.ports.1, self.ports.0),
            9001,
            Some(201),
            "P",
            100,
        )
    }
    /// A client segment once [`Tcp::run`] is done (the server's data acknowledged).
    fn client_after_run(&self, seq: u32, flags: &str, len: usize) -> Vec<u8> {
        tcp4(
            self.c.1,
            self.s.1,
            self.c.2,
            self.s.2,
            self.ports,
            seq,
            Some(9101),
            flags,
            len,
        )
    }
    /// Handshake plus data; asserts every segment reached the other side.
    fn run(&self, h: &mut Harness) {
        let (cv, sv) = (self.c.0, self.s.0);
        for (from, to, f) in [
            (cv, sv, self.syn()),
            (sv, cv, self.syn_ack()),
            (cv, sv, self.ack()),
            (cv, sv, self.data_from_client()),
            (sv, cv, self.data_from_server()),
        ] {
            let before = h.sink.on(to).len();
            h.rx(from, &[f]);
            assert_eq!(
                h.sink.on(to).len(),
                before + 1,
                "segment {from} -> {to}; drops {:?}",
                nonzero(h)
            );
        }
    }
}

fn nonzero(h: &Harness) -> Vec<(&'static str, u64)> {
    D::ALL
        .iter()
        .filter(|r| h.c.dropped(**r) > 0)
        .map(|r| (r.name(), h.c.dropped(*r)))
        .collect()
}

const WEB_80: Tcp = Tcp {
    c: (VM1, MAC1, IP1),
    s: (VM2, MAC2, IP2),
    ports: (40000, 80),
};

#[test]
fn default_group_allows_egress_and_replies_but_not_unsolicited_ingress() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    WEB_80.run(&mut h);
    // One connection, one entry in each instance's zone, both established.
    assert_eq!(h.s.fw.ct.len(), 2);
    assert_eq!(h.s.fw.ct.by_state[state::ESTABLISHED as usize], 2);
    assert_eq!(h.c.count(E::ConntrackNew), 2);
    // vm2 (not in default) opens a connection to vm1: its egress allows it, vm1's ingress not.
    let back = Tcp {
        c: (VM2, MAC2, IP2),
        s: (VM1, MAC1, IP1),
        ports: (41000, 22),
    };
    h.rx(VM2, &[back.syn()]);
    assert_eq!(h.c.dropped(D::FirewallIngressDenied), 1);
    assert_eq!(h.sink.on(VM1).len(), 2, "only the two replies reached vm1");
    // vm1 -> vm2 on a port web does not open.
    let ssh = Tcp {
        c: (VM1, MAC1, IP1),
        s: (VM2, MAC2, IP2),
        ports: (40001, 22),
    };
    h.rx(VM1, &[ssh.syn()]);
    assert_eq!(h.c.dropped(D::FirewallIngressDenied), 2);
    // An ACK for no connection is invalid, not a new connection.
    h.rx(
        VM1,
        &[tcp4(MAC1, MAC2, IP1, IP2, (40002, 80), 5, Some(6), "", 0)],
    );
    assert_eq!(h.c.dropped(D::ConntrackInvalid), 1);
    // Per-port counters: vm1 let through 3 segments out and 2 in of the web connection and
    // the SSH SYN out; it dropped vm2's SYN (ingress) and the stray ACK (egress).
    assert_eq!(h.s.fw.per_port[VM1 as usize], [3 + 2 + 1, 2]);
}

#[test]
fn out_of_window_segments_of_an_established_connection_are_dropped() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    WEB_80.run(&mut h);
    let far = WEB_80.client_after_run(101 + 50_000_000, "P", 10);
    h.rx(VM1, &[far]);
    assert_eq!(h.c.dropped(D::ConntrackInvalid), 1);
    // The connection itself is unharmed.
    let ok = WEB_80.client_after_run(201, "P", 10);
    let n = h.sink.on(VM2).len();
    h.rx(VM1, &[ok]);
    assert_eq!(h.sink.on(VM2).len(), n + 1);
    // FIN/ACK exchange: both zones move to TIME_WAIT / CLOSE_WAIT-family states.
    h.rx(VM1, &[WEB_80.client_after_run(211, "F", 0)]);
    assert_eq!(h.s.fw.ct.by_state[state::FIN_WAIT as usize], 2);
    // A SYN on a closed connection reopens it (judged by the rules again).
    let reset = tcp4(MAC2, MAC1, IP2, IP1, (80, 40000), 9101, Some(212), "R", 0);
    h.rx(VM2, &[reset]);
    assert_eq!(h.s.fw.ct.by_state[state::CLOSE as usize], 2);
    h.rx(VM1, &[WEB_80.syn()]);
    assert_eq!(h.s.fw.ct.by_state[state::SYN_SENT as usize], 2);
}

/// ICMP port unreachable from vm2 for vm1's UDP datagram.
fn port_unreachable(quoted: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(mac(MAC2).0, mac(MAC1).0)
        .ipv4(IP2, IP1, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ));
    let mut out = Vec::new();
    b.write(&mut out, &quoted[14..]).unwrap();
    out
}

/// IPv6 path MTU discovery through security groups: a router's Packet Too Big about vm1's
/// TCP segment (to a host beyond the provider network) reaches vm1, related to the connection,
/// though vm1's ingress rules allow nothing from that router; one about a connection vm1
/// never opened is invalid.
#[test]
fn an_icmpv6_packet_too_big_about_an_allowed_connection_reaches_the_instance() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    let (vm1, far, router): ([u8; 16], [u8; 16], [u8; 16]) = (
        "fd00:203::11"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
        "2001:db8:99::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
        "fd00:203::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    let router_mac = "02:00:00:00:0a:01";
    let seg = |sport: u16| {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(MAC1).0, mac(router_mac).0)
            .ipv6(vm1, far, 64)
            .tcp(sport, 443, 1000, 64240)
            .syn()
            .write(&mut f, &[])
            .unwrap();
        f
    };
    let too_big = |quoted: &[u8]| {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac(router_mac).0, mac(MAC1).0)
            .single_vlan(etherparse::VlanId::try_new(101).unwrap())
            .ipv6(router, vm1, 64)
            .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut f, &quoted[14..])
            .unwrap();
        f
    };
    let syn = seg(45000);
    h.rx(VM1, std::slice::from_ref(&syn));
    assert_eq!(h.sink.on(UPLINK).len(), 1, "drops {:?}", nonzero(&h));
    h.rx(UPLINK, &[too_big(&syn)]);
    assert_eq!(h.sink.on(VM1).len(), 1, "drops {:?}", nonzero(&h));
    let got = &h.sink.on(VM1)[0];
    assert_eq!(
        (got[12..14].to_vec(), got[14 + 40]),
        (vec![0x86, 0xdd], 2),
        "an untagged PTB"
    );
    assert_eq!(h.c.count(E::ConntrackRelated), 1);
    h.rx(UPLINK, &[too_big(&seg(45001))]);
    assert_eq!(h.sink.on(VM1).len(), 1);
    assert_eq!(h.c.dropped(D::ConntrackInvalid), 1);
}

#[test]
fn icmp_errors_about_tracked_connections_are_related_others_invalid() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    let dgram = udp4(MAC1, MAC2, IP1, IP2, 33000, 5001);
    h.rx(VM1, std::slice::from_ref(&dgram));
    assert_eq!(h.sink.on(VM2).len(), 1);
    // vm1's ingress rules allow nothing from vm2, but the error is about vm1's own datagram.
    h.rx(VM2, &[port_unreachable(&dgram)]);
    assert_eq!(h.sink.on(VM1).len(), 1, "drops {:?}", nonzero(&h));
    assert_eq!(
        h.c.count(E::ConntrackRelated),
        2,
        "related in vm2's zone and in vm1's"
    );
    // An error quoting a datagram nobody sent is dropped.
    let other = udp4(MAC1, MAC2, IP1, IP2, 33001, 5001);
    h.rx(VM2, &[port_unreachable(&other)]);
    assert_eq!(h.sink.on(VM1).len(), 1);
    assert_eq!(h.c.dropped(D::ConntrackInvalid), 1);
    // A UDP reply makes the flow replied (established) in both zones.
    h.rx(VM2, &[udp4(MAC2, MAC1, IP2, IP1, 5001, 33000)]);
    assert_eq!(h.sink.on(VM1).len(), 2);
    assert_eq!(h.s.fw.ct.by_state[state::REPLIED as usize], 2);
}

const SSH_RULE: &str = "  - {id: def-ssh, security_group_id: sg-default, direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 22, port_range_max: 22, remote_ip_prefix: 203.0.113.12/32}\n";

#[test]
fn removing_a_rule_cuts_the_connections_it_allowed() {
    let ssh = Tcp {
        c: (VM2, MAC2, IP2),
        s: (VM1, MAC1, IP1),
        ports: (41000, 22),
    };
    let mut h = Harness::with(sg_tables(SSH_RULE, "sg-web"));
    ssh.run(&mut h);
    WEB_80.run(&mut h);
    // The rule goes (a new generation of tables): the next segment is dropped and the
    // connection removed; the other connection is untouched.
    h.t = sg_tables("", "sg-web");
    let n = h.sink.on(VM1).len();
    h.rx(VM2, &[ssh.data_from_client()]);
    assert_eq!(h.sink.on(VM1).len(), n);
    assert_eq!(h.c.dropped(D::FirewallRevoked), 1);
    assert_eq!(h.s.fw.ct.stats.cut, 1);
    let m = h.sink.on(VM2).len();
    h.rx(VM1, &[WEB_80.client_after_run(201, "P", 10)]);
    assert_eq!(h.sink.on(VM2).len(), m + 1, "drops {:?}", nonzero(&h));
    // The same through the sweep, with no packet: vm1's entry of a re-allowed connection is
    // cut once the rule is gone again.
    h.t = sg_tables(SSH_RULE, "sg-web");
    let ssh2 = Tcp {
        ports: (41001, 22),
        ..ssh
    };
    ssh2.run(&mut h);
    let cut = h.s.fw.ct.stats.cut;
    h.t = sg_tables("", "sg-web");
    firewall::sweep(&h.t, &mut h.s.fw, 4096);
    assert_eq!(
        h.s.fw.ct.stats.cut,
        cut + 1,
        "vm1's zone entry; vm2's egress still allows it"
    );
}

#[test]
fn remote_group_rules_follow_membership() {
    let ssh = Tcp {
        c: (VM2, MAC2, IP2),
        s: (VM1, MAC1, IP1),
        ports: (41000, 22),
    };
    // vm2 joins default: default's ingress-from-default now admits it.
    let mut h = Harness::with(sg_tables("", "sg-web, sg-default"));
    ssh.run(&mut h);
    // vm2 leaves: vm1's policy changes (its remote group shrank) and the connection is cut.
    h.t = sg_tables("", "sg-web");
    h.rx(VM2, &[ssh.data_from_client()]);
    assert_eq!(h.c.dropped(D::FirewallRevoked), 1);
    h.rx(
        VM2,
        &[Tcp {
            ports: (41002, 22),
            ..ssh
        }
        .syn()],
    );
    assert_eq!(h.c.dropped(D::FirewallIngressDenied), 1);
}

#[test]
fn stateless_groups_match_every_packet_and_track_nothing() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    // vm3 is on another network: talk to the uplink side. Egress UDP passes untracked.
    h.rx(
        VM3,
        &[udp4(
            MAC3,
            "fa:16:3e:00:00:77",
            IP3,
            [198, 51, 100, 1],
            5353,
            53,
        )],
    );
    assert_eq!(h.sink.on(UPLINK).len(), 1, "drops {:?}", nonzero(&h));
    // A "reply" to a port other than 53 is not allowed: nothing remembers the request.
    let reply = udp4("fa:16:3e:00:00:77", MAC3, [198, 51, 100, 1], IP3, 53, 5353);
    h.rx(UPLINK, &[reply]);
    assert_eq!(h.c.dropped(D::FirewallIngressDenied), 1);
    h.rx(
        UPLINK,
        &[udp4(
            "fa:16:3e:00:00:77",
            MAC3,
            [198, 51, 100, 1],
            IP3,
            999,
            53,
        )],
    );
    assert_eq!(h.sink.on(VM3).len(), 1);
    // TCP egress is not in the group.
    h.rx(
        VM3,
        &[tcp4(
            MAC3,
            "fa:16:3e:00:00:77",
            IP3,
            [198, 51, 100, 1],
            (1, 2),
            1,
            None,
            "S",
            0,
        )],
    );
    assert_eq!(h.c.dropped(D::FirewallEgressDenied), 1);
    assert!(h.s.fw.ct.is_empty());
}

#[test]
fn arp_nd_and_dhcp_pass_without_rules() {
    // vm1's default group allows no ingress from vm2, yet ARP between them works.
    let mut h = Harness::with(sg_tables("", "sg-web"));
    h.rx(VM2, &[arp(MAC2, MAC2, IP2, IP1)]);
    assert!(!h.sink.on(VM1).is_empty(), "drops {:?}", nonzero(&h));
    assert_eq!(h.c.dropped(D::FirewallIngressDenied), 0);
}

#[test]
fn a_full_table_refuses_new_connections_and_established_ones_keep_flowing() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    // Room for the two zone entries of exactly two connections, no eviction.
    h.s.fw.ct = super::conntrack::Conntrack::new(4, Default::default(), false);
    WEB_80.run(&mut h);
    let second = Tcp {
        ports: (40001, 80),
        ..WEB_80
    };
    second.run(&mut h);
    for p in 0..50 {
        h.rx(
            VM1,
            &[Tcp {
                ports: (50000 + p, 80),
                ..WEB_80
            }
            .syn()],
        );
    }
    assert_eq!(h.c.dropped(D::ConntrackFull), 50);
    assert_eq!(h.s.fw.ct.len(), 4);
    let n = h.sink.on(VM2).len();
    h.rx(VM1, &[WEB_80.client_after_run(201, "P", 10)]);
    assert_eq!(h.sink.on(VM2).len(), n + 1);
    // With eviction, a flood of SYNs churns through the unestablished slots only.
    let mut h = Harness::with(sg_tables("", "sg-web"));
    h.s.fw.ct = super::conntrack::Conntrack::new(6, Default::default(), true);
    WEB_80.run(&mut h);
    for p in 0..50 {
        h.rx(
            VM1,
            &[Tcp {
                ports: (50000 + p, 80),
                ..WEB_80
            }
            .syn()],
        );
    }
    assert_eq!(h.s.fw.ct.len(), 6);
    assert!(h.s.fw.ct.stats.evicted >= 90);
    let n = h.sink.on(VM2).len();
    h.rx(VM1, &[WEB_80.client_after_run(201, "P", 10)]);
    assert_eq!(
        h.sink.on(VM2).len(),
        n + 1,
        "the established connection survived the flood"
    );
}

#[test]
fn trace_names_the_rule_and_the_state() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    let mut tr = TraceLog::default();
    h.rx_traced(VM1, &[WEB_80.syn()], &mut tr);
    let lines = tr.for_packet(0).join("\n");
    assert!(lines.contains("egress: new zone 1 tcp 203.0.113.11:40000 -> 203.0.113.12:80 (tcp_syn_sent): allowed by rule def-eg4"), "{lines}");
    assert!(
        lines.contains("port vm2 ingress: new zone 2 tcp")
            && lines.contains("allowed by rule web-http"),
        "{lines}"
    );
}

// --- two cores ------------------------------------------------------------------------------

/// Two workers' state over the same tables, as the runtime runs them, with the hand-off rings
/// played by the sinks' `handoffs`.
pub(crate) struct TwoCores {
    pub t: Tables,
    pub s: [CoreState; 2],
    pub sink: Sink,
    pub txb: TxBuffers<TestBuf>,
    pub c: crate::counters::BatchCounters,
}

impl TwoCores {
    pub fn new(t: Tables) -> Self {
        let mk = |core: u16| {
            let h = Harness::with(t.clone());
            let mut s = h.s;
            s.fw = firewall::FwCore::new(
                super::conntrack::Conntrack::new(64, Default::default(), true),
                core,
                2,
            );
            s.fw.per_port = vec![[0; 2]; t.ports.len()];
            s
        };
        let n = t.ports.len();
        // As the runtime's workers: the underlay and router neighbour tables are shared.
        let (a, mut b) = (mk(0), mk(1));
        b.neigh = a.neigh.clone();
        b.l3neigh = a.l3neigh.clone();
        TwoCores {
            s: [a, b],
            t,
            sink: Sink::default(),
            txb: TxBuffers::new(n),
            c: Default::default(),
        }
    }

    /// Receives `frame` on `core`, then lets the owner core finish whatever was handed over.
    pub fn rx(&mut self, core: usize, port: u16, frame: Vec<u8>) -> usize {
        let mut held = Default::default();
        let mut b: Batch<TestBuf> = Batch::default();
        b.pkts[0] = Some(TestBuf::new(&frame));
        b.start(port, 1);
        super::process(
            &mut b,
            &self.t,
            &mut self.s[core],
            &mut held,
            &mut self.c,
            &mut NoTrace,
        );
        output::run(
            &mut b,
            &self.t,
            &mut self.s[core],
            &mut self.txb,
            &mut self.sink,
            &mut self.c,
            &mut NoTrace,
        );
        let mut handed = 0;
        while let Some((to, h)) = self.sink.handoffs.pop() {
            handed += 1;
            assert_eq!(h.generation, self.t.generation);
            let mut b: Batch<TestBuf> = Batch::default();
            b.pkts[0] = Some(h.p);
            b.start(h.in_port, 1);
            let mut m = h.meta;
            m.next = super::resumed_next(m.next);
            b.meta[0] = m;
            let s = &mut self.s[to as usize];
            super::resume(
                &mut b,
                h.stage,
                &self.t,
                s,
                &mut held,
                &mut self.c,
                &mut NoTrace,
            );
            output::run(
                &mut b,
                &self.t,
                s,
                &mut self.txb,
                &mut self.sink,
                &mut self.c,
                &mut NoTrace,
            );
        }
        self.txb.flush(&mut self.sink, &mut self.c);
        handed
    }
}

/// A source port (vm1 -> vm2, protocol `proto`, to `dport`) whose connection core 1 of two
/// owns.
fn sport_owned_by_core1(proto: u8, dport: u16) -> u16 {
    let key = |sport| {
        let (a, b) = (u32::from_be_bytes(IP1), u32::from_be_bytes(IP2));
        super::conntrack::Key::v4(0, proto, a, b, sport, dport)
    };
    (40000..41000)
        .find(|&p| key(p).owner_hash() % 2 == 1)
        .expect("some port in 1000 hashes to core 1")
}

#[test]
fn both_directions_meet_on_the_owner_core_whichever_core_receives_them() {
    let mut x = TwoCores::new(sg_tables("", "sg-web"));
    // A flow owned by core 1.
    let sport = sport_owned_by_core1(6, 80);
    let conn = Tcp {
        ports: (sport, 80),
        ..WEB_80
    };
    // The SYN arrives on core 0 (which polls vm1): handed to core 1, delivered from there.
    assert_eq!(x.rx(0, VM1, conn.syn()), 1);
    assert_eq!(x.sink.on(VM2).len(), 1);
    // The SYN-ACK arrives on core 0 as well: core 1 finds the connection in its table.
    assert_eq!(x.rx(0, VM2, conn.syn_ack()), 1);
    assert_eq!(x.sink.on(VM1).len(), 1);
    // The ACK arrives on core 1 itself: no hand-off, the handshake completes there.
    assert_eq!(x.rx(1, VM1, conn.ack()), 0);
    assert_eq!(x.sink.on(VM2).len(), 2);
    assert!(x.s[0].fw.ct.is_empty(), "core 0 never tracked it");
    assert_eq!(x.s[1].fw.ct.by_state[state::ESTABLISHED as usize], 2);
    assert_eq!(x.c.count(E::ConntrackHandoff), 2);
    assert!(D::ALL.iter().all(|r| x.c.dropped(*r) == 0));
}

// --- fragments ------------------------------------------------------------------------------

/// Splits an IPv4 frame's payload at byte `at` (a multiple of 8) into two fragments.
fn fragment4(frame: &[u8], at: usize, id: u16) -> (Vec<u8>, Vec<u8>) {
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    let payload = &frame[14 + ihl..];
    assert!(at.is_multiple_of(8) && at < payload.len());
    let mk = |part: &[u8], offset: usize, more: bool| {
        let mut f = frame[..14 + ihl].to_vec();
        f.extend_from_slice(part);
        let tl = (ihl + part.len()) as u16;
        f[16..18].copy_from_slice(&tl.to_be_bytes());
        f[18..20].copy_from_slice(&id.to_be_bytes());
        let flags = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        f[20..22].copy_from_slice(&flags.to_be_bytes());
        f[24..26].copy_from_slice(&[0, 0]);
        let sum = crate::packet::checksum::checksum(&f[14..14 + ihl]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
        f
    };
    (mk(&payload[..at], 0, true), mk(&payload[at..], at, false))
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    let big = udp4(MAC1, MAC2, IP1, IP2, 33000, 5001);
    let (first, rest) = fragment4(&big, 16, 77);
    h.rx(VM1, &[first, rest]);
    assert_eq!(h.sink.on(VM2).len(), 2, "drops {:?}", nonzero(&h));
    // A later fragment whose first fragment never came is dropped.
    let (_, orphan) = fragment4(&big, 16, 78);
    h.rx(VM1, &[orphan]);
    assert_eq!(h.c.dropped(D::ConntrackFragment), 1);
    // The fragments of a datagram the rules refuse go nowhere either.
    let denied = udp4(MAC1, MAC2, IP1, IP2, 33000, 6000);
    let (first, rest) = fragment4(&denied, 16, 79);
    h.rx(VM1, &[first, rest]);
    assert_eq!(h.c.dropped(D::FirewallIngressDenied), 1);
    assert_eq!(h.c.dropped(D::ConntrackFragment), 2);
    assert_eq!(h.sink.on(VM2).len(), 2);
    // RFC 1858: a TCP fragment at offset 8 is refused outright.
    let seg = tcp4(MAC1, MAC2, IP1, IP2, WEB_80.ports, 100, None, "S", 40);
    let (_, tiny) = fragment4(&seg, 8, 80);
    h.rx(VM1, &[tiny]);
    assert_eq!(h.c.dropped(D::ConntrackInvalid), 1);
}

#[test]
fn fragments_follow_their_first_fragment_to_its_owner_core() {
    let mut x = TwoCores::new(sg_tables("", "sg-web"));
    let sport = sport_owned_by_core1(17, 5001);
    let big = udp4(MAC1, MAC2, IP1, IP2, sport, 5001);
    let (first, rest) = fragment4(&big, 16, 91);
    assert_eq!(x.rx(0, VM1, first), 1);
    assert_eq!(
        x.rx(0, VM1, rest),
        1,
        "the later fragment follows to core 1"
    );
    assert_eq!(x.sink.on(VM2).len(), 2);
    assert!(D::ALL.iter().all(|r| x.c.dropped(*r) == 0));
}

#[test]
fn neighbor_discovery_passes_the_ways_neutron_allows() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    // vm1's NS and MLD report reach vm2, whose group has no IPv6 rule at all.
    h.rx(
        VM1,
        &[
            icmp6(MAC1, "fd00:203::11", 135),
            icmp6(MAC1, "fd00:203::11", 143),
        ],
    );
    assert_eq!(h.sink.on(VM2).len(), 2, "drops {:?}", nonzero(&h));
    // A router solicitation may leave vm1 (the provider uplink gets it) but is not
    // something vm2 accepts without a rule.
    let up = h.sink.on(UPLINK).len();
    h.rx(VM1, &[icmp6(MAC1, "fd00:203::11", 133)]);
    assert_eq!(h.sink.on(UPLINK).len(), up + 1);
    assert_eq!(h.sink.on(VM2).len(), 2);
    // A redirect from an instance needs a rule: vm1's default group allows all egress IPv6,
    // vm2's web group allows no IPv6 out, so vm2 (from its link-local address) may send a
    // neighbor solicitation but not a redirect.
    h.rx(VM1, &[icmp6(MAC1, "fd00:203::11", 137)]);
    assert_eq!(h.sink.on(UPLINK).len(), up + 2);
    let ll2 = "fe80::f816:3eff:fe00:2";
    h.rx(VM2, &[icmp6(MAC2, ll2, 135)]);
    assert_eq!(h.sink.on(UPLINK).len(), up + 3, "drops {:?}", nonzero(&h));
    h.rx(VM2, &[icmp6(MAC2, ll2, 137)]);
    assert_eq!(h.sink.on(UPLINK).len(), up + 3);
    assert_eq!(h.c.dropped(D::FirewallEgressDenied), 1);
}

#[test]
fn the_peer_link_between_zones_is_only_a_hint() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    WEB_80.run(&mut h);
    // Both zones' entries point at each other.
    let zone1: Vec<_> =
        h.s.fw
            .ct
            .iter()
            .filter(|(_, k, _)| k.zone() == 1)
            .map(|(i, _, e)| (i, e.peer))
            .collect();
    let zone2: Vec<_> =
        h.s.fw
            .ct
            .iter()
            .filter(|(_, k, _)| k.zone() == 2)
            .map(|(i, _, e)| (i, e.peer))
            .collect();
    assert_eq!((zone1.len(), zone2.len()), (1, 1));
    assert_eq!((zone1[0].1, zone2[0].1), (zone2[0].0, zone1[0].0));
    // vm2's zone loses the connection (flushed); its slot is taken by another connection.
    assert_eq!(h.s.fw.ct.flush(Some(2)), 1);
    let other = Tcp {
        ports: (40009, 80),
        ..WEB_80
    };
    h.rx(VM1, &[other.syn()]);
    // vm1's entry still points at the reused slot: the key check refuses it, and vm2's
    // zone, which no longer knows the connection, drops the segment as invalid.
    let n = h.sink.on(VM2).len();
    h.rx(VM1, &[WEB_80.client_after_run(201, "P", 10)]);
    assert_eq!(h.sink.on(VM2).len(), n);
    assert_eq!(h.c.dropped(D::ConntrackInvalid), 1);
}

/// The entry of the one connection in `zone`.
pub(super) fn entry_in_zone(h: &Harness, zone: u16) -> (u32, super::conntrack::Entry) {
    let found: Vec<_> =
        h.s.fw
            .ct
            .iter()
            .filter(|(_, k, _)| k.zone() == zone)
            .map(|(i, _, e)| (i, *e))
            .collect();
    assert_eq!(found.len(), 1, "one entry in zone {zone}");
    found[0]
}

#[test]
fn the_receivers_zone_takes_the_senders_result_only_from_the_same_state() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    WEB_80.run(&mut h);
    // In step: each segment moves both zones' entries the same way.
    for seq in [201, 211, 221] {
        let n = h.sink.on(VM2).len();
        h.rx(VM1, &[WEB_80.client_after_run(seq, "P", 10)]);
        assert_eq!(h.sink.on(VM2).len(), n + 1);
        let ((_, a), (_, b)) = (entry_in_zone(&h, 1), entry_in_zone(&h, 2));
        assert_eq!((a.tcp, a.state, a.expires), (b.tcp, b.state, b.expires));
        assert_eq!(a.tcp[0].end, seq + 10);
    }
    // vm2's zone falls behind: its entry has not seen the last 30 bytes, so the next segment
    // is beyond what its window tracking allows, while vm1's zone accepts it. The ingress
    // check must judge it in full (and drop it), not take vm1's result.
    let (idx, mut b) = entry_in_zone(&h, 2);
    b.tcp[0].end -= 30;
    b.tcp[0].maxend = b.tcp[0].end;
    b.tcp[1].maxend = b.tcp[0].end;
    *h.s.fw.ct.entry_mut(idx).unwrap() = b;
    let n = h.sink.on(VM2).len();
    h.rx(VM1, &[WEB_80.client_after_run(231, "P", 1000)]);
    assert_eq!(h.sink.on(VM2).len(), n, "dropped by vm2's zone");
    assert_eq!(h.c.dropped(D::ConntrackInvalid), 1);
    assert_eq!(h.s.fw.per_port[VM1 as usize][1], 0, "vm1's zone let it out");
    assert_eq!(entry_in_zone(&h, 1).1.tcp[0].end, 231 + 1000);
}

#[test]
fn a_liberal_senders_zone_never_decides_for_a_strict_receiver() {
    let host = format!("{HOST}\n[conntrack]\nliberal_ports = [\"vm1\"]\n");
    let mut h = Harness::with(tables_from(&host, &sg_state("", "sg-web"), &[]));
    WEB_80.run(&mut h);
    assert!(port_fw_liberal(&h, VM1) && !port_fw_liberal(&h, VM2));
    // Far beyond any window: vm1's zone (liberal) lets it out, vm2's (strict) drops it.
    let (n, vm1) = (h.sink.on(VM2).len(), h.s.fw.per_port[VM1 as usize]);
    h.rx(VM1, &[WEB_80.client_after_run(201 + 50_000_000, "P", 10)]);
    assert_eq!(h.sink.on(VM2).len(), n);
    assert_eq!(h.c.dropped(D::ConntrackInvalid), 1);
    assert_eq!(
        h.s.fw.per_port[VM1 as usize],
        [vm1[0] + 1, 0],
        "vm1's zone let it out"
    );
}

fn port_fw_liberal(h: &Harness, port: u16) -> bool {
    h.t.ports[port as usize]
        .firewall
        .as_ref()
        .is_some_and(|f| f.liberal)
}

/// The receiver's zone takes from the sender's what the same packet left there, not what
/// the sender's entry holds when the receiver is judged: a later segment of the batch that
/// never reaches the receiver (here a copy flooded for an unknown MAC, which ingress rules
/// alone judge) has moved that on since, and the receiver's zone must not count it.
#[test]
fn the_receivers_zone_tracks_only_the_segments_that_reach_it() {
    let mut h = Harness::with(sg_tables("", "sg-web"));
    h.s.flows.enabled = false;
    WEB_80.run(&mut h);
    let to_vm2 = WEB_80.client_after_run(201, "P", 10);
    let mut flooded = WEB_80.client_after_run(211, "P", 10);
    flooded[0..6].copy_from_slice(&mac("fa:16:3e:99:99:99").0);
    let n = h.sink.on(VM2).len();
    h.rx(VM1, &[to_vm2, flooded]);
    assert_eq!(h.sink.on(VM2).len(), n + 2, "both delivered");
    assert_eq!(h.c.count(E::Flooded), 1);
    let ((_, a), (_, b)) = (entry_in_zone(&h, 1), entry_in_zone(&h, 2));
    assert_eq!(a.tcp[0].end, 221, "vm1's zone saw both segments go out");
    assert_eq!(b.tcp[0].end, 211, "vm2's zone judged the first one only");
}

/// Differential fuzz of the firewall under security-group changes: connections between two
/// instances of this host (vm2's clients to vm1's port 5001), each packet judged in both
/// zones, while the tables swap between policies that keep them (a new version of the same
/// allowance, an unrelated rule, a wider prefix, a remote group vm2 joins), cut them (the rule
/// gone, TCP's or UDP's alone) or make vm2's port stateless, with sweeps of the connection
/// table between bursts. The twin with the flow cache, the one without and the traced one
/// (no flow cache, no firewall fast path, no mirror) send, drop, count and track the same.
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const ALLOW_TCP: &str = "  - {id: def-5001t, security_group_id: sg-default, direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 5001, port_range_max: 5001, remote_ip_prefix: 203.0.113.12/32}\n";
    const ALLOW_UDP: &str = "  - {id: def-5001u, security_group_id: sg-default, direction: ingress, ethertype: IPv4, protocol: udp, port_range_min: 5001, port_range_max: 5001, remote_ip_prefix: 203.0.113.12/32}\n";
    const UNRELATED: &str = "  - {id: def-ssh8, security_group_id: sg-default, direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 22, port_range_max: 22, remote_ip_prefix: 10.0.0.0/8}\n";

    /// vm2 (client) and vm1 (server, port 5001).
    fn sides() -> (Side<'static>, Side<'static>) {
        let vm2 = Side {
            port: VM2,
            smac: MAC2,
            dmac: MAC1,
            vid: None,
            src: IP2,
            dst: IP1,
        };
        let vm1 = Side {
            port: VM1,
            smac: MAC1,
            dmac: MAC2,
            vid: None,
            src: IP1,
            dst: IP2,
        };
        (vm2, vm1)
    }

    /// Desired state `k` of the policies the moves swap in; 0 is where the connections open.
    fn policy(k: usize) -> Tables {
        let both = format!("{ALLOW_TCP}{ALLOW_UDP}");
        match k {
            // vm1 lets vm2 in on TCP and UDP 5001.
            0 => sg_tables(&both, "sg-web"),
            // Both rules gone: every connection is cut.
            1 => sg_tables("", "sg-web"),
            // A new policy version that still allows them.
            2 => sg_tables(&format!("{both}{UNRELATED}"), "sg-web"),
            // Allowed by the same rules from a wider prefix.
            3 => sg_tables(&both.replace("203.0.113.12/32", "203.0.113.0/24"), "sg-web"),
            // No rule of their own: vm2 joins default, whose members default lets in.
            4 => sg_tables("", "sg-web, sg-default"),
            // UDP's rule gone, TCP's kept.
            5 => sg_tables(ALLOW_TCP, "sg-web"),
            // vm2's port stateless (egress UDP only, ingress UDP 53 only).
            _ => sg_tables(&both, "sg-stateless"),
        }
    }

    const V6_1: &str = "fd00:203::11";
    const V6_2: &str = "fd00:203::12";
    const WEB_EG6: &str =
        "  - {id: web-eg6, security_group_id: sg-web, direction: egress, ethertype: IPv6}\n";
    const ALLOW6: &str = "  - {id: def-5001t6, security_group_id: sg-default, direction: ingress, ethertype: IPv6, protocol: tcp, port_range_min: 5001, port_range_max: 5001, remote_ip_prefix: \"fd00:203::12/128\"}\n  - {id: def-5001u6, security_group_id: sg-default, direction: ingress, ethertype: IPv6, protocol: udp, port_range_min: 5001, port_range_max: 5001, remote_ip_prefix: \"fd00:203::12/128\"}\n";
    const UNRELATED6: &str = "  - {id: def-ssh6, security_group_id: sg-default, direction: ingress, ethertype: IPv6, protocol: tcp, port_range_min: 22, port_range_max: 22, remote_ip_prefix: \"fd00:99::/64\"}\n";

    /// [`policy`] for IPv6 (vm2 gets fixed IP fd00:203::12, and its web group lets IPv6 out
    /// unless vm2 is made stateless).
    fn policy6(k: usize) -> Tables {
        let tcp6 = &ALLOW6[..ALLOW6.find("  - {id: def-5001u6").unwrap()];
        let (extra, groups) = match k {
            0 => (format!("{WEB_EG6}{ALLOW6}"), "sg-web"),
            1 => (WEB_EG6.to_string(), "sg-web"),
            2 => (format!("{WEB_EG6}{ALLOW6}{UNRELATED6}"), "sg-web"),
            3 => (
                format!(
                    "{WEB_EG6}{}",
                    ALLOW6.replace("fd00:203::12/128", "fd00:203::/64")
                ),
                "sg-web",
            ),
            4 => (WEB_EG6.to_string(), "sg-web, sg-default"),
            5 => (format!("{WEB_EG6}{tcp6}"), "sg-web"),
            _ => (ALLOW6.to_string(), "sg-stateless"),
        };
        let from = "ip_address: 203.0.113.12}]";
        let state = sg_state(&extra, groups);
        assert!(state.contains(from));
        let state = state.replace(
            from,
            &format!("ip_address: 203.0.113.12}}, {{subnet_id: s1v6, ip_address: \"{V6_2}\"}}]"),
        );
        tables_from(HOST, &state, &[])
    }

    fn twins(make: fn(usize) -> Tables) -> Twins {
        let mut tw = Twins::new(|| Harness::with(make(0)));
        tw.states = (0..7)
            .map(|k| Box::new(move || make(k)) as Box<dyn Fn() -> Tables>)
            .collect();
        tw
    }

    /// Plays `moves` on 6 connections (`udp`: flows; `v6`: over IPv6) from vm2 to vm1, the
    /// connection tables [`FUZZ_TABLE`] entries (`evict`: when full, a new connection evicts
    /// the oldest unestablished one); `one_way` (UDP): the flows start unreplied, vm2's
    /// datagrams answered from the flow cache until vm1 replies.
    fn play(udp: bool, v6: bool, evict: bool, one_way: bool, moves: &[FuzzMove]) {
        let mut tw = twins(if v6 { policy6 } else { policy }).limit(FUZZ_TABLE, evict);
        let (vm2, vm1) = sides();
        let mut cv = Conversation::new(vm2, vm1, 6);
        cv.udp = udp;
        if v6 {
            let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
            cv.v6 = Some([a(V6_2), a(V6_1)]);
        }
        // Every connection established (replied; unreplied one way) in both zones.
        let steady = if udp && one_way {
            tw.warm_up_one_way(&mut cv, |_, f| f);
            state::UNREPLIED
        } else {
            tw.warm_up(&mut cv, |_, f| f);
            if udp {
                state::REPLIED
            } else {
                state::ESTABLISHED
            }
        };
        assert_eq!(tw.staged.s.fw.ct.by_state[steady as usize], 2 * cv.n as u32);
        tw.play(&mut cv, moves, |_, f| f);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn tcp_connections_are_judged_the_same_as_security_groups_change(
            moves in fuzz_moves(),
            evict in any::<bool>(),
        ) {
            play(false, false, evict, false, &moves);
        }

        /// Replied flows, or one-way ones that the moves may reply to.
        #[test]
        fn udp_flows_are_judged_the_same_as_security_groups_change(
            moves in fuzz_moves(),
            evict in any::<bool>(),
            one_way in any::<bool>(),
        ) {
            play(true, false, evict, one_way, &moves);
        }

        /// The same over IPv6.
        #[test]
        fn ipv6_flows_are_judged_the_same_as_security_groups_change(
            moves in fuzz_moves(),
            udp in any::<bool>(),
            evict in any::<bool>(),
            one_way in any::<bool>(),
        ) {
            play(udp, true, evict, one_way, &moves);
        }
    }

    /// The policies do what the fuzz relies on: 0, 2, 3 and 4 let a new connection in, 1
    /// does not, 5 lets TCP in and not UDP; and a swap from 0 to 1 cuts the established
    /// connections in vm1's zone.
    #[test]
    fn the_fuzzed_policies_allow_and_cut_what_they_say() {
        let (vm2, vm1) = sides();
        for (k, tcp_in, udp_in) in [
            (0, true, true),
            (1, false, false),
            (2, true, true),
            (3, true, true),
            (4, true, true),
            (5, true, false),
            (6, false, false),
        ] {
            for (udp, v6) in [(false, false), (true, false), (false, true), (true, true)] {
                // vm2 stateless lets IPv4 UDP out (and nothing in but UDP 53).
                let want = if udp {
                    udp_in || (k == 6 && !v6)
                } else {
                    tcp_in
                };
                let mut h = Harness::with(if v6 { policy6(k) } else { policy(k) });
                let mut cv = Conversation::new(vm2, vm1, 1);
                cv.udp = udp;
                if v6 {
                    let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
                    cv.v6 = Some([a(V6_2), a(V6_1)]);
                }
                h.rx(VM2, &[cv.seg(0, false, 0x02, 0, 64)]);
                let got = h.sink.on(VM1);
                assert_eq!(
                    got.len(),
                    want as usize,
                    "policy {k}, udp {udp}, v6 {v6}: {:?}",
                    nonzero(&h)
                );
                if let Some(f) = got.first() {
                    assert_eq!(f[12..14], if v6 { [0x86, 0xdd] } else { [8, 0] });
                }
            }
        }
        // Over IPv6, every kind of ICMPv6 error about an established flow, from either end,
        // reaches the other (related in both zones).
        for udp in [false, true] {
            let mut tw = twins(policy6);
            let mut cv = Conversation::new(vm2, vm1, 2);
            cv.udp = udp;
            let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
            cv.v6 = Some([a(V6_2), a(V6_1)]);
            tw.warm_up(&mut cv, |_, f| f);
            tw.icmp_errors_reach_the_other_end(&cv, |_, f| f);
        }
        let mut tw = twins(policy);
        let mut cv = Conversation::new(vm2, vm1, 2);
        tw.warm_up(&mut cv, |_, f| f);
        tw.play(
            &mut cv,
            &[FuzzMove::Retable(1), FuzzMove::Sweep(usize::MAX)],
            |_, f| f,
        );
        // vm1's zone (1) loses both; vm2's egress (2) still allows them.
        let zones =
            |h: &Harness| -> Vec<u16> { h.s.fw.ct.iter().map(|(_, k, _)| k.zone()).collect() };
        assert_eq!(zones(&tw.cached), [2, 2], "vm1's entries cut");
        assert_eq!(tw.cached.s.fw.ct.stats.cut, 2);
    }
}
