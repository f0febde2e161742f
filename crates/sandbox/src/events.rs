//! What happens to samples, as it happens: each sample's [`SampleState`], and one ordered
//! stream of [`SampleEvent`]s per [`Fleet`](crate::Fleet).
//!
//! Delivery: a subscriber ([`Fleet::subscribe`](crate::Fleet::subscribe)) receives every event
//! emitted after it subscribed, in emission order, with strictly increasing ids: one lock
//! assigns the id and sends, so every receiver sees the same order. A subscriber that falls more
//! than [`EVENT_BUFFER`] events behind loses the oldest and is told how many
//! (`broadcast::error::RecvError::Lagged`); it catches up from the registry
//! ([`Fleet::samples`](crate::Fleet::samples)) or from a sample's own history
//! ([`Sample::events`](crate::Sample::events)), which is complete.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;

use crate::error::ErrorKind;
use crate::owner::SampleId;

/// How many events a slow subscriber may fall behind before it loses the oldest: a sample
/// emits about 4 + 3 per VM, so this is the whole creation of ~100 five-VM samples at once.
pub const EVENT_BUFFER: usize = 1024;

/// Where a sample's creation, pause, resume or teardown failed; per-VM steps name the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Waiting for a lease from the pool.
    Lease,
    /// Creating and applying the sample's network.
    Network,
    /// Claiming a VM id and cloning the template.
    Clone {
        /// Sandbox name.
        vm: String,
    },
    /// Configuring the clone (NICs, resources, cloud-init).
    Configure {
        /// Sandbox name.
        vm: String,
    },
    /// Writing the VM's firewall.
    Firewall {
        /// Sandbox name.
        vm: String,
    },
    /// Starting the VM.
    Start {
        /// Sandbox name.
        vm: String,
    },
    /// Waiting for the VM's guest agent.
    Agent {
        /// Sandbox name.
        vm: String,
    },
    /// Pausing the VMs (`status/suspend`).
    Pause,
    /// Resuming the VMs (`status/resume`) and fixing their clocks.
    Resume,
    /// Removing the VMs and the network.
    Teardown,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Lease => f.write_str("lease"),
            Step::Network => f.write_str("network"),
            Step::Clone { vm } => write!(f, "clone of {vm:?}"),
            Step::Configure { vm } => write!(f, "configuration of {vm:?}"),
            Step::Firewall { vm } => write!(f, "firewall of {vm:?}"),
            Step::Start { vm } => write!(f, "start of {vm:?}"),
            Step::Agent { vm } => write!(f, "agent of {vm:?}"),
            Step::Pause => f.write_str("pause"),
            Step::Resume => f.write_str("resume"),
            Step::Teardown => f.write_str("teardown"),
        }
    }
}

/// Where a sample is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SampleState {
    /// Being created (lease, VMs, network, agents).
    Pending,
    /// Every sandbox's agent answers.
    Running,
    /// Its VMs are being paused.
    Pausing,
    /// Its VMs are paused with their RAM kept: nothing in them runs.
    Paused,
    /// Its VMs are being resumed.
    Resuming,
    /// Being removed.
    Terminating,
    /// Removed: nothing of it is left.
    Terminated,
    /// Creation or teardown failed at `step` (what creation made was removed again unless the
    /// teardown is what failed). It stays failed.
    Failed {
        /// Where.
        step: Step,
        /// What the caller can do about it.
        kind: ErrorKind,
        /// The error's text.
        message: String,
    },
}

/// One thing that happened to one sample.
#[derive(Debug, Clone)]
pub struct SampleEvent {
    /// Unique within the fleet, increasing in emission order.
    pub id: u64,
    /// The sample.
    pub sample: SampleId,
    /// Wall time it happened.
    pub at: SystemTime,
    /// Since the sample was asked for.
    pub elapsed: Duration,
    /// What happened.
    pub kind: EventKind,
}

