//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock Unix nanoseconds.
//!
//! The offset between CLOCK_REALTIME and CLOCK_MONOTONIC changes when NTP steps or slews the
//! clock, so it is re-measured periodically; each measurement brackets the realtime read
//! between two monotonic reads and keeps the tightest bracket of a few tries.

#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// realtime − monotonic, in nanoseconds.
    offset_ns: i128,
}

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock ids and a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl WallClock {
    pub fn measure() -> WallClock {
        let mut best: Option<(i128, i128)> = None; // (bracket width, offset)
        for _ in 0..5 {
            let m0 = now(libc::CLOCK_MONOTONIC);
            let r = now(libc::CLOCK_REALTIME);
            let m1 = now(libc::CLOCK_MONOTONIC);
            let width = m1 - m0;
            let offset = r - (m0 + width / 2);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        WallClock {
            offset_ns: best.map(|(_, o)| o).unwrap_or(0),
        }
    }

    /// A clock with a known offset (tests).
    pub fn with_offset(offset_ns: i128) -> WallClock {
        WallClock { offset_ns }
    }

    pub fn to_unix_nanos(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset_ns).clamp(0, u64::MAX as i128) as u64
    }

    /// Unix time → kernel monotonic time (NVML stamps its samples with wall-clock time).
    pub fn to_monotonic_nanos(&self, unix_ns: u64) -> u64 {
        (unix_ns as i128 - self.offset_ns).clamp(0, u64::MAX as i128) as u64
    }

    pub fn monotonic_now() -> u64 {
        now(libc::CLOCK_MONOTONIC) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_the_current_monotonic_time_to_the_current_wall_time() {
        let clock = WallClock::measure();
        let wall = clock.to_unix_nanos(WallClock::monotonic_now());
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(wall.abs_diff(real) < 5_000_000, "wall {wall} real {real}");
    }

    #[test]
    fn offset_is_applied() {
        assert_eq!(WallClock::with_offset(1_000).to_unix_nanos(5), 1_005);
        assert_eq!(WallClock::with_offset(-10).to_unix_nanos(5), 0);
        assert_eq!(WallClock::with_offset(1_000).to_monotonic_nanos(1_005), 5);
    }
}
