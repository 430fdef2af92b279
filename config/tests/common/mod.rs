//! Shared helpers: the seed documents, and an assertion on one exact problem.

#![allow(dead_code)]

use vswitch_config::{parse_host_str, parse_state_str, DesiredState, HostConfig, Problem};

pub const SEED_STATE: &str = include_str!("../../examples/seed-state.yaml");
pub const COMPUTE1: &str = include_str!("../../examples/compute1.toml");

/// The seed state, parsed and valid; tests break one thing in it.
pub fn seed() -> DesiredState {
    parse_state_str(SEED_STATE, false).unwrap_or_else(|e| panic!("{e}"))
}

/// compute1's host config, parsed and valid.
pub fn compute1() -> HostConfig {
    parse_host_str(COMPUTE1).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts that `problems` holds exactly this problem.
#[track_caller]
pub fn has(problems: &[Problem], path: &str, message: &str) {
    assert!(
        problems
            .iter()
            .any(|p| p.path == path && p.message == message),
        "expected `{path}: {message}` among:\n{}",
        list(problems)
    );
}

/// Asserts that `problems` is exactly this one problem.
#[track_caller]
pub fn only(problems: &[Problem], path: &str, message: &str) {
    assert_eq!(
        problems.len(),
        1,
        "expected one problem, got:\n{}",
        list(problems)
    );
    has(problems, path, message);
}

pub fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}\n"))
        .collect::<String>()
}
