//! Poll schedules that follow how long each kind of wait usually takes.
//!
//! A task wait used to poll from 2 ms doubling to a 250 ms cap: cheap for instant tasks, but a
//! real 8 s `qmstart` cost about 39 status calls, every time. A [`Pacer`] (one per client,
//! shared by its clones) remembers, per wait kind (a task's worker type such as `qmstart`, or
//! `agent-ready`), how long waits of that kind took (a mean and a mean deviation, as TCP
//! estimates round-trip times), and schedules the next one around them:
//!
//! - nothing learned yet: poll at once, then from the initial interval doubling to the cap;
//! - learned mean `m` and deviation `v`: the first poll at `m - 2v` (early enough that a wait
//!   a little shorter than usual is not found late), then doubling from `m/64` (at least the
//!   initial interval) to the cap.
//!
//! Every interval after the first poll is at most the cap, so a wait that ends after its first
//! poll is never found later than before; it is found with a handful of calls instead of
//! dozens. Only a wait that ends before its first poll can be found later, by at most `2v`
//! below the usual end. What is learned is the end as the polls saw it; when the very first
//! poll already found the wait over, the real end may have been much earlier, so 70% of it is
//! averaged in. [`Pacing::Doubling`] turns learning off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a client schedules its polls (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pacing {
    /// Around what the last waits of the same kind took (the default).
    #[default]
    Learned,
    /// From the initial interval doubling to the cap, every time.
    Doubling,
}

/// Learned durations per wait kind; see the module docs.
#[derive(Debug, Default)]
pub struct Pacer {
    pacing: Pacing,
    learned: Mutex<HashMap<String, Learned>>,
}

/// What a pacer knows of one wait kind, in seconds.
#[derive(Debug, Clone, Copy)]
struct Learned {
    mean: f64,
    deviation: f64,
}

impl Pacer {
    /// A pacer that schedules by `pacing`.
    pub fn new(pacing: Pacing) -> Self {
        Pacer {
            pacing,
            learned: Mutex::default(),
        }
    }

    /// How this pacer schedules.
    pub fn pacing(&self) -> Pacing {
        self.pacing
    }

    /// What a wait of `kind` is expected to take (the learned mean), once one has been seen.
    pub fn expected(&self, kind: &str) -> Option<Duration> {
        let l = *self.learned.lock().ok()?.get(kind)?;
        Some(Duration::from_secs_f64(l.mean))
    }

    /// A schedule for one wait of `kind` starting now, polling at least every `max` once
    /// past the first poll and never more often than every `initial`.
    pub fn schedule(&self, kind: &str, initial: Duration, max: Duration) -> Schedule<'_> {
        self.schedule_since(kind, Instant::now(), initial, max)
    }

    /// [`schedule`](Self::schedule) for a wait whose subject began at `since` (a task's
    /// UPID arrived then): the learned time counts from there, so a wait that begins late
    /// polls at once when the usual end has already passed.
    pub fn schedule_since(
        &self,
        kind: &str,
        since: Instant,
        initial: Duration,
        max: Duration,
    ) -> Schedule<'_> {
        let expected = match self.pacing {
            Pacing::Learned => self.learned.lock().ok().and_then(|m| m.get(kind).copied()),
            Pacing::Doubling => None,
        };
        Schedule {
            pacer: self,
            kind: kind.to_owned(),
            started: since,
            expected,
            initial,
            max,
            next: initial,
            polls: 0,
            late_start: false,
        }
    }

    fn learn(&self, kind: &str, seen: Duration, first_poll_was_late: bool) {
        if self.pacing != Pacing::Learned {
            return;
        }
        let Ok(mut m) = self.learned.lock() else {
            return;
        };
        let seen = seen.as_secs_f64();
        // Seen at the very first poll: the wait may have ended well before it.
        let sample = if first_poll_was_late {
            seen * 0.7
        } else {
            seen
        };
        m.entry(kind.to_owned())
            .and_modify(|l| {
                l.deviation = 0.75 * l.deviation + 0.25 * (sample - l.mean).abs();
                l.mean = (l.mean + sample) / 2.0;
            })
            .or_insert(Learned {
                mean: seen,
                // Until waits differ, assume they vary by about 6%: the first learned poll
                // comes at seven eighths of the first wait.
                deviation: seen / 16.0,
            });
    }
}

