//! `vswitch`: a DPDK-based virtual switch and distributed router, the fast path of an
//! OpenStack "Open vSwitch + DVR" host in one userspace process.
//!
//! - [`packet`]: zero-copy typed header views, parse and emit;
//! - [`pipeline`]: the stages, each a loop over a batch reading immutable [`tables`];
//! - [`tables`]: compiled lookup structures, published to the cores by one atomic swap;
//! - [`io`]: DPDK ports and transmit;
//! - [`runtime`]: lcore launch, poll loop, idle back-off, shutdown;
//! - [`counters`]: drop reasons and per-core counters.
//!
//! See `docs/architecture.md` for the picture.

pub mod control;
pub mod counters;
pub mod io;
pub mod packet;
pub mod pipeline;
pub mod runtime;
pub mod tables;
