//! `PoolSupervisor`: hands out exclusive leases on instances, in FIFO order per pool, placing
//! each sample on the instance with the most free capacity.
//!
//! Capacity per instance: `max_samples` (default 1: the peer's one sample per host), a RAM and
//! a vCPU budget (declared, else the node's size from the probe). A [`Lease`] holds
//! `needs` of one instance until dropped; the drop returns the slot even on panic or
//! cancellation. A lease released *dirty* (its cleanup failed) quarantines the instance: it
//! takes no new samples while a background task retries the cleanup with backoff, so a failed
//! cleanup delays evals instead of blocking them forever.
//!
//! Queueing: `Acquire` answers at once with a oneshot receiver; the caller awaits it with its
//! own deadline. A waiter whose caller gave up (receiver dropped) is skipped, and a lease sent
//! to a caller that vanished in between is returned at once. Waiters of one pool are served
//! strictly in order (nobody starves behind smaller requests); pools do not block each other.
//!
//! If the actor system stops (the pool is shut down), outstanding leases become inert: their
//! drop has no one to tell, and `acquire` answers [`PoolError::ShutDown`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use crate::error::PoolError;
use crate::instance::InstanceHandle;

/// What one sample needs from an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// RAM of all its VMs, MiB.
    pub ram_mb: u64,
    /// vCPUs of all its VMs.
    pub vcpus: u32,
}

/// An instance's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Samples at once.
    pub max_samples: u32,
    /// RAM, MiB.
    pub ram_mb: u64,
    /// vCPUs.
    pub vcpus: u32,
}

/// A cleanup to retry for a quarantined instance; `Ok` lifts the quarantine.
pub type CleanupRetry = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Knobs of the supervisor.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// First wait before retrying a failed cleanup.
    pub retry_initial: Duration,
    /// Longest wait between cleanup retries.
    pub retry_max: Duration,
}

impl Default for PoolOptions {
    /// Retry a failed cleanup after 2 s, backing off to once a minute.
    fn default() -> Self {
        PoolOptions {
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
        }
    }
}

pub(crate) struct Slot {
    pub pool: String,
    pub handle: InstanceHandle,
    pub cap: Capacity,
    pub used: Capacity,
    pub quarantined: bool,
}

impl Slot {
    fn fits(&self, n: Needs) -> bool {
        !self.quarantined
            && self.used.max_samples < self.cap.max_samples
            && self.used.ram_mb + n.ram_mb <= self.cap.ram_mb
            && self.used.vcpus + n.vcpus <= self.cap.vcpus
    }
    /// The scarcest of the three resources after placing `n`, as a fraction of the budget.
    fn free_after(&self, n: Needs) -> f64 {
        let f = |used: f64, need: f64, cap: f64| {
            if cap <= 0.0 {
                0.0
            } else {
                (cap - used - need) / cap
            }
        };
        f(
            self.used.max_samples as f64,
            1.0,
            self.cap.max_samples as f64,
        )
        .min(f(
            self.used.ram_mb as f64,
            n.ram_mb as f64,
            self.cap.ram_mb as f64,
        ))
        .min(f(
            self.used.vcpus as f64,
            n.vcpus as f64,
            self.cap.vcpus as f64,
        ))
    }
}

struct Waiter {
    pool: String,
    needs: Needs,
    tx: oneshot::Sender<Lease>,
}

/// The supervisor actor.
pub struct PoolSupervisor {
    slots: Vec<Slot>,
    waiters: VecDeque<Waiter>,
    next_lease: u64,
    opts: PoolOptions,
}

impl Actor for PoolSupervisor {
    type Context = Context<Self>;
}

impl PoolSupervisor {
    pub(crate) fn new(slots: Vec<Slot>, opts: PoolOptions) -> Self {
        PoolSupervisor {
            slots,
            waiters: VecDeque::new(),
            next_lease: 1,
            opts,
        }
    }

