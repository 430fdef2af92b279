//! `vswitch-ffi`: the only crate that binds DPDK.
//!
//! bindgen generates [`sys`] from the system DPDK (pkg-config `libdpdk` >= 22.11) at build time;
//! a small C shim (`src/shim.c`) makes DPDK's static-inline fast-path functions callable
//! (rx/tx burst, mbuf alloc/free/prepend/adj, `rte_errno`). On top sit thin safe wrappers:
//! [`eal`] (init from config arguments, lcore launch, cleanup), [`mempool::Mempool`],
//! [`ethdev`] (device probe, port + queue setup, bursts) and [`mbuf::Mbuf`] (an owned packet
//! buffer that frees itself on drop). [`hugemem::HugeSlice`] holds the large tables the fast path
//! reads at random on (transparent) huge pages.
//!
//! Every `unsafe` block in this crate carries a `// SAFETY:` line naming the invariant that
//! makes it sound (enforced by `clippy::undocumented_unsafe_blocks`).

pub mod eal;
pub mod error;
pub mod ethdev;
pub mod hint;
pub mod hugemem;
pub mod mbuf;
pub mod mempool;
pub mod sys;

pub use error::DpdkError;
pub use mbuf::Mbuf;
pub use mempool::Mempool;

/// Sets the process's file-creation mask and returns the previous one (`umask(2)`), e.g. so a
/// unix socket is created with mode 0600 from the start.
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask(2) cannot fail and touches only this process's creation mask.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}
