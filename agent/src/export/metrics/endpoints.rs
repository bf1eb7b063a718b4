//! Which chosen endpoints may be a metric label (`infertap.epp.endpoint`): the destinations the
//! endpoint picker's decisions named, at most [`ENDPOINTS_MAX`] at a time, else [`OTHER`].
//!
//! Endpoints are pods' `ip:port`: bounded by the pool's size at any moment, but not over time
//! (pods come and go with new addresses). An endpoint is let in first come while there is room;
//! one not named by a decision for the idle time (the metrics' `DEFAULT_IDLE_AFTER`, when its
//! series are removed too) gives its place up to a newcomer. Labelling a known endpoint does not
//! allocate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::bounded;

/// The label value of an endpoint past the cap.
pub const OTHER: &str = "other";
/// Endpoints labelled at a time (a pool of model servers is far smaller).
pub const ENDPOINTS_MAX: usize = 128;

#[derive(Debug)]
pub struct EndpointLabels {
    /// Endpoint → last named by a decision.
    seen: HashMap<Box<str>, Instant>,
    max: usize,
    idle_after: Duration,
}

impl EndpointLabels {
    pub fn new(max: usize, idle_after: Duration) -> EndpointLabels {
        EndpointLabels {
            seen: HashMap::new(),
            max,
            idle_after,
        }
    }

    /// The label value of `endpoint` named by a decision at `now`: itself (bounded) when it has
    /// a place, else [`OTHER`].
    pub fn label<'a>(&mut self, endpoint: &'a str, now: Instant) -> &'a str {
        let e = bounded(endpoint);
        if let Some(t) = self.seen.get_mut(e) {
            *t = now;
            return e;
        }
        if self.seen.len() >= self.max {
            let idle = self.idle_after;
            self.seen
                .retain(|_, t| now.saturating_duration_since(*t) < idle);
        }
        if self.seen.len() >= self.max {
            return OTHER;
        }
        self.seen.insert(e.into(), now);
        e
    }

    /// Endpoints holding a place.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_endpoints_are_other_until_one_goes_idle() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(600);
        let mut l = EndpointLabels::new(2, idle);
        assert_eq!(l.label("10.0.0.1:8000", t0), "10.0.0.1:8000");
        assert_eq!(l.label("10.0.0.2:8000", t0), "10.0.0.2:8000");
        assert_eq!(l.label("10.0.0.3:8000", t0), OTHER);
        // A known one keeps its place (and is refreshed).
        let later = t0 + Duration::from_secs(400);
        assert_eq!(l.label("10.0.0.1:8000", later), "10.0.0.1:8000");
        // .2 has been idle for the idle time: its place goes to the newcomer; .1 stays.
        let much_later = t0 + idle + Duration::from_secs(1);
        assert_eq!(l.label("10.0.0.3:8000", much_later), "10.0.0.3:8000");
        assert_eq!(l.label("10.0.0.1:8000", much_later), "10.0.0.1:8000");
        assert_eq!(l.label("10.0.0.2:8000", much_later), OTHER);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn long_values_are_cut() {
        let mut l = EndpointLabels::new(4, Duration::from_secs(1));
        let long = "x".repeat(1000);
        assert_eq!(
            l.label(&long, Instant::now()).len(),
            super::super::MAX_LABEL_VALUE_LEN
        );
    }
}
