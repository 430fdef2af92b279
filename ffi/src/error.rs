//! Errors from DPDK calls, carrying the `rte_errno` text so a person can act on them.
use std::ffi::CStr;

/// A failed DPDK call: what we tried, and DPDK's own reason.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason} (errno {code})")]
pub struct DpdkError {
    /// What we were doing, e.g. `rte_eth_dev_configure(port 0)`.
    pub what: String,
    /// DPDK's description of `code`.
    pub reason: String,
    /// The positive errno value.
    pub code: i32,
}

impl DpdkError {
    /// Builds an error from a negative return value or `rte_errno`.
    pub fn new(what: impl Into<String>, code: i32) -> Self {
        let code = code.abs();
        Self {
            what: what.into(),
            reason: strerror(code),
            code,
        }
    }

    /// Builds an error from the current thread's `rte_errno`.
    pub fn from_errno(what: impl Into<String>) -> Self {
        Self::new(what, errno())
    }
}

/// The calling thread's `rte_errno`.
pub fn errno() -> i32 {
    // SAFETY: vs_errno reads a thread-local integer; no preconditions.
    unsafe { crate::sys::vs_errno() }
}

/// DPDK's text for an errno value (covers DPDK's own codes as well as libc's).
pub fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    let p = unsafe { crate::sys::rte_strerror(code) };
    if p.is_null() {
        return format!("error {code}");
    }
    // SAFETY: p is non-null and NUL-terminated (checked above, guaranteed by rte_strerror).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
