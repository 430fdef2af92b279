//! Errors for people: every message names the file, the path inside the
//! document (`ports[2].fixed_ips[0].ip_address`), what is wrong and, where it
//! is not obvious, what to do about it.

use std::fmt;
use std::path::PathBuf;

/// One semantic problem found by validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    /// Where in the document, e.g. `networks[1].provider:segmentation_id`.
    /// Cross checks prefix it with `host.` or `state.`.
    pub path: String,
    /// What is wrong, in words, with the offending value.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same problem with `prefix.` in front of its path.
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.path = format!("{prefix}.{}", self.path);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a host config or desired state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file we tried to read.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The document is not well formed, or a field has the wrong type, an
    /// unknown name, or a value that does not parse (a MAC, an address).
    #[error("{}", parse_line(file, path, message))]
    Parse {
        /// The file name, or `<input>` for a string.
        file: String,
        /// Where the parser stopped, e.g. `ports[1].mac_address`; empty for the document root.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The document parsed, but breaks one or more rules. Every problem is
    /// listed, so one edit round can fix them all.
    #[error("{}", invalid_lines(file, problems))]
    Invalid {
        /// The file name, or `<input>` for a string.
        file: String,
        /// Every problem found, in document order.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The semantic problems, if this is [`ConfigError::Invalid`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn parse_line(file: &str, path: &str, message: &str) -> String {
    if path.is_empty() {
        format!("{file}: {message}")
    } else {
        format!("{file}: {path}: {message}")
    }
}

fn invalid_lines(file: &str, problems: &[Problem]) -> String {
    let plural = if problems.len() == 1 { "" } else { "s" };
    let mut out = format!("{file}: {} problem{plural}:", problems.len());
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_every_problem_on_its_own_line() {
        let err = ConfigError::Invalid {
            file: "state.yaml".into(),
            problems: vec![
                Problem::new("networks[0].mtu", "MTU 40 is out of range 68..=9216"),
                Problem::new(
                    "ports[2].fixed_ips[0].ip_address",
                    "10.9.9.9 is not in subnet selfservice2-v4 (198.51.100.0/24)",
                ),
            ],
        };
        assert_eq!(
            err.to_string(),
            "state.yaml: 2 problems:\n  networks[0].mtu: MTU 40 is out of range 68..=9216\n  \
             ports[2].fixed_ips[0].ip_address: 10.9.9.9 is not in subnet selfservice2-v4 (198.51.100.0/24)"
        );
        assert_eq!(err.problems().len(), 2);
    }

    #[test]
    fn parse_names_the_path() {
        let err = ConfigError::Parse {
            file: "a.yaml".into(),
            path: "ports[1].mac_address".into(),
            message: "bad".into(),
        };
        assert_eq!(err.to_string(), "a.yaml: ports[1].mac_address: bad");
        let root = ConfigError::Parse {
            file: "a.yaml".into(),
            path: String::new(),
            message: "bad".into(),
        };
        assert_eq!(root.to_string(), "a.yaml: bad");
    }

    #[test]
    fn prefixed() {
        let p = Problem::new("ports[0].iface_id", "x").prefixed("host");
        assert_eq!(p.to_string(), "host.ports[0].iface_id: x");
    }
}
