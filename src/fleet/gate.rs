//! The activation gate between calls and script changes: the call pipeline holds a
//! [`CallInProgress`] for each call, and a staged script becomes active only while none is
//! held, so a call always finishes on the script it started with.

use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Default)]
pub struct ActivationGate {
    calls: Arc<Mutex<usize>>,
}

/// Held for the duration of one call.
#[derive(Debug)]
pub struct CallInProgress {
    calls: Arc<Mutex<usize>>,
}

impl Drop for CallInProgress {
    fn drop(&mut self) {
        let mut n = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
    }
}

/// While held, no call can start: the activation happens between calls.
pub struct IdleLine<'a> {
    _calls: MutexGuard<'a, usize>,
}

impl ActivationGate {
    pub fn new() -> ActivationGate {
        ActivationGate::default()
    }

    /// Marks a call as started (waits if a script is being activated at this instant).
    pub fn call_started(&self) -> CallInProgress {
        *self.calls.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        CallInProgress {
            calls: self.calls.clone(),
        }
    }

    pub fn calls_in_progress(&self) -> usize {
        *self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The line held idle, or `None` when a call is in progress.
    pub fn hold_idle(&self) -> Option<IdleLine<'_>> {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        (*calls == 0).then_some(IdleLine { _calls: calls })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_idle_only_when_no_call_is_held() {
        let gate = ActivationGate::new();
        assert!(gate.hold_idle().is_some());
        let a = gate.call_started();
        let b = gate.clone().call_started();
        assert_eq!(gate.calls_in_progress(), 2);
        assert!(gate.hold_idle().is_none());
        drop(a);
        assert!(gate.hold_idle().is_none());
        drop(b);
        assert!(gate.hold_idle().is_some());
    }
}