/// One wait's polls: [`first`](Self::first), then [`after_pending`](Self::after_pending) after
/// every poll that found the wait not over, and [`done`](Self::done) once one found it over.
#[derive(Debug)]
pub struct Schedule<'a> {
    pacer: &'a Pacer,
    kind: String,
    started: Instant,
    expected: Option<Learned>,
    initial: Duration,
    max: Duration,
    next: Duration,
    polls: u32,
    /// The first poll came at once because the wait began after its learned time.
    late_start: bool,
}

impl Schedule<'_> {
    /// The delay before the first poll: none until something was learned, nor once the
    /// learned first-poll time has passed.
    pub fn first(&mut self) -> Duration {
        self.polls = 1;
        match self.expected {
            Some(l) => {
                self.next = Duration::from_secs_f64(l.mean / 64.0).clamp(self.initial, self.max);
                let at = Duration::from_secs_f64((l.mean - 2.0 * l.deviation).max(0.0));
                let delay = at.saturating_sub(self.started.elapsed());
                self.late_start = delay.is_zero() && !at.is_zero();
                delay
            }
            None => Duration::ZERO,
        }
    }

    /// The delay before the next poll.
    pub fn after_pending(&mut self) -> Duration {
        self.polls += 1;
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Polls made so far.
    pub fn polls(&self) -> u32 {
        self.polls
    }

    /// The last poll found the wait over: remember how long it took.
    pub fn done(self) {
        let at_first_poll = self.polls <= 1;
        if at_first_poll && self.late_start {
            // Found over by a wait that began after the usual end (a second wait on one
            // task, say): it tells nothing of how long such waits take.
            return;
        }
        let first_was_late = at_first_poll && self.expected.is_some();
        self.pacer
            .learn(&self.kind, self.started.elapsed(), first_was_late);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Polls a wait that ends `d` after its start on `s`'s schedule, in virtual time.
    fn simulate(p: &Pacer, kind: &str, d: Duration) -> (u32, Duration) {
        let mut s = p.schedule(kind, 2 * MS, 250 * MS);
        let mut t = s.first();
        while t < d {
            t += s.after_pending();
        }
        let polls = s.polls();
        // `done` measures real time; feed the virtual end instead.
        let first_late = polls <= 1 && s.expected.is_some();
        p.learn(kind, t, first_late);
        (polls, t - d)
    }

    #[test]
    fn nothing_learned_is_the_capped_doubling() {
        let p = Pacer::new(Pacing::Learned);
        let (polls, over) = simulate(&p, "qmstart", 8000 * MS);
        // 0, 2, 4, ... 128 ms (8 polls, 254 ms), then every 250 ms up to 8 s.
        assert_eq!(polls, 8 + 31);
        assert!(over <= 250 * MS, "{over:?}");
    }

    #[test]
    fn a_repeated_wait_costs_a_few_polls_and_oversleeps_no_more_than_the_cap() {
        let p = Pacer::new(Pacing::Learned);
        simulate(&p, "qmstart", 8000 * MS);
        let mut total = 0;
        for _ in 0..20 {
            let (polls, over) = simulate(&p, "qmstart", 8000 * MS);
            assert!(polls <= 8, "{polls} polls");
            assert!(over <= 250 * MS, "{over:?}");
            total += polls;
        }
        // The doubling schedule makes 39 per wait: 780.
        assert!(total <= 100, "{total} polls for 20 waits");
    }

    #[test]
    fn a_wait_that_got_shorter_is_found_earlier_soon() {
        let p = Pacer::new(Pacing::Learned);
        simulate(&p, "qmclone", 4000 * MS);
        let overs: Vec<Duration> = (0..10)
            .map(|_| simulate(&p, "qmclone", 1000 * MS).1)
            .collect();
        assert!(overs[9] <= 250 * MS, "{overs:?}");
    }

    #[test]
    fn doubling_never_learns() {
        let p = Pacer::new(Pacing::Doubling);
        simulate(&p, "qmstart", 8000 * MS);
        assert_eq!(simulate(&p, "qmstart", 8000 * MS).0, 39);
        assert_eq!(p.expected("qmstart"), None);
    }
}
