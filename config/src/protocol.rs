//! Hand-written serde for the two Neutron fields that accept more than one
//! shape: a rule's `protocol` (a name, a number, or a number in a string)
//! and an allowed address pair's `ip_address` (an address or a prefix).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{de, Deserializer, Serialize, Serializer};

/// IP protocol of a security group rule.
///
/// Numbers of the named protocols are folded into their names when parsed
/// (`"6"` and `6` become [`Protocol::Tcp`]), so later code matches one form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    /// `icmpv6` or `ipv6-icmp` (58).
    Icmpv6,
    Sctp,
    /// Any other IP protocol number.
    Number(u8),
    /// Every protocol (`any`), the same as leaving `protocol` out.
    Any,
}

impl Protocol {
    /// The IP protocol number; `None` for [`Protocol::Any`].
    pub fn number(&self) -> Option<u8> {
        match self {
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Icmp => Some(1),
            Protocol::Icmpv6 => Some(58),
            Protocol::Sctp => Some(132),
            Protocol::Number(n) => Some(*n),
            Protocol::Any => None,
        }
    }

    /// The protocol for an IP protocol number, by name where it has one.
    pub fn from_number(n: u8) -> Protocol {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 => Protocol::Icmp,
            58 => Protocol::Icmpv6,
            132 => Protocol::Sctp,
            n => Protocol::Number(n),
        }
    }

    /// Whether `port_range_min`/`max` are L4 ports (tcp, udp, sctp).
    pub fn has_ports(&self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
    }

    /// Whether `port_range_min`/`max` are ICMP type and code.
    pub fn is_icmp(&self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmpv6)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Icmpv6 => f.write_str("ipv6-icmp"),
            Protocol::Sctp => f.write_str("sctp"),
            Protocol::Number(n) => write!(f, "{n}"),
            Protocol::Any => f.write_str("any"),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Number(n) => serializer.serialize_u8(*n),
            other => serializer.collect_str(other),
        }
    }
}

const PROTOCOL_HINT: &str =
    "expected tcp, udp, icmp, icmpv6, ipv6-icmp, sctp, any, or a protocol number 0..=255";

impl<'de> de::Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(PROTOCOL_HINT)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Protocol, E> {
                u8::try_from(v)
                    .map(Protocol::from_number)
                    .map_err(|_| E::custom(format!("protocol number {v} is out of range 0..=255")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Protocol, E> {
                u8::try_from(v)
                    .map(Protocol::from_number)
                    .map_err(|_| E::custom(format!("protocol number {v} is out of range 0..=255")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
                let name = v.trim().to_ascii_lowercase();
                Ok(match name.as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    "icmp" => Protocol::Icmp,
                    "icmpv6" | "ipv6-icmp" => Protocol::Icmpv6,
                    "sctp" => Protocol::Sctp,
                    "any" => Protocol::Any,
                    digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                        return digits
                            .parse::<u8>()
                            .map(Protocol::from_number)
                            .map_err(|_| {
                                E::custom(format!("protocol number {v} is out of range 0..=255"))
                            });
                    }
                    _ => {
                        return Err(E::custom(format!(
                            "unknown protocol {v:?}: {PROTOCOL_HINT}"
                        )))
                    }
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Deserializes an [`IpNet`] from `"10.0.0.5"` (as /32) or `"10.0.0.0/24"`.
pub(crate) fn ip_or_net<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = IpNet;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an IP address or prefix, like 10.0.0.5 or 10.0.0.0/24")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<IpNet, E> {
            if let Ok(net) = v.parse::<IpNet>() {
                return Ok(net);
            }
            v.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                E::custom(format!(
                    "invalid address {v:?}: expected an IP address or prefix, like 10.0.0.5 or 10.0.0.0/24"
                ))
            })
        }
    }
    deserializer.deserialize_str(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Protocol, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn accepts_names_numbers_and_numeric_strings() {
        assert_eq!(parse("\"tcp\"").unwrap(), Protocol::Tcp);
        assert_eq!(parse("\"UDP\"").unwrap(), Protocol::Udp);
        assert_eq!(parse("\"icmpv6\"").unwrap(), Protocol::Icmpv6);
        assert_eq!(parse("\"ipv6-icmp\"").unwrap(), Protocol::Icmpv6);
        assert_eq!(parse("\"any\"").unwrap(), Protocol::Any);
        assert_eq!(parse("6").unwrap(), Protocol::Tcp);
        assert_eq!(parse("\"17\"").unwrap(), Protocol::Udp);
        assert_eq!(parse("47").unwrap(), Protocol::Number(47));
        assert_eq!(parse("\"112\"").unwrap(), Protocol::Number(112));
        assert_eq!(Protocol::Number(47).number(), Some(47));
        assert_eq!(Protocol::Sctp.number(), Some(132));
        assert_eq!(Protocol::Any.number(), None);
    }

    #[test]
    fn rejects_unknown_and_out_of_range() {
        let err = parse("\"gre\"").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown protocol \"gre\": expected tcp"),
            "{err}"
        );
        let err = parse("256").unwrap_err().to_string();
        assert!(
            err.starts_with("protocol number 256 is out of range 0..=255"),
            "{err}"
        );
        assert!(parse("\"300\"").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("true").is_err());
    }

    #[test]
    fn serializes_round_trip() {
        for p in [
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Icmp,
            Protocol::Icmpv6,
            Protocol::Sctp,
            Protocol::Number(47),
            Protocol::Any,
        ] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(parse(&json).unwrap(), p, "{json}");
        }
        assert_eq!(serde_json::to_string(&Protocol::Number(47)).unwrap(), "47");
    }
}
