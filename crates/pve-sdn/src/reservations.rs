//! In-process subnet reservations: samples of one process never pick the same range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::Ipv4Net;

/// How long a range another process was seen holding is skipped without asking PVE again.
const FOREIGN_TTL: Duration = Duration::from_secs(600);

/// Ranges this process's samples hold or are creating, shared by cloning (one per PVE
/// instance). `auto` picks skip them, topologies conflicting with them are refused, and
/// [`crate::teardown`] releases them.
#[derive(Debug, Clone, Default)]
pub struct SubnetReservations {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Held by our samples: range to zone.
    ours: BTreeMap<Ipv4Net, String>,
    /// Seen held by another process (its auto vnet id existed): range to when.
    foreign: BTreeMap<Ipv4Net, Instant>,
}

impl SubnetReservations {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ranges held by this process's samples, with their zones.
    pub fn held(&self) -> Vec<(Ipv4Net, String)> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.ours.iter().map(|(n, z)| (*n, z.clone())).collect()
    }

    /// Picks and reserves one candidate that overlaps neither `taken` nor any reservation.
    pub(crate) fn reserve_first_free(
        &self,
        candidates: &[Ipv4Net],
        taken: &[Ipv4Net],
        zone: &str,
        random: bool,
    ) -> Option<Ipv4Net> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        g.foreign
            .retain(|_, t| now.duration_since(*t) < FOREIGN_TTL);
        let free: Vec<Ipv4Net> = candidates
            .iter()
            .filter(|c| {
                !taken.iter().any(|t| t.overlaps(c))
                    && !g.ours.keys().any(|o| o.overlaps(c))
                    && !g.foreign.contains_key(c)
            })
            .copied()
            .collect();
        let pick = if random {
            use rand::seq::IndexedRandom;
            *free.choose(&mut rand::rng())?
        } else {
            *free.first()?
        };
        g.ours.insert(pick, zone.to_owned());
        Some(pick)
    }

    /// Reserves all of `nets` or none; on conflict returns the range in the way and its zone.
    pub(crate) fn reserve_all(
        &self,
        nets: &[Ipv4Net],
        zone: &str,
    ) -> Result<(), (Ipv4Net, Ipv4Net, String)> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for n in nets {
            if let Some((o, z)) = g.ours.iter().find(|(o, _)| o.overlaps(n)) {
                return Err((*n, *o, z.clone()));
            }
        }
        for n in nets {
            g.ours.insert(*n, zone.to_owned());
        }
        Ok(())
    }

    /// Marks `net` as held by another process (and drops our claim on it).
    pub(crate) fn mark_foreign(&self, net: Ipv4Net) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.ours.remove(&net);
        g.foreign.insert(net, Instant::now());
    }

    /// Releases every range held for `zone`.
    pub fn release_zone(&self, zone: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.ours.retain(|_, z| z != zone);
    }
}
