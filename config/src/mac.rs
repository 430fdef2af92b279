//! Ethernet MAC addresses as they appear in Neutron documents
//! (`mac_address: fa:16:3e:71:e9:3e`) and in the host config (`dvr_mac`).
//!
//! Parsing accepts six hex octets separated by `:` or `-` in either case;
//! printing is always lowercase with `:`, which is what Neutron returns.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// `00:00:00:00:00:00`, never a valid port or router address.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Builds an address from its six octets.
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }

    /// The six octets, first one on the wire first.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The I/G bit (bit 0 of the first octet) is clear: an individual address.
    pub const fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    /// The I/G bit is set: a group address (broadcast included).
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// All ones.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// All zeros.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// The U/L bit (bit 1 of the first octet) is set. Neutron's `fa:16:3e`
    /// base MAC and the DVR base `fa:16:3f` are both locally administered.
    pub const fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
}

impl From<MacAddr> for [u8; 6] {
    fn from(mac: MacAddr) -> Self {
        mac.0
    }
}

/// Why a string is not a MAC address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseMacError {
    input: String,
}

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid MAC {:?}: expected six hex octets like fa:16:3e:01:02:03",
            self.input
        )
    }
}

impl std::error::Error for ParseMacError {}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError {
            input: s.to_string(),
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut octets = [0u8; 6];
        let mut parts = s.split(sep);
        for octet in &mut octets {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = MacAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address string like fa:16:3e:01:02:03")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MacAddr, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_lowercase() {
        let mac: MacAddr = "FA:16:3E:71:E9:3E".parse().unwrap();
        assert_eq!(mac.octets(), [0xfa, 0x16, 0x3e, 0x71, 0xe9, 0x3e]);
        assert_eq!(mac.to_string(), "fa:16:3e:71:e9:3e");
        let dashed: MacAddr = "fa-16-3e-71-e9-3e".parse().unwrap();
        assert_eq!(dashed, mac);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "fa:16:3e:71:e9",
            "fa:16:3e:71:e9:3e:00",
            "zz:16:3e:71:e9:3e",
            "fa:16:3e:71:e9:",
            "fa:16:3e:71:e9:123",
            "fa:16-3e:71:e9:3e",
            "+a:16:3e:71:e9:3e",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
        let err = "zz:00:00:00:00:00".parse::<MacAddr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid MAC \"zz:00:00:00:00:00\": expected six hex octets like fa:16:3e:01:02:03"
        );
    }

    #[test]
    fn classifies() {
        let neutron: MacAddr = "fa:16:3e:00:00:01".parse().unwrap();
        assert!(neutron.is_unicast() && !neutron.is_multicast());
        assert!(neutron.is_locally_administered());
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr::ZERO.is_zero() && MacAddr::ZERO.is_unicast());
        let ipv4_mcast: MacAddr = "01:00:5e:00:00:01".parse().unwrap();
        assert!(ipv4_mcast.is_multicast() && !ipv4_mcast.is_locally_administered());
    }

    #[test]
    fn serde_as_string() {
        let mac = MacAddr([0xfa, 0x16, 0x3f, 0, 0, 1]);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"fa:16:3f:00:00:01\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        assert!(serde_json::from_str::<MacAddr>("42").is_err());
    }

    proptest! {
        #[test]
        fn display_from_str_round_trip(octets in any::<[u8; 6]>()) {
            let mac = MacAddr(octets);
            prop_assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
        }

        #[test]
        fn from_str_never_panics(s in "\\PC{0,24}") {
            let _ = s.parse::<MacAddr>();
        }
    }
}