    /// Serves waiters in order; within a pool, stops at the first that does not fit.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        let mut blocked: Vec<String> = Vec::new();
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            if w.tx.is_closed() {
                self.waiters.remove(i);
                continue;
            }
            if blocked.contains(&w.pool) {
                i += 1;
                continue;
            }
            let best = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.pool == w.pool && s.fits(w.needs))
                .max_by(|(ia, a), (ib, b)| {
                    a.free_after(w.needs)
                        .total_cmp(&b.free_after(w.needs))
                        .then(ib.cmp(ia))
                })
                .map(|(idx, _)| idx);
            let Some(idx) = best else {
                blocked.push(w.pool.clone());
                i += 1;
                continue;
            };
            let w = self.waiters.remove(i).expect("index checked");
            let lease = self.grant(idx, w.needs, ctx);
            if let Err(mut lease) = w.tx.send(lease) {
                // The caller gave up between our check and the send: take the slot back.
                lease.supervisor = None;
                self.give_back(idx, lease.needs);
            }
        }
    }

    /// Counts `n` on slot `idx` and hands out the lease that gives it back.
    fn grant(&mut self, idx: usize, n: Needs, ctx: &mut Context<Self>) -> Lease {
        let slot = &mut self.slots[idx];
        slot.used.max_samples += 1;
        slot.used.ram_mb += n.ram_mb;
        slot.used.vcpus += n.vcpus;
        let lease = Lease {
            id: self.next_lease,
            slot: idx,
            pool: slot.pool.clone(),
            needs: n,
            instance: slot.handle.clone(),
            supervisor: Some(ctx.address()),
        };
        self.next_lease += 1;
        lease
    }

    fn give_back(&mut self, idx: usize, n: Needs) {
        let s = &mut self.slots[idx];
        s.used.max_samples -= 1;
        s.used.ram_mb -= n.ram_mb;
        s.used.vcpus -= n.vcpus;
    }

    fn stats(&self) -> PoolStats {
        PoolStats {
            waiting: self.waiters.iter().filter(|w| !w.tx.is_closed()).count(),
            instances: self
                .slots
                .iter()
                .map(|s| InstanceStats {
                    id: s.handle.id().to_owned(),
                    pool: s.pool.clone(),
                    cap: s.cap,
                    used: s.used,
                    quarantined: s.quarantined,
                })
                .collect(),
        }
    }

    fn quarantine(&mut self, idx: usize, retry: CleanupRetry, ctx: &mut Context<Self>) {
        self.slots[idx].quarantined = true;
        let id = self.slots[idx].handle.id().to_owned();
        tracing::warn!(instance = %id, "cleanup failed: instance quarantined, retrying in the background");
        let opts = self.opts;
        let me = ctx.address();
        ctx.spawn(
            async move {
                let mut pause = opts.retry_initial;
                loop {
                    // Backoff schedule: retry_initial doubling to retry_max, until it succeeds.
                    tokio::time::sleep(pause).await;
                    match retry().await {
                        Ok(()) => break,
                        Err(e) => tracing::warn!(instance = %id, error = %e, ?pause, "cleanup retry failed"),
                    }
                    pause = (pause * 2).min(opts.retry_max);
                }
                // `send`, not `do_send`: lifting a quarantine must not be lost.
                let _ = me.send(Unquarantine { slot: idx }).await;
            }
            .into_actor(self),
        );
    }
}

/// Asks for a lease; answers with the receiver the lease will arrive on.
#[derive(Message)]
#[rtype(result = "Result<oneshot::Receiver<Lease>, PoolError>")]
pub(crate) struct Acquire {
    pub pool: String,
    pub needs: Needs,
}

impl Handler<Acquire> for PoolSupervisor {
    type Result = MessageResult<Acquire>;
    fn handle(&mut self, msg: Acquire, ctx: &mut Context<Self>) -> Self::Result {
        let in_pool: Vec<&Slot> = self.slots.iter().filter(|s| s.pool == msg.pool).collect();
        if in_pool.is_empty() {
            let mut known: Vec<String> = self.slots.iter().map(|s| s.pool.clone()).collect();
            known.sort();
            known.dedup();
            return MessageResult(Err(PoolError::UnknownPool {
                pool: msg.pool,
                known,
            }));
        }
        if !in_pool
            .iter()
            .any(|s| s.cap.ram_mb >= msg.needs.ram_mb && s.cap.vcpus >= msg.needs.vcpus)
        {
            return MessageResult(Err(PoolError::NeverFits {
                pool: msg.pool,
                ram_mb: msg.needs.ram_mb,
                vcpus: msg.needs.vcpus,
                max_ram_mb: in_pool.iter().map(|s| s.cap.ram_mb).max().unwrap_or(0),
                max_vcpus: in_pool.iter().map(|s| s.cap.vcpus).max().unwrap_or(0),
            }));
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back(Waiter {
            pool: msg.pool,
            needs: msg.needs,
            tx,
        });
        self.dispatch(ctx);
        MessageResult(Ok(rx))
    }
}

/// Counts a sample that already exists on one instance (made by another process, found by
/// attaching): a lease at once, over budget if need be, since refusing frees nothing.
#[derive(Message)]
#[rtype(result = "Result<Lease, PoolError>")]
pub(crate) struct Adopt {
    pub instance: String,
    pub needs: Needs,
}

impl Handler<Adopt> for PoolSupervisor {
    type Result = MessageResult<Adopt>;
    fn handle(&mut self, msg: Adopt, ctx: &mut Context<Self>) -> Self::Result {
        let Some(idx) = self
            .slots
            .iter()
            .position(|s| s.handle.id() == msg.instance)
        else {
            return MessageResult(Err(PoolError::Config {
                field: "instance_id".into(),
                message: format!("{:?} is not an instance of this pool", msg.instance),
            }));
        };
        MessageResult(Ok(self.grant(idx, msg.needs, ctx)))
    }
}

/// Returns a lease's slot; `retry` set means its cleanup failed and must be retried.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Release {
    slot: usize,
    needs: Needs,
    retry: Option<CleanupRetry>,
}

