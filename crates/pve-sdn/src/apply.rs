//! Applying pending SDN changes: a trait the caller implements (the sandbox serialises and
//! coalesces applies per cluster through the pool's instance actor), and a direct version.

use std::future::Future;
use std::time::Duration;

use pve_client::{Params, PveClient, Upid, WaitOptions};

use crate::error::SdnError;

/// Makes pending SDN changes effective (`PUT /cluster/sdn` and wait for its task).
///
/// Implementations may coalesce: an apply that *starts* after a caller asked covers that
/// caller's changes (PVE applies everything pending, cluster-wide).
pub trait Applier: Send + Sync {
    /// Applies everything pending and returns once PVE's reload task finished.
    fn apply(&self) -> impl Future<Output = Result<(), SdnError>> + Send;
}

/// How long [`DirectApplier`] waits for the reload task.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// `PUT /cluster/sdn`, then waits on the returned UPID. No coalescing: for tools, tests and
/// single-sample use; a process running many samples should coalesce (see the pool crate).
#[derive(Debug, Clone)]
pub struct DirectApplier(pub PveClient);

impl Applier for DirectApplier {
    fn apply(&self) -> impl Future<Output = Result<(), SdnError>> + Send {
        let client = self.0.clone();
        async move { apply_now(&client).await }
    }
}

/// One uncoalesced apply: `PUT /cluster/sdn` and wait for the task.
pub async fn apply_now(client: &PveClient) -> Result<(), SdnError> {
    let v = client
        .put("/cluster/sdn", &Params::new())
        .await
        .map_err(|e| SdnError::Apply {
            source: Box::new(e),
        })?;
    let upid: Upid = serde_json::from_value(v).map_err(|e| SdnError::Decode {
        path: "PUT /cluster/sdn".into(),
        message: format!("expected a UPID: {e}"),
    })?;
    client
        .wait_task(&upid, WaitOptions::with_timeout(APPLY_TIMEOUT))
        .await
        .map_err(|e| SdnError::Apply {
            source: Box::new(e),
        })?;
    Ok(())
}
