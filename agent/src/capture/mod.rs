//! Capture: records from the kernel's ring buffer, decoded, and the clock that turns their
//! timestamps into wall-clock time.

pub mod clock;
pub mod decode;
