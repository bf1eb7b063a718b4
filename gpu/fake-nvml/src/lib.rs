//! A fake `libnvidia-ml.so.1`: the NVML C ABI (the symbols infertap's sampler calls), answering
//! from a scripted [`timeline::Timeline`] instead of a GPU, so that the agent's real FFI path
//! (nvml-wrapper, `dlopen`, `dlsym`) runs in tests on machines without one.
//!
//! - [`timeline`]: the file format (serde), series and their value at a time.
//! - [`model`]: the figures a timeline implies at a time — pure, shared by the library and by
//!   tests computing what they expect.
//! - [`install`]: a copy of the built library as `libnvidia-ml.so.1` with the timeline beside it
//!   and "missing" symbols hidden from the loader.
//! - [`stats`]: calls and time per symbol, written to a stats file.
//! - `driver` and `ffi` (private): the state between init and shutdown, and the exports.
//!
//! Timestamps are `CLOCK_REALTIME` microseconds, as the real driver's. The format and the
//! behaviours imitated are described in `gpu/fake-nvml/README.md`.

mod driver;
mod ffi;
pub mod install;
pub mod model;
pub mod stats;
pub mod timeline;

pub use driver::{STATS_ENV, TIMELINE_ENV};
pub use ffi::MEMORY_V2_VERSION;
