//! EAL: process-wide DPDK initialisation, lcore launch and cleanup.
use crate::error::DpdkError;
use std::ffi::{c_char, c_int, c_void, CString};

/// Initialises the EAL with `args` (without the program name; it is added). Call once per
/// process. Returns the number of arguments EAL consumed.
pub fn init(args: &[String]) -> Result<usize, DpdkError> {
    let mut owned: Vec<CString> = Vec::with_capacity(args.len() + 1);
    owned.push(CString::new("vswitchd").expect("no NUL in literal"));
    for a in args {
        match CString::new(a.as_str()) {
            Ok(c) => owned.push(c),
            Err(_) => {
                return Err(DpdkError::new(
                    format!("EAL argument {a:?} contains NUL"),
                    22,
                ))
            }
        }
    }
    // rte_eal_init may permute argv, so hand it a scratch array of pointers we own.
    let mut argv: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr() as *mut c_char).collect();
    let argc = argv.len() as c_int;
    // SAFETY: argv holds argc valid NUL-terminated strings that outlive the call (owned).
    let rc = unsafe { crate::sys::rte_eal_init(argc, argv.as_mut_ptr()) };
    if rc < 0 {
        return Err(DpdkError::from_errno("rte_eal_init"));
    }
    Ok(rc as usize)
}

/// Releases EAL resources (hugepage mappings, memory) and removes this process's runtime
/// directory (`/var/run/dpdk/<file-prefix>`), which `rte_eal_cleanup` leaves behind. Call once,
/// after every port is closed. (A DPDK secondary process sharing the prefix is not supported.)
pub fn cleanup() -> Result<(), DpdkError> {
    let runtime_dir = runtime_dir();
    // SAFETY: called once, from the main lcore, after all workers have returned.
    let rc = unsafe { crate::sys::rte_eal_cleanup() };
    if rc < 0 {
        return Err(DpdkError::new("rte_eal_cleanup", rc));
    }
    if let Some(dir) =
        runtime_dir.filter(|d| d.starts_with("/var/run/dpdk/") || d.starts_with("/run/dpdk/"))
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// EAL's runtime directory for this process, if EAL is initialised.
pub fn runtime_dir() -> Option<std::path::PathBuf> {
    // SAFETY: returns a pointer to a static NUL-terminated buffer inside EAL (or empty).
    let p = unsafe { crate::sys::rte_eal_get_runtime_dir() };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated (EAL's static buffer).
    let s = unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned();
    (!s.is_empty()).then(|| std::path::PathBuf::from(s))
}

/// The calling thread's lcore id (`u32::MAX` outside an EAL thread).
pub fn lcore_id() -> u32 {
    // SAFETY: reads a per-thread variable; no preconditions.
    unsafe { crate::sys::vs_lcore_id() }
}

type Job = Box<dyn FnOnce() -> i32 + Send + 'static>;

extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: arg was produced by Box::into_raw(Box<Job>) in `launch` and is consumed exactly once.
    let job: Box<Job> = unsafe { Box::from_raw(arg as *mut Job) };
    job()
}

/// Runs `f` on worker `lcore` (which must be idle). Join with [`wait`].
pub fn launch(lcore: u32, f: impl FnOnce() -> i32 + Send + 'static) -> Result<(), DpdkError> {
    let job: Box<Job> = Box::new(Box::new(f));
    let raw = Box::into_raw(job) as *mut c_void;
    // SAFETY: trampoline matches lcore_function_t; raw stays valid until the trampoline frees it.
    let rc = unsafe { crate::sys::rte_eal_remote_launch(Some(trampoline), raw, lcore) };
    if rc < 0 {
        // SAFETY: the launch failed, so the trampoline never ran; reclaim the job here.
        drop(unsafe { Box::from_raw(raw as *mut Job) });
        return Err(DpdkError::new(
            format!("rte_eal_remote_launch(lcore {lcore})"),
            rc,
        ));
    }
    Ok(())
}

/// Waits for the job on `lcore` to return and gives its return value.
pub fn wait(lcore: u32) -> i32 {
    // SAFETY: called from the main lcore; waiting on an idle lcore returns at once.
    unsafe { crate::sys::rte_eal_wait_lcore(lcore) }
}

/// TSC cycles (a few ns to read; no syscall). On x86_64 the instruction is inlined; elsewhere
/// DPDK's `rte_get_tsc_cycles` is called through the shim.
#[inline(always)]
pub fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC exists on every x86_64 CPU and has no preconditions.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: reads the time-stamp counter; no preconditions.
        unsafe { crate::sys::vs_get_tsc_cycles() }
    }
}

/// TSC frequency in Hz, as EAL calibrated it.
pub fn tsc_hz() -> u64 {
    // SAFETY: reads a value EAL computed at init.
    unsafe { crate::sys::vs_get_tsc_hz() }
}
