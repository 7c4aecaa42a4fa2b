//! The fault schedule of a run: which fault, when, for how long.
//!
//! [`schedule`] is a pure function of the seed, so the same seed gives the
//! same schedule, step for step; a failing run prints it. Faults do not
//! overlap: each step injects one fault, holds it, and heals it (a crashed
//! process is started again, a failpoint turned off, the network healed)
//! before a quiet gap and the next step. [`crate::nemesis::run`] carries the
//! steps out.

use serde::{Deserialize, Serialize};

use crate::nemesis::proxy::{Direction, Faults};
use crate::rng::Rng;

/// One fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// Cut the link between one agent and the coordinator: one direction
    /// (`to_coordinator` true: agent to coordinator) or both.
    Partition {
        /// The agent (index into the run's stores).
        agent: usize,
        /// Which way is cut; `None` is both.
        to_coordinator: Option<bool>,
    },
    /// Make every agent's link lossy both ways: drops, duplicates,
    /// reordering and delays.
    Flaky {
        /// Probability a datagram is dropped.
        drop: f64,
        /// Probability a datagram is sent twice.
        duplicate: f64,
        /// Probability a datagram is held back behind the next.
        reorder: f64,
        /// Most extra delay of a datagram, in ms.
        delay_ms: u64,
    },
    /// SIGKILL the coordinator, then start it again on the same data.
    KillCoordinator,
    /// SIGKILL an agent, then start it again on the same replica.
    KillAgent {
        /// The agent.
        agent: usize,
    },
    /// SIGSTOP the coordinator for the hold, then SIGCONT.
    PauseCoordinator,
    /// SIGSTOP an agent for the hold, then SIGCONT.
    PauseAgent {
        /// The agent.
        agent: usize,
    },
    /// Configure a coordinator failpoint for the hold (`name=actions`);
    /// a crash it causes is healed by a restart.
    CoordinatorFailpoint {
        /// The failpoint.
        name: String,
        /// Its actions (`1*return`, `return(enospc)`, ...).
        actions: String,
    },
    /// Configure a failpoint of one agent for the hold.
    AgentFailpoint {
        /// The agent.
        agent: usize,
        /// The failpoint.
        name: String,
        /// Its actions.
        actions: String,
    },
}

impl Fault {
    /// The proxy settings of a [`Fault::Flaky`] link.
    pub fn proxy_faults(&self) -> Option<Faults> {
        match *self {
            Fault::Flaky {
                drop,
                duplicate,
                reorder,
                delay_ms,
            } => Some(Faults {
                drop,
                duplicate,
                reorder,
                delay_ms: (0, delay_ms),
                cut: false,
            }),
            _ => None,
        }
    }

    /// The direction a [`Fault::Partition`] cuts, `None` for both.
    pub fn partition_direction(to_coordinator: Option<bool>) -> Option<Direction> {
        to_coordinator.map(|up| {
            if up {
                Direction::ToUpstream
            } else {
                Direction::ToClient
            }
        })
    }
}

/// One step of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// When the fault starts, in ms after the run's start.
    pub at_ms: u64,
    /// How long it is held before it is healed.
    pub hold_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// The kinds of fault a schedule may draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// [`Fault::Partition`].
    Partition,
    /// [`Fault::Flaky`].
    Flaky,
    /// [`Fault::KillCoordinator`].
    KillCoordinator,
    /// [`Fault::KillAgent`].
    KillAgent,
    /// [`Fault::PauseCoordinator`] or [`Fault::PauseAgent`].
    Pause,
    /// [`Fault::CoordinatorFailpoint`]: crash and disk failpoints.
    CoordinatorFailpoint,
    /// [`Fault::AgentFailpoint`].
    AgentFailpoint,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Partition,
        Kind::Flaky,
        Kind::KillCoordinator,
        Kind::KillAgent,
        Kind::Pause,
        Kind::CoordinatorFailpoint,
        Kind::AgentFailpoint,
    ];
}

/// Which faults a schedule draws from, and how the steps are paced.
#[derive(Debug, Clone)]
pub struct Mix {
    /// The kinds drawn from, each equally likely.
    pub kinds: Vec<Kind>,
    /// Shortest and longest hold of a fault, in ms.
    pub hold_ms: (u64, u64),
    /// Shortest and longest quiet gap between two faults, in ms.
    pub gap_ms: (u64, u64),
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            kinds: Kind::ALL.to_vec(),
            hold_ms: (800, 2500),
            gap_ms: (300, 1200),
        }
    }
}

/// How long a pause holds, in ms: longer than a sync interval of a second
/// (a paused agent misses syncs, a paused coordinator misses everyone's).
const PAUSE_MS: (u64, u64) = (1500, 3000);

