//! `VmidAllocator`: VM ids from a configured range, safe across processes without a lock server.
//!
//! `GET /cluster/nextid` followed by a create is a race: two processes read the same id. PVE's
//! *create* is atomic instead (the config file is created exclusively under the cluster lock),
//! so we allocate by creating: try an id, and when Proxmox answers that it already exists, move
//! on to the next one. An id that is still present in PVE can never be handed out, because its
//! create fails. Inside one process, ids being tried or held are reserved so concurrent
//! allocations do not even try the same id.
//!
//! The cursor moves round-robin through the range, so a just-released id (whose VM PVE may
//! still be removing) is the last to be tried again.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use pve_client::Vmid;

use crate::config::VmidRange;

/// Why allocation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// Every id in the range exists already (ours or someone else's).
    #[error(
        "no free VM id in {start}-{end}: all {tried} ids tried exist already; widen vmid_range or clean up"
    )]
    Exhausted {
        /// First id of the range.
        start: u32,
        /// Last id of the range.
        end: u32,
        /// How many ids were tried.
        tried: u64,
    },
    /// The create call failed for another reason than a taken id.
    #[error("creating VM {vmid} failed: {source}")]
    Create {
        /// The id that was tried.
        vmid: Vmid,
        /// PVE's error.
        #[source]
        source: pve_client::Error,
    },
}

#[derive(Debug)]
struct State {
    /// Ids this process holds (created and not released) or is trying right now.
    reserved: BTreeSet<u32>,
    /// Next id to try.
    cursor: u32,
}

/// Hands out VM ids by creating with them. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct VmidAllocator {
    range: VmidRange,
    state: Arc<Mutex<State>>,
}

/// Un-reserves an id on drop unless the create succeeded: cancelling `allocate` (or a failed
/// create) must not leak the id from this process's view. If the cancelled create did reach
/// PVE, the id is safe anyway: the next try of it fails with "already exists".
struct Reservation<'a> {
    alloc: &'a VmidAllocator,
    id: u32,
    committed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.alloc.lock().reserved.remove(&self.id);
        }
    }
}