impl Handler<Release> for PoolSupervisor {
    type Result = ();
    fn handle(&mut self, msg: Release, ctx: &mut Context<Self>) {
        self.give_back(msg.slot, msg.needs);
        if let Some(retry) = msg.retry {
            self.quarantine(msg.slot, retry, ctx);
        }
        self.dispatch(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Unquarantine {
    slot: usize,
}

impl Handler<Unquarantine> for PoolSupervisor {
    type Result = ();
    fn handle(&mut self, msg: Unquarantine, ctx: &mut Context<Self>) {
        tracing::info!(instance = %self.slots[msg.slot].handle.id(), "cleanup retry succeeded: instance back in service");
        self.slots[msg.slot].quarantined = false;
        self.dispatch(ctx);
    }
}

/// Asks for a snapshot of the pool's state.
#[derive(Message)]
#[rtype(result = "PoolStats")]
pub(crate) struct GetStats;

impl Handler<GetStats> for PoolSupervisor {
    type Result = MessageResult<GetStats>;
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats())
    }
}

/// A snapshot of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStats {
    /// Callers waiting for a lease.
    pub waiting: usize,
    /// Per instance.
    pub instances: Vec<InstanceStats>,
}

/// One instance in [`PoolStats`].
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceStats {
    /// Instance id.
    pub id: String,
    /// Pool.
    pub pool: String,
    /// Budget.
    pub cap: Capacity,
    /// In use (`max_samples` counts samples).
    pub used: Capacity,
    /// Waiting for a cleanup retry.
    pub quarantined: bool,
}

/// Exclusive use of `needs` on one instance. Dropping it returns the slot.
pub struct Lease {
    id: u64,
    slot: usize,
    pool: String,
    needs: Needs,
    instance: InstanceHandle,
    supervisor: Option<Addr<PoolSupervisor>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("pool", &self.pool)
            .field("instance", &self.instance.id())
            .field("needs", &self.needs)
            .finish()
    }
}

impl Lease {
    /// A number unique within this pool.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The pool it came from.
    pub fn pool(&self) -> &str {
        &self.pool
    }
    /// What it reserves.
    pub fn needs(&self) -> Needs {
        self.needs
    }
    /// The instance it is on.
    pub fn instance(&self) -> &InstanceHandle {
        &self.instance
    }

    /// Returns the slot after a failed cleanup: the instance is quarantined until `retry`
    /// succeeds (retried in the background with backoff).
    pub fn release_dirty(mut self, retry: CleanupRetry) {
        self.send_release(Some(retry));
    }

    fn send_release(&mut self, retry: Option<CleanupRetry>) {
        if let Some(sup) = self.supervisor.take() {
            // `do_send` because `Drop` cannot await. It bypasses the mailbox limit, so it is not
            // dropped while the supervisor lives; if the supervisor is gone, so is the slot.
            sup.do_send(Release {
                slot: self.slot,
                needs: self.needs,
                retry,
            });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.send_release(None);
    }
}

pub(crate) fn deadline_error(pool: &str, waited: Duration, stats: Option<&PoolStats>) -> PoolError {
    let (busy, quarantined) = stats.map_or((0, 0), |s| {
        let mine = s.instances.iter().filter(|i| i.pool == pool);
        let q = mine.clone().filter(|i| i.quarantined).count();
        (mine.count() - q, q)
    });
    PoolError::Timeout {
        pool: pool.to_owned(),
        waited,
        busy,
        quarantined,
    }
}

pub(crate) fn elapsed_since(t: Instant) -> Duration {
    t.elapsed()
}