/// The coordinator's crash and disk failpoints the schedule draws from,
/// with the actions that trigger them (see docs/testing.md).
const COORDINATOR_FAILPOINTS: &[(&str, &str)] = &[
    ("coordinator-after-commit-before-ack", "1*return"),
    ("coordinator-ledger-commit", "1*return(enospc)"),
    ("coordinator-ledger-commit", "1*return(eio)"),
];

/// The agents' failpoints the schedule draws from.
const AGENT_FAILPOINTS: &[(&str, &str)] = &[
    ("agent-mid-replica-page", "1*return"),
    ("agent-after-forward-before-apply", "1*return"),
    ("agent-replica-write", "return(eio)"),
];

/// The steps for a run of `duration_ms` with `agents` agents, drawn from
/// `seed`. The last fault is healed before `duration_ms`.
pub fn schedule(seed: u64, duration_ms: u64, agents: usize, mix: &Mix) -> Vec<Step> {
    let mut rng = Rng::seeded(seed ^ 0xfa17_5eed);
    let mut steps = Vec::new();
    let mut at = between(&mut rng, mix.gap_ms);
    let agents = agents.max(1) as u64;
    loop {
        let Some(fault) = draw(&mut rng, agents, mix) else {
            return steps;
        };
        let hold = match fault {
            Fault::PauseCoordinator | Fault::PauseAgent { .. } => PAUSE_MS,
            _ => mix.hold_ms,
        };
        let hold_ms = between(&mut rng, hold);
        if at + hold_ms >= duration_ms {
            return steps;
        }
        steps.push(Step {
            at_ms: at,
            hold_ms,
            fault,
        });
        at += hold_ms + between(&mut rng, mix.gap_ms);
    }
}

fn draw(rng: &mut Rng, agents: u64, mix: &Mix) -> Option<Fault> {
    if mix.kinds.is_empty() {
        return None;
    }
    let agent = rng.below(agents) as usize;
    let kind = mix.kinds[rng.below(mix.kinds.len() as u64) as usize];
    Some(match kind {
        Kind::Partition => Fault::Partition {
            agent,
            to_coordinator: match rng.below(3) {
                0 => None,
                1 => Some(true),
                _ => Some(false),
            },
        },
        Kind::Flaky => Fault::Flaky {
            drop: 0.05 + rng.below(20) as f64 / 100.0,
            duplicate: rng.below(10) as f64 / 100.0,
            reorder: rng.below(10) as f64 / 100.0,
            delay_ms: rng.below(80),
        },
        Kind::KillCoordinator => Fault::KillCoordinator,
        Kind::KillAgent => Fault::KillAgent { agent },
        Kind::Pause if rng.below(2) == 0 => Fault::PauseCoordinator,
        Kind::Pause => Fault::PauseAgent { agent },
        Kind::CoordinatorFailpoint => {
            let (name, actions) =
                COORDINATOR_FAILPOINTS[rng.below(COORDINATOR_FAILPOINTS.len() as u64) as usize];
            Fault::CoordinatorFailpoint {
                name: name.into(),
                actions: actions.into(),
            }
        }
        Kind::AgentFailpoint => {
            let (name, actions) =
                AGENT_FAILPOINTS[rng.below(AGENT_FAILPOINTS.len() as u64) as usize];
            Fault::AgentFailpoint {
                agent,
                name: name.into(),
                actions: actions.into(),
            }
        }
    })
}

/// A number in `range` (inclusive).
fn between(rng: &mut Rng, (low, high): (u64, u64)) -> u64 {
    low + rng.below(high.saturating_sub(low) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let mix = Mix::default();
        let a = schedule(42, 60_000, 3, &mix);
        assert!(a.len() > 10, "{a:?}");
        assert_eq!(a, schedule(42, 60_000, 3, &mix));
        assert_ne!(a, schedule(43, 60_000, 3, &mix));
    }

    #[test]
    fn steps_do_not_overlap_and_end_before_the_run() {
        let steps = schedule(7, 30_000, 3, &Mix::default());
        for pair in steps.windows(2) {
            assert!(pair[0].at_ms + pair[0].hold_ms < pair[1].at_ms, "{pair:?}");
        }
        let last = steps.last().map_or(0, |s| s.at_ms + s.hold_ms);
        assert!(last < 30_000);
        for step in &steps {
            if let Fault::KillAgent { agent }
            | Fault::PauseAgent { agent }
            | Fault::Partition { agent, .. }
            | Fault::AgentFailpoint { agent, .. } = step.fault
            {
                assert!(agent < 3);
            }
        }
    }

    #[test]
    fn a_mix_without_process_faults_draws_only_network_faults() {
        let mix = Mix {
            kinds: vec![Kind::Partition, Kind::Flaky],
            ..Mix::default()
        };
        let steps = schedule(1, 60_000, 3, &mix);
        assert!(!steps.is_empty());
        assert!(
            steps
                .iter()
                .all(|s| matches!(s.fault, Fault::Partition { .. } | Fault::Flaky { .. }))
        );
    }
}
