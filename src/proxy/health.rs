//! Target health for routes with a cooldown: a circuit breaker per provider and model. A
//! target that fails a number of calls in a row is tried last for a while; then one request
//! at a time probes it, and a success puts it back in rotation.
//!
//! Health is kept across config reloads (targets are known by `provider/model`), so a
//! reload does not put a failing target back early.

use crate::policy::{Cooldown, Target};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub struct Health {
    states: Mutex<HashMap<String, State>>,
}

#[derive(Default)]
struct State {
    /// Failed calls in a row.
    failures: u32,
    /// Out of rotation until then.
    cooling_until: Option<Instant>,
    /// A request was let through to probe it since then.
    probing_since: Option<Instant>,
}

impl Health {
    /// Moves targets that are cooling down to the end, keeping the order otherwise. A
    /// target whose cooldown has passed stays in place for one request, its probe.
    pub fn order(&self, targets: &mut [Target], cooldown: &Cooldown) {
        let now = Instant::now();
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut cooling = |t: &Target| -> bool {
            let Some(state) = states.get_mut(&t.label()) else {
                return false;
            };
            match state.cooling_until {
                Some(until) if now < until => true,
                Some(_) => {
                    // One probe at a time; a probe that never got its turn (an earlier
                    // target answered) is retried after another period.
                    let probe_due = state
                        .probing_since
                        .is_none_or(|since| now.duration_since(since) >= cooldown.period);
                    if probe_due {
                        state.probing_since = Some(now);
                    }
                    !probe_due
                }
                None => false,
            }
        };
        let flags: Vec<bool> = targets.iter().map(&mut cooling).collect();
        let mut keyed: Vec<(bool, usize)> = flags.into_iter().zip(0..).collect();
        keyed.sort_by_key(|&(cool, i)| (cool, i));
        let reordered: Vec<Target> = keyed.iter().map(|&(_, i)| targets[i].clone()).collect();
        targets.clone_from_slice(&reordered);
    }

    /// Notes a call's result; true when it took the target out of rotation.
    pub fn record(&self, target: &Target, ok: bool, cooldown: &Cooldown) -> bool {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            states.remove(&target.label());
            return false;
        }
        let state = states.entry(target.label()).or_default();
        state.failures += 1;
        let probe_failed = state.probing_since.is_some();
        if probe_failed || state.failures >= cooldown.failures {
            state.cooling_until = Some(Instant::now() + cooldown.period);
            state.probing_since = None;
            state.failures = 0;
            return true;
        }
        false
    }
}
