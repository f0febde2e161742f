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
//!   a little shorter than usual is not found late), then every fine step (`m/128`, or `v`
//!   if larger) until the usual end `m + 2v` has passed, then doubling to the cap.
//!
//! Every interval after the first poll is at most the cap, so a wait that ends after its first
//! poll is never found later than before; it is found with a handful of calls instead of
//! dozens. Only a wait that ends before its first poll can be found later, by at most `2v`
//! below the usual end. What is learned is an estimate of the real end, not the poll that saw
//! it: the midpoint between the last poll that found the wait running and the one that found
//! it over (learning the poll itself would bake each wait's lateness into the next one's first
//! poll). When the very first poll already found it over, the end was at most then: one fine
//! step (`m/128`) earlier is learned, so the estimate creeps down until a first poll finds the
//! wait running again. [`Pacing::Doubling`] turns learning off.

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
            window_end: Duration::ZERO,
            polls: 0,
            last_pending: None,
            late_start: false,
        }
    }

    /// Learns that a wait of `kind` ended about `sample` seconds in, give or take `spread`.
    fn learn(&self, kind: &str, sample: f64, spread: f64) {
        if self.pacing != Pacing::Learned {
            return;
        }
        let Ok(mut m) = self.learned.lock() else {
            return;
        };
        m.entry(kind.to_owned())
            .and_modify(|l| {
                l.deviation = 0.75 * l.deviation + 0.25 * (sample - l.mean).abs();
                l.mean = (l.mean + sample) / 2.0;
            })
            .or_insert(Learned {
                mean: sample,
                // Until waits differ, they vary by what the polls could not tell apart, and
                // by at least 1.5%.
                deviation: spread.max(sample / 64.0),
            });
    }
}

/// The interval after a learned first poll found the wait running, while the usual end
/// (`m + 2v`) is not past: fine enough that the end is found soon after it (62 ms for an 8 s
/// `qmstart`), and no finer than a quarter of the window the end usually falls in, so the
/// window costs at most about four polls.
fn fine_step(l: &Learned, initial: Duration, max: Duration) -> Duration {
    Duration::from_secs_f64((l.mean / 128.0).max(l.deviation)).clamp(initial, max)
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
    /// Until this long after `started` (the usual end, `m + 2v`), polls stay `next` apart;
    /// after it they double to the cap.
    window_end: Duration,
    polls: u32,
    /// When the last poll that found the wait not over was made, since `started`.
    last_pending: Option<Duration>,
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
                self.next = fine_step(&l, self.initial, self.max);
                self.window_end = Duration::from_secs_f64(l.mean + 2.0 * l.deviation);
                let at = Duration::from_secs_f64((l.mean - 2.0 * l.deviation).max(0.0));
                let delay = at.saturating_sub(self.started.elapsed());
                self.late_start = delay.is_zero() && !at.is_zero();
                delay
            }
            None => Duration::ZERO,
        }
    }

    /// The delay before the next poll, after one that found the wait not over.
    pub fn after_pending(&mut self) -> Duration {
        self.last_pending = Some(self.started.elapsed());
        self.next_delay()
    }

    fn next_delay(&mut self) -> Duration {
        self.polls += 1;
        let d = self.next;
        if self.last_pending.is_none_or(|t| t >= self.window_end) {
            self.next = (self.next * 2).min(self.max);
        }
        d
    }

    /// Polls made so far.
    pub fn polls(&self) -> u32 {
        self.polls
    }

    /// The last poll found the wait over: remember how long it took.
    pub fn done(self) {
        let seen = self.started.elapsed();
        self.finish(seen);
    }

    /// Learns from a wait found over `seen` after its start.
    fn finish(self, seen: Duration) {
        let seen = seen.as_secs_f64();
        let (sample, spread) = match (self.last_pending, &self.expected) {
            // It ended between the last poll that found it running and this one.
            (Some(lo), _) => {
                let lo = lo.as_secs_f64();
                ((lo + seen) / 2.0, (seen - lo) / 2.0)
            }
            // Found over by a wait that began after the usual end (a second wait on one
            // task, say): it tells nothing of how long such waits take.
            (None, _) if self.late_start => return,
            // Over at the learned first poll: it ended at most then.
            (None, Some(l)) => {
                let step = fine_step(l, self.initial, self.max).as_secs_f64();
                ((seen - step).max(0.0), step)
            }
            // Over at an immediate first poll: about instant.
            (None, None) => (seen, 0.0),
        };
        self.pacer.learn(&self.kind, sample, spread);
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
            // `after_pending` and `done` read the clock; feed the virtual times instead.
            s.last_pending = Some(t);
            t += s.next_delay();
        }
        let polls = s.polls();
        s.finish(t);
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
    fn a_repeated_wait_is_found_within_a_fine_step_of_its_end() {
        // Learning the poll that saw the end, not the end, kept each wait as late as the last.
        let p = Pacer::new(Pacing::Learned);
        simulate(&p, "qmstart", 8000 * MS);
        let runs: Vec<(u32, Duration)> = (0..20)
            .map(|_| simulate(&p, "qmstart", 8000 * MS))
            .collect();
        let late = runs[5..].iter().map(|r| r.1).max().unwrap();
        let polls: u32 = runs[5..].iter().map(|r| r.0).sum();
        // A fine step is 8 s / 128 = 62.5 ms.
        assert!(late <= 63 * MS, "{runs:?}");
        assert!(polls <= 15 * 3, "{runs:?}");
    }

    #[test]
    fn a_jittery_wait_costs_a_handful_of_polls_and_is_never_later_than_the_cap() {
        // Real starts vary: 7.2 to 8.8 s, in a fixed pseudo-random order.
        let p = Pacer::new(Pacing::Learned);
        let mut x = 7u64;
        let mut polls = 0;
        for _ in 0..40 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let d = Duration::from_millis(7200 + (x >> 33) % 1600);
            let (n, over) = simulate(&p, "qmstart", d);
            assert!(over <= 250 * MS, "{d:?}: {over:?} late");
            polls += n;
        }
        // The doubling schedule makes about 39 per wait: 1560.
        assert!(polls <= 40 * 8, "{polls} polls for 40 waits");
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