/// What happened, in the order a sample's life emits them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// The pool leased it an instance.
    Leased {
        /// Instance id.
        instance: String,
    },
    /// A VM's clone task ended.
    VmCloned {
        /// Sandbox name.
        vm: String,
        /// Its VM id.
        vmid: pve_client::Vmid,
    },
    /// The sample's network is applied.
    NetworkReady {
        /// Its SDN zone, if it made one.
        zone: Option<String>,
        /// How long creating and applying it took.
        took: Duration,
    },
    /// A VM's start task ended.
    VmStarted {
        /// Sandbox name.
        vm: String,
        /// Its VM id.
        vmid: pve_client::Vmid,
    },
    /// A sandbox's guest agent answered.
    AgentReady {
        /// Sandbox name.
        vm: String,
    },
    /// Every sandbox is ready ([`SampleState::Running`]).
    Running,
    /// A step failed ([`SampleState::Failed`] for creation and teardown).
    Failed {
        /// Where.
        step: Step,
        /// What the caller can do about it.
        kind: ErrorKind,
        /// The error's text.
        message: String,
    },
    /// Its VMs are paused.
    Paused,
    /// Its VMs run again.
    Resumed,
    /// A process took it over from an earlier one that is gone ([`crate::Run::adopt`]): it
    /// is running, or paused when its VMs were.
    Adopted {
        /// Its VMs were paused.
        paused: bool,
    },
    /// Its expiry moved.
    Renewed {
        /// The new expiry.
        expires_at: SystemTime,
    },
    /// Everything it made is gone; the last event of every sample.
    TornDown,
}

impl EventKind {
    /// The state this event puts its sample in (a failed sample stays failed).
    fn state_after(&self, now: &SampleState) -> Option<SampleState> {
        if matches!(now, SampleState::Failed { .. }) {
            return None;
        }
        Some(match self {
            EventKind::Running | EventKind::Resumed => SampleState::Running,
            EventKind::Paused | EventKind::Adopted { paused: true } => SampleState::Paused,
            EventKind::Adopted { paused: false } => SampleState::Running,
            EventKind::TornDown => SampleState::Terminated,
            EventKind::Failed {
                step,
                kind,
                message,
            } if matches!(step, Step::Teardown) || matches!(now, SampleState::Pending) => {
                SampleState::Failed {
                    step: step.clone(),
                    kind: *kind,
                    message: message.clone(),
                }
            }
            _ => return None,
        })
    }
}

/// Where a sample's state and history live (shared by its handle and the fleet's registry).
pub(crate) struct Tracker {
    pub(crate) id: SampleId,
    began: Instant,
    state: Mutex<SampleState>,
    history: Mutex<Vec<SampleEvent>>,
}

impl Tracker {
    pub(crate) fn new(id: SampleId) -> Self {
        Tracker {
            id,
            began: Instant::now(),
            state: Mutex::new(SampleState::Pending),
            history: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn state(&self) -> SampleState {
        lock(&self.state).clone()
    }

    /// Moves to `to` if the state is one of `from`; otherwise says what it is.
    pub(crate) fn transition(
        &self,
        from: &[SampleState],
        to: SampleState,
    ) -> Result<(), SampleState> {
        let mut s = lock(&self.state);
        if from.contains(&s) {
            *s = to;
            Ok(())
        } else {
            Err(s.clone())
        }
    }

    pub(crate) fn set(&self, to: SampleState) {
        *lock(&self.state) = to;
    }

    pub(crate) fn history(&self) -> Vec<SampleEvent> {
        lock(&self.history).clone()
    }
}

/// The fleet's event stream.
pub(crate) struct Events {
    /// The next id and the sender, under one lock: ids go out in the order they are assigned.
    inner: Mutex<(u64, broadcast::Sender<SampleEvent>)>,
}

impl Events {
    pub(crate) fn new() -> Self {
        Events {
            inner: Mutex::new((1, broadcast::channel(EVENT_BUFFER).0)),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<SampleEvent> {
        lock(&self.inner).1.subscribe()
    }

    /// Records `kind` for the sample behind `t`: its state, its history, every subscriber.
    pub(crate) fn emit(&self, t: &Tracker, kind: EventKind) {
        let mut inner = lock(&self.inner);
        let ev = SampleEvent {
            id: inner.0,
            sample: t.id.clone(),
            at: SystemTime::now(),
            elapsed: t.began.elapsed(),
            kind,
        };
        inner.0 += 1;
        {
            let mut state = lock(&t.state);
            if let Some(next) = ev.kind.state_after(&state) {
                *state = next;
            }
        }
        lock(&t.history).push(ev.clone());
        // No subscriber is not an error: the history keeps it.
        let _ = inner.1.send(ev);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind these locks; a panic elsewhere leaves it consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
