//! Finds the system DPDK with pkg-config, generates bindings with bindgen and builds the C shim
//! for DPDK's static-inline fast-path functions. Fails with a message that names the package to
//! install when DPDK or libclang is missing.
use std::env;
use std::path::PathBuf;

const MIN_DPDK: &str = "22.11";
const HINT: &str = "run `vagrant/provision.sh` as root (or: apt-get install dpdk-dev libdpdk-dev pkg-config clang libclang-dev)";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-changed=src/shim.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let dpdk = match pkg_config::Config::new()
        .atleast_version(MIN_DPDK)
        .cargo_metadata(true)
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!(
                "\nerror: DPDK >= {MIN_DPDK} not found through pkg-config (libdpdk): {e}\n\
                 hint: {HINT}\n"
            );
            std::process::exit(1);
        }
    };

    // The raw cflags carry `-include rte_config.h -march=...`, which the headers need.
    let cflags = pkg_config::get_variable("libdpdk", "cflags").ok();
    let raw = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .or(cflags)
        .unwrap_or_default();
    let clang_args: Vec<String> = raw.split_whitespace().map(str::to_owned).collect();

    check_libclang();

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("rte_.*|vs_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*")
        .opaque_type("rte_gtp_psc_generic_hdr")
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_arp_hdr")
        .layout_tests(true)
        .derive_default(true)
        .prepend_enum_name(false)
        .generate();
    let bindings = match bindings {
        Ok(b) => b,
        Err(e) => {
            eprintln!("\nerror: bindgen could not read the DPDK headers: {e}\nhint: {HINT}\n");
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");

    let mut build = cc::Build::new();
    build.file("src/shim.c").opt_level(3).warnings(true);
    for inc in &dpdk.include_paths {
        build.include(inc);
    }
    for arg in &clang_args {
        if !arg.starts_with("-I") {
            build.flag(arg);
        }
    }
    build.compile("vswitch_dpdk_shim");
}

/// bindgen loads libclang at run time and panics with a cryptic message when it is absent;
/// look for it first so the error names the package.
fn check_libclang() {
    let found = ["/usr/lib", "/usr/lib64", "/usr/local/lib"]
        .iter()
        .any(|d| walk_has_libclang(std::path::Path::new(d), 3))
        || env::var_os("LIBCLANG_PATH").is_some();
    if !found {
        eprintln!("\nerror: libclang.so not found (bindgen needs it)\nhint: {HINT}\n");
        std::process::exit(1);
    }
}

fn walk_has_libclang(dir: &std::path::Path, depth: u32) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libclang.so") || name.starts_with("libclang-") && name.contains(".so")
        {
            return true;
        }
        if depth > 0 && p.is_dir() && walk_has_libclang(&p, depth - 1) {
            return true;
        }
    }
    false
}
