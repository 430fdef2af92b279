//! Every shipped example loads with no problem, alone and against the seed state.

use std::path::{Path, PathBuf};

use vswitch_config::{load_host, load_state, validate_for_host, Role};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn seed_state_is_valid() {
    let state = load_state(&example("seed-state.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state.networks.len(), 3);
    let instance1 = state.port("port-instance1").unwrap();
    assert_eq!(instance1.mac_address.to_string(), "fa:16:3e:71:e9:3e");
    assert_eq!(state.ports_on_host("compute2").count(), 3);
    assert_eq!(state.subnets_of("net-selfservice2").count(), 2);
    let provider1 = state
        .network("4bfa3075-b4b2-4f7d-b88e-df1113942d43")
        .unwrap();
    assert_eq!(provider1.effective_mtu(), 1500);
    assert_eq!(
        state.network("net-selfservice1").unwrap().effective_mtu(),
        1450
    );
}

#[test]
fn every_host_example_is_valid_against_the_seed_state() {
    let state = load_state(&example("seed-state.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let mut seen = 0;
    for entry in std::fs::read_dir(example("")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let host = load_host(&path).unwrap_or_else(|e| panic!("{e}"));
            let problems = validate_for_host(&host, &state);
            assert!(problems.is_empty(), "{}: {problems:?}", path.display());
            let entry = state
                .host(&host.host_id)
                .expect("host listed in seed state");
            assert_eq!(host.local_vtep_ip, Some(entry.vtep_ip));
            assert_eq!(host.dvr_mac, entry.dvr_mac);
            seen += 1;
        }
    }
    assert_eq!(seen, 3);
    let network1 = load_host(&example("network1.toml")).unwrap();
    assert_eq!(network1.role, Role::DvrSnat);
}

#[test]
fn examples_never_use_192_0_2() {
    for entry in std::fs::read_dir(example("")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap();
            assert!(
                !code.contains("192.0.2.") && !code.contains("fd00:192:0:2"),
                "{}:{}: {line}",
                path.display(),
                n + 1
            );
        }
    }
}

#[test]
fn json_state_round_trips() {
    let state = load_state(&example("seed-state.yaml")).unwrap();
    let json = serde_json::to_string_pretty(&state).unwrap();
    let again = vswitch_config::parse_state_str(&json, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, state);
    let yaml = serde_yaml::to_string(&state).unwrap();
    let again = vswitch_config::parse_state_str(&yaml, false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, state);
}
