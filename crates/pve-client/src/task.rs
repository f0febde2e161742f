//! Waiting for PVE tasks.
//!
//! Polls follow the client's [`Pacer`](crate::Pacer), keyed by the task's worker type: the
//! first wait of a type polls at once and then from 2 ms doubling up to a cap (250 ms by
//! default), so an instant simulator answers in one or two polls and a real 8 s VM start costs
//! about 39; later waits of that type poll first just before the learned end, one to three
//! calls. The deadline is checked after every poll; no sleep runs past it.

use std::time::{Duration, Instant};

use crate::{Error, Params, PveClient, Result, TaskLogLine, TaskStatus, Upid};

/// How to wait for a task.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// Give up (with [`Error::TaskTimeout`]) after this long.
    pub timeout: Duration,
    /// First poll interval.
    pub initial_interval: Duration,
    /// Longest poll interval.
    pub max_interval: Duration,
    /// Lines of the task log to attach to a failure.
    pub log_tail: u32,
}

impl WaitOptions {
    /// Waits up to `timeout` with the default schedule (2 ms doubling to 250 ms, 20 log lines).
    pub fn with_timeout(timeout: Duration) -> Self {
        WaitOptions {
            timeout,
            initial_interval: Duration::from_millis(2),
            max_interval: Duration::from_millis(250),
            log_tail: 20,
        }
    }
}

impl PveClient {
    /// `GET /nodes/{node}/tasks/{upid}/status` on the node that runs the task.
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus> {
        self.call(
            crate::Method::Get,
            &task_path(upid, "status"),
            &Params::new(),
        )
        .await
    }

    /// `GET /nodes/{node}/tasks/{upid}/log` lines `start..start+limit`.
    pub async fn task_log(&self, upid: &Upid, start: u64, limit: u64) -> Result<Vec<TaskLogLine>> {
        let p = Params::new().with("start", start).with("limit", limit);
        self.call(crate::Method::Get, &task_path(upid, "log"), &p)
            .await
    }

    /// Waits until the task stops. `OK` and `WARNINGS: N` are success; anything else is
    /// [`Error::Task`] with the exit status and the log's last lines.
    pub async fn wait_task(&self, upid: &Upid, opts: WaitOptions) -> Result<TaskStatus> {
        self.wait_task_counted(upid, opts).await.map(|(s, _)| s)
    }

    /// [`wait_task`](Self::wait_task), also saying how many status polls it made.
    pub async fn wait_task_counted(
        &self,
        upid: &Upid,
        opts: WaitOptions,
    ) -> Result<(TaskStatus, u32)> {
        let started = Instant::now();
        let deadline = started + opts.timeout;
        let mut schedule = self.pacer().schedule_since(
            upid.task_type(),
            upid.received(),
            opts.initial_interval,
            opts.max_interval,
        );
        let mut delay = schedule.first();
        loop {
            if !delay.is_zero() {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(delay.min(left)).await;
            }
            let status = self.task_status(upid).await?;
            if status.is_stopped() {
                let polls = schedule.polls();
                if status.is_ok() {
                    // A failed task often ends early (a lock, a refusal): only successes
                    // teach how long this type takes.
                    schedule.done();
                    return Ok((status, polls));
                }
                let exitstatus = status
                    .exitstatus
                    .clone()
                    .unwrap_or_else(|| "unknown error".into());
                return Err(Error::Task {
                    upid: Box::new(upid.clone()),
                    exitstatus,
                    log_tail: self.log_tail(upid, opts.log_tail).await,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::TaskTimeout {
                    upid: Box::new(upid.clone()),
                    waited: now - started,
                });
            }
            delay = schedule.after_pending();
        }
    }

    /// The last `n` lines of a task's log; empty if the log cannot be read (the task error is
    /// what matters, the log is context).
    async fn log_tail(&self, upid: &Upid, n: u32) -> Vec<String> {
        if n == 0 {
            return Vec::new();
        }
        // PVE has no "tail": read a generous window and keep the end.
        match self.task_log(upid, 0, 10_000).await {
            Ok(lines) => {
                let skip = lines.len().saturating_sub(n as usize);
                lines.into_iter().skip(skip).map(|l| l.t).collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not read task log");
                Vec::new()
            }
        }
    }
}

fn task_path(upid: &Upid, leaf: &str) -> String {
    format!(
        "/nodes/{}/tasks/{}/{leaf}",
        crate::api::seg(upid.node()),
        crate::api::seg(upid.as_str())
    )
}