impl VmidAllocator {
    /// An allocator over `range`.
    pub fn new(range: VmidRange) -> Self {
        VmidAllocator {
            range,
            state: Arc::new(Mutex::new(State {
                reserved: BTreeSet::new(),
                cursor: range.start,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The range.
    pub fn range(&self) -> VmidRange {
        self.range
    }

    /// Reserves the next id not reserved by this process, or `None` if all are.
    fn reserve_next(&self) -> Option<u32> {
        let mut st = self.lock();
        let n = self.range.len();
        for _ in 0..n {
            let id = st.cursor;
            st.cursor = if id >= self.range.end {
                self.range.start
            } else {
                id + 1
            };
            if st.reserved.insert(id) {
                return Some(id);
            }
        }
        None
    }

    /// Tries ids until `create(id)` succeeds; returns the id and what `create` returned.
    ///
    /// `create` must make the id taken in PVE atomically (create or clone the VM). An error for
    /// which [`pve_client::Error::is_already_exists`] holds moves on to the next id; any other
    /// error ends the allocation. Each id of the range is tried at most once per call.
    pub async fn allocate<F, Fut, T>(&self, mut create: F) -> Result<(Vmid, T), AllocError>
    where
        F: FnMut(Vmid) -> Fut,
        Fut: Future<Output = Result<T, pve_client::Error>>,
    {
        let mut tried = 0u64;
        while tried < self.range.len() {
            let Some(id) = self.reserve_next() else { break };
            tried += 1;
            let mut guard = Reservation {
                alloc: self,
                id,
                committed: false,
            };
            match create(Vmid(id)).await {
                Ok(t) => {
                    guard.committed = true;
                    return Ok((Vmid(id), t));
                }
                Err(e) if e.is_already_exists() => {
                    tracing::debug!(vmid = id, "id taken in PVE, trying the next");
                }
                Err(source) => {
                    return Err(AllocError::Create {
                        vmid: Vmid(id),
                        source,
                    });
                }
            }
        }
        Err(AllocError::Exhausted {
            start: self.range.start,
            end: self.range.end,
            tried,
        })
    }

    /// Gives an id back after its VM was destroyed.
    pub fn release(&self, vmid: Vmid) {
        self.lock().reserved.remove(&vmid.0);
    }

    /// Ids this process holds (or is trying).
    pub fn held(&self) -> Vec<Vmid> {
        self.lock().reserved.iter().map(|i| Vmid(*i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// PVE's one property that matters here: create is atomic and refuses a taken id.
    #[derive(Default)]
    struct FakePve {
        vms: Mutex<BTreeMap<u32, usize>>,
    }

    impl FakePve {
        async fn create(&self, id: Vmid, owner: usize) -> Result<(), pve_client::Error> {
            // Yield so concurrent allocations really interleave.
            tokio::task::yield_now().await;
            let mut vms = self.vms.lock().unwrap();
            if vms.contains_key(&id.0) {
                return Err(pve_client::Error::Api {
                    method: "POST",
                    path: "/nodes/pve1/qemu".into(),
                    status: 500,
                    message: format!("unable to create VM {id}: config file already exists"),
                    errors: Default::default(),
                });
            }
            vms.insert(id.0, owner);
            Ok(())
        }
        fn destroy(&self, id: Vmid) {
            self.vms.lock().unwrap().remove(&id.0);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Allocator `a` allocates `n` ids concurrently.
        Alloc(usize, usize),
        /// Allocator `a` destroys and releases its `k`-th held id.
        Release(usize, usize),
        /// Allocator `a` crashes: its VMs stay in PVE, a fresh allocator takes its place.
        Crash(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 1..5usize).prop_map(|(a, n)| Op::Alloc(a, n)),
            (0..3usize, 0..8usize).prop_map(|(a, k)| Op::Release(a, k)),
            (0..3usize).prop_map(Op::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn never_twice_and_all_eventually_free(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let range = VmidRange::new(1000, 1011).unwrap();
                let pve = FakePve::default();
                let mut allocs: Vec<VmidAllocator> = (0..3).map(|_| VmidAllocator::new(range)).collect();
                // Owner generation per slot: a crashed allocator's VMs belong to an old owner.
                let mut owner: Vec<usize> = vec![0, 1, 2];
                let mut next_owner = 3;
                let mut orphans: Vec<Vmid> = Vec::new();
                for op in ops {
                    match op {
                        Op::Alloc(a, n) => {
                            let alloc = allocs[a].clone();
                            let me = owner[a];
                            let futs = (0..n).map(|_| alloc.allocate(|id| pve.create(id, me)));
                            for r in futures_util::future::join_all(futs).await {
                                match r {
                                    Ok((id, ())) => prop_assert_eq!(pve.vms.lock().unwrap().get(&id.0).copied(), Some(me)),
                                    Err(AllocError::Exhausted { .. }) => {}
                                    Err(e) => prop_assert!(false, "{e}"),
                                }
                            }
                        }
                        Op::Release(a, k) => {
                            let held = allocs[a].held();
                            if let Some(id) = held.get(k % held.len().max(1)).copied() {
                                pve.destroy(id);
                                allocs[a].release(id);
                            }
                        }
                        Op::Crash(a) => {
                            orphans.extend(allocs[a].held());
                            allocs[a] = VmidAllocator::new(range);
                            owner[a] = next_owner;
                            next_owner += 1;
                        }
                    }
                    // No id is held by two live allocators, and every held id is the holder's VM.
                    let mut seen = BTreeSet::new();
                    for (a, al) in allocs.iter().enumerate() {
                        for id in al.held() {
                            prop_assert!(seen.insert(id), "{id} held twice");
                            prop_assert_eq!(pve.vms.lock().unwrap().get(&id.0).copied(), Some(owner[a]));
                        }
                    }
                }
                // Cleanup after crashes removes orphans; releasing the rest frees everything.
                for id in orphans.drain(..) {
                    pve.destroy(id);
                }
                for al in &allocs {
                    for id in al.held() {
                        pve.destroy(id);
                        al.release(id);
                    }
                }
                prop_assert!(pve.vms.lock().unwrap().is_empty());
                prop_assert!(allocs.iter().all(|a| a.held().is_empty()));
                // And the whole range can be allocated again.
                let fresh = VmidAllocator::new(range);
                for _ in 0..range.len() {
                    prop_assert!(fresh.allocate(|id| pve.create(id, 99)).await.is_ok());
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn cancelled_allocation_unreserves() {
        let alloc = VmidAllocator::new(VmidRange::new(100, 101).unwrap());
        let fut = alloc.allocate(|_| std::future::pending::<Result<(), pve_client::Error>>());
        // Poll once so the id gets reserved, then drop the future.
        let mut fut = Box::pin(fut);
        assert!(futures_util::poll!(fut.as_mut()).is_pending());
        assert_eq!(alloc.held(), [Vmid(100)]);
        drop(fut);
        assert!(alloc.held().is_empty());
    }
}
