//! Liveness: each long-running loop of the agent (the pipeline task, the targeting thread) beats
//! a [`Heartbeat`] as it makes progress, saying what it is doing; [`Liveness::stalled`] names every
//! loop whose last beat is older than its limit, and what it was doing then. `/healthz` answers
//! 503 with that, so a stalled pipeline gets the pod restarted.
//!
//! Owns the heartbeats and nothing else: no I/O, no threads. The clock is a function, so tests
//! stall a heartbeat by moving a manual clock instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

struct Beat {
    name: &'static str,
    limit_ms: u64,
    /// The clock's reading at the last beat, ms.
    last_ms: AtomicU64,
    /// What the loop said it was doing at its last beat.
    doing: Mutex<&'static str>,
}

/// The heartbeats of the agent's loops.
#[derive(Clone)]
pub struct Liveness {
    clock: Clock,
    beats: Arc<Mutex<Vec<Arc<Beat>>>>,
}

/// One loop's heartbeat (cheap to beat: an atomic store and an uncontended lock).
pub struct Heartbeat {
    beat: Arc<Beat>,
    clock: Clock,
}

impl Heartbeat {
    /// The loop made progress and is now `doing` this.
    pub fn beat(&self, doing: &'static str) {
        self.beat.last_ms.store((self.clock)(), Ordering::Relaxed);
        *self.beat.doing.lock().unwrap_or_else(|e| e.into_inner()) = doing;
    }
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness::new()
    }
}

impl Liveness {
    /// Heartbeats on the monotonic clock.
    pub fn new() -> Liveness {
        let start = Instant::now();
        Liveness::with_clock(Arc::new(move || start.elapsed().as_millis() as u64))
    }

    /// Heartbeats on `clock` (milliseconds): the test hook.
    pub fn with_clock(clock: Clock) -> Liveness {
        Liveness {
            clock,
            beats: Arc::default(),
        }
    }

    /// A new loop, stale when it has not beaten for `limit`; it counts as having beaten now.
    pub fn register(&self, name: &'static str, limit: Duration) -> Heartbeat {
        let beat = Arc::new(Beat {
            name,
            limit_ms: limit.as_millis() as u64,
            last_ms: AtomicU64::new((self.clock)()),
            doing: Mutex::new("starting"),
        });
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(beat.clone());
        Heartbeat {
            beat,
            clock: self.clock.clone(),
        }
    }

    /// Every loop past its limit, as "`name`: no progress for N s (limit L s) while `doing`".
    pub fn stalled(&self) -> Vec<String> {
        let now = (self.clock)();
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|b| {
                let since = now.saturating_sub(b.last_ms.load(Ordering::Relaxed));
                (since > b.limit_ms).then(|| {
                    let doing = *b.doing.lock().unwrap_or_else(|e| e.into_inner());
                    format!(
                        "{}: no progress for {:.1} s (limit {} s) while {doing}",
                        b.name,
                        since as f64 / 1000.0,
                        b.limit_ms / 1000
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_past_its_limit_is_named_with_what_it_was_doing() {
        let now = Arc::new(AtomicU64::new(0));
        let clock = now.clone();
        let l = Liveness::with_clock(Arc::new(move || clock.load(Ordering::Relaxed)));
        let pipeline = l.register("pipeline", Duration::from_secs(30));
        let targeting = l.register("targeting", Duration::from_secs(30));
        pipeline.beat("attaching TLS uprobes");
        now.store(20_000, Ordering::Relaxed);
        targeting.beat("scanning /proc");
        assert!(l.stalled().is_empty());
        now.store(31_000, Ordering::Relaxed);
        assert_eq!(
            l.stalled(),
            vec!["pipeline: no progress for 31.0 s (limit 30 s) while attaching TLS uprobes"]
        );
        pipeline.beat("draining the ring buffer");
        assert!(l.stalled().is_empty());
    }
}
