//! Reconnection delays while the broker is unreachable: exponential bounds with full jitter, so
//! a fleet of boxes coming back after an outage does not reconnect in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    bound: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            bound: min,
        }
    }

    /// The next delay: uniform between `min` and the current bound, which then doubles up to
    /// `max`.
    pub fn next_delay(&mut self) -> Duration {
        let span = self.bound.saturating_sub(self.min);
        let delay = self.min + span.mul_f64(random_unit());
        self.bound = (self.bound * 2).min(self.max);
        delay
    }

    /// Back to the shortest delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.bound = self.min;
    }
}

/// A random number in [0, 1) from the operating system; 0.5 if it cannot give one.
fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_bound_and_stay_jittered_within_it() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(100)));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        // Once the bound reached its maximum, delays spread over the range.
        let late = &delays[10..];
        let distinct: std::collections::HashSet<_> = late.iter().collect();
        assert!(distinct.len() > 20, "jitter varies the delays: {late:?}");
        assert!(late.iter().any(|d| *d > Duration::from_millis(600)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
