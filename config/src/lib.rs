//! Configuration of the vswitch appliance, in two documents:
//!
//! * the **host config** ([`HostConfig`], TOML): this host's role (`dvr` or
//!   `dvr_snat`), lcores, EAL arguments and DPDK ports, and which provider
//!   port reaches which physical network (`bridge_mappings`);
//! * the **desired state** ([`DesiredState`], YAML or JSON): Neutron's
//!   networks, subnets, ports, routers, floating IPs and security groups,
//!   with Neutron's field names, plus every host's VTEP and DVR MAC.
//!
//! Loading is parse, then validate. A parse error names the path where the
//! parser stopped (`ports[1].mac_address: invalid MAC "zz:..."`). Validation
//! runs every rule and reports every [`Problem`] at once in
//! [`ConfigError::Invalid`]; nothing is returned while any problem exists.
//! [`validate_for_host`] then checks the two documents against each other.
//!
//! The dataplane compiler reads only validated documents, so it may assume
//! every reference resolves (a port's network and subnets exist, a rule's
//! group exists) and every address fits its subnet.

mod error;
mod host;
mod mac;
mod protocol;
mod state;
mod validate;

use std::path::Path;

use serde::de::DeserializeOwned;

pub use error::{ConfigError, Problem};
pub use host::{
    ConntrackConfig, ConntrackTimeouts, ControlConfig, HostConfig, IdleConfig, IdleMode,
    OverlayConfig, PortConfig, PortKind, Role, DEFAULT_CONTROL_DIR,
};
pub use mac::{MacAddr, ParseMacError};
pub use state::{
    AllocationPool, AllowedAddressPair, DesiredState, Direction, EtherType, ExternalGatewayInfo,
    FixedIp, FloatingIp, HostEntry, Network, NetworkType, Port, Protocol, Route, Router,
    SecurityGroup, SecurityGroupRule, Subnet, OWNER_FIP_GATEWAY, OWNER_ROUTER_INTERFACE,
    OWNER_ROUTER_INTERFACE_DISTRIBUTED,
};
pub use validate::validate_for_host;

/// The file name used in errors for documents given as strings.
const STRING_INPUT: &str = "<input>";

/// Reads, parses and validates a host config (TOML).
pub fn load_host(path: &Path) -> Result<HostConfig, ConfigError> {
    let text = read(path)?;
    parse_host_named(&text, &path.display().to_string())
}

/// Parses and validates a host config given as TOML text.
pub fn parse_host_str(text: &str) -> Result<HostConfig, ConfigError> {
    parse_host_named(text, STRING_INPUT)
}

/// Reads, parses and validates a desired state: JSON if the file name ends
/// in `.json`, otherwise YAML (`.yaml`, `.yml`).
pub fn load_state(path: &Path) -> Result<DesiredState, ConfigError> {
    let text = read(path)?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    parse_state_named(&text, json, &path.display().to_string())
}

/// Parses and validates a desired state given as text (JSON if `json`,
/// else YAML). Errors name the file `<input>`.
pub fn parse_state_str(text: &str, json: bool) -> Result<DesiredState, ConfigError> {
    parse_state_named(text, json, STRING_INPUT)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_host_named(text: &str, file: &str) -> Result<HostConfig, ConfigError> {
    let host: HostConfig = deserialize(toml::Deserializer::new(text), file)?;
    checked(host.validate(), file)?;
    Ok(host)
}

fn parse_state_named(text: &str, json: bool, file: &str) -> Result<DesiredState, ConfigError> {
    let state: DesiredState = if json {
        let mut de = serde_json::Deserializer::from_str(text);
        let state = deserialize(&mut de, file)?;
        de.end().map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            path: String::new(),
            message: e.to_string(),
        })?;
        state
    } else if is_blank_yaml(text) {
        // An empty document (or one of only comments) means "nothing".
        DesiredState::default()
    } else {
        deserialize(serde_yaml::Deserializer::from_str(text), file)?
    };
    checked(state.validate(), file)?;
    Ok(state)
}

fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    })
}

/// Deserializes with the path of the failing field kept for the message.
fn deserialize<'de, D, T>(de: D, file: &str) -> Result<T, ConfigError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: DeserializeOwned,
{
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let (path, message) = tidy_parse_error(path, err.into_inner().to_string());
        ConfigError::Parse {
            file: file.to_string(),
            path,
            message,
        }
    })
}

/// Makes parser errors read the same whatever the format: the root path is
/// empty, serde_yaml's own copy of the path is not repeated in the message,
/// and an unknown field is reported at the object that holds it
/// (`networks[0]: unknown field `mtux``).
fn tidy_parse_error(path: String, message: String) -> (String, String) {
    let mut path = if path == "." { String::new() } else { path };
    let mut message = message.trim_end().to_string();
    // serde's wording; toml puts it after a source excerpt, the others first.
    if let Some((_, rest)) = message.split_once("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        if path == field {
            path.clear();
        } else if let Some(parent) = path.strip_suffix(&format!(".{field}")) {
            path = parent.to_string();
        }
    }
    if let Some(rest) = message.strip_prefix(&format!("{path}: ")) {
        message = rest.to_string();
    }
    (path, message)
}

fn checked(problems: Vec<Problem>, file: &str) -> Result<(), ConfigError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            file: file.to_string(),
            problems,
        })
    }
}
