//! Security group rules: protocol against ethertype, port ranges, remotes.

use super::{host_bits, Index, Problems};
use crate::state::{DesiredState, EtherType, Protocol};

pub(super) fn check_rules(state: &DesiredState, index: &Index<'_>, out: &mut Problems) {
    for (i, rule) in state.security_group_rules.iter().enumerate() {
        let at = format!("security_group_rules[{i}]");
        if !index
            .security_groups
            .contains_key(rule.security_group_id.as_str())
        {
            out.push(
                format!("{at}.security_group_id"),
                format!(
                    "security group \"{}\" does not exist",
                    rule.security_group_id
                ),
            );
        }

        let protocol = rule.protocol.unwrap_or(Protocol::Any);
        match (protocol, rule.ethertype) {
            (Protocol::Icmp, EtherType::Ipv6) => out.push(
                format!("{at}.protocol"),
                "icmp is IPv4-only; use icmpv6 (or ipv6-icmp) with ethertype IPv6",
            ),
            (Protocol::Icmpv6, EtherType::Ipv4) => out.push(
                format!("{at}.protocol"),
                "icmpv6 is IPv6-only; use icmp with ethertype IPv4",
            ),
            _ => {}
        }
        check_port_range(protocol, rule.port_range_min, rule.port_range_max, &at, out);

        if let Some(prefix) = &rule.remote_ip_prefix {
            let is_v4 = prefix.addr().is_ipv4();
            if is_v4 != (rule.ethertype == EtherType::Ipv4) {
                let (have, want) = if is_v4 {
                    ("IPv4", "IPv6")
                } else {
                    ("IPv6", "IPv4")
                };
                out.push(
                    format!("{at}.remote_ip_prefix"),
                    format!("remote_ip_prefix {prefix} is {have} but ethertype is {want}"),
                );
            }
            if let Some(net) = host_bits(prefix) {
                out.push(
                    format!("{at}.remote_ip_prefix"),
                    format!("{prefix} has host bits set; use {net}"),
                );
            }
        }
        if let Some(group) = &rule.remote_group_id {
            if !index.security_groups.contains_key(group.as_str()) {
                out.push(
                    format!("{at}.remote_group_id"),
                    format!("security group \"{group}\" does not exist"),
                );
            }
            if rule.remote_ip_prefix.is_some() {
                out.push(
                    format!("{at}.remote_group_id"),
                    "remote_group_id and remote_ip_prefix cannot both be set; split them into two rules",
                );
            }
        }
    }
}

fn check_port_range(
    protocol: Protocol,
    min: Option<u16>,
    max: Option<u16>,
    at: &str,
    out: &mut Problems,
) {
    let min_at = format!("{at}.port_range_min");
    let max_at = format!("{at}.port_range_max");
    if protocol.has_ports() {
        match (min, max) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => out.push(
                if min.is_none() { &min_at } else { &max_at },
                format!(
                    "{protocol} port ranges need both port_range_min and port_range_max (equal for one port)"
                ),
            ),
            (Some(lo), Some(hi)) => {
                if lo == 0 {
                    out.push(&min_at, "port 0 cannot be matched; ports are 1..=65535");
                }
                if lo > hi {
                    out.push(
                        &min_at,
                        format!("port_range_min {lo} is above port_range_max {hi}"),
                    );
                }
            }
        }
    } else if protocol.is_icmp() {
        if let Some(kind) = min.filter(|&t| t > 255) {
            out.push(
                &min_at,
                format!("for {protocol}, port_range_min is the ICMP type; {kind} is out of range 0..=255"),
            );
        }
        if let Some(code) = max.filter(|&c| c > 255) {
            out.push(
                &max_at,
                format!("for {protocol}, port_range_max is the ICMP code; {code} is out of range 0..=255"),
            );
        }
        if min.is_none() && max.is_some() {
            out.push(
                &max_at,
                "an ICMP code (port_range_max) needs an ICMP type (port_range_min)",
            );
        }
    } else {
        let what = match protocol {
            Protocol::Any => "rules for any protocol".to_string(),
            other => format!("protocol {other}"),
        };
        for (path, value) in [(&min_at, min), (&max_at, max)] {
            if value.is_some() {
                out.push(
                    path,
                    format!("{what} cannot have a port range; port ranges apply to tcp, udp and sctp (ports) and icmp/icmpv6 (type and code)"),
                );
            }
        }
    }
}
