//! Credentials and PVE tickets.
//!
//! Two ways to authenticate (see the PVE API notes):
//! - **API token**: a static `Authorization: PVEAPIToken=user@realm!id=secret` header; no CSRF,
//!   nothing to renew.
//! - **Password**: `POST /access/ticket` gives a ticket (cookie `PVEAuthCookie`) valid for 2 h and
//!   a CSRF token that every non-GET request must carry.
//!
//! Ticket renewal is *single-flight*: concurrent requests that find the ticket missing, old or
//! rejected queue on one async mutex, and only the first of them logs in; the others see the
//! new generation and reuse it. Two logins never race, so a burst of 200 requests after expiry
//! costs one `POST /access/ticket`, not 200.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, RwLock};

use crate::Secret;

/// How the client proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// User and password, logged in with `POST /access/ticket`.
    Password {
        /// `user@realm`, e.g. `root@pam`.
        user: String,
        /// The password.
        password: Secret,
    },
    /// An API token.
    Token {
        /// `user@realm!tokenid`, e.g. `root@pam!ci`.
        token_id: String,
        /// The token's secret (a UUID).
        secret: Secret,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .field("password", &"***")
                .finish(),
            Credentials::Token { token_id, .. } => f
                .debug_struct("Token")
                .field("token_id", token_id)
                .field("secret", &"***")
                .finish(),
        }
    }
}

impl Credentials {
    /// Who these credentials belong to (`user@realm` or `user@realm!token`).
    pub fn principal(&self) -> &str {
        match self {
            Credentials::Password { user, .. } => user,
            Credentials::Token { token_id, .. } => token_id,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let (who, what) = match self {
            Credentials::Password { user, .. } => (user.as_str(), "user"),
            Credentials::Token { token_id, .. } => (token_id.as_str(), "token_id"),
        };
        let Some((name, realm)) = who.split_once('@') else {
            return Err(format!(
                "{what} {who:?} has no realm: write it as `user@realm` (e.g. `root@pam`){}",
                if what == "token_id" {
                    " followed by `!tokenid`"
                } else {
                    ""
                }
            ));
        };
        if name.is_empty() || realm.is_empty() {
            return Err(format!(
                "{what} {who:?}: user and realm must both be non-empty"
            ));
        }
        if let Credentials::Token { token_id, .. } = self {
            match realm.split_once('!') {
                Some((r, id)) if !r.is_empty() && !id.is_empty() => {}
                _ => {
                    return Err(format!(
                        "token_id {token_id:?} must be `user@realm!tokenid`, e.g. `root@pam!ci`"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A PVE login ticket and its CSRF token.
pub(crate) struct Ticket {
    pub(crate) cookie: Secret,
    pub(crate) csrf: Secret,
    obtained: Instant,
    /// Bumped on every login; lets a request that got a 401 tell whether someone else already
    /// renewed the ticket it used.
    pub(crate) generation: u64,
}

/// The shared ticket state of one client (and all its clones).
pub(crate) struct TicketStore {
    current: RwLock<Option<Arc<Ticket>>>,
    /// Held while logging in; the single-flight gate.
    login_gate: Mutex<()>,
    /// Renew once a ticket is this old (PVE tickets live 2 h; we renew well before).
    renew_after: Duration,
}

impl TicketStore {
    pub(crate) fn new(renew_after: Duration) -> Self {
        TicketStore {
            current: RwLock::new(None),
            login_gate: Mutex::new(()),
            renew_after,
        }
    }

    /// The current ticket if it is fresh enough to use.
    pub(crate) async fn fresh(&self) -> Option<Arc<Ticket>> {
        let cur = self.current.read().await;
        cur.as_ref()
            .filter(|t| t.obtained.elapsed() < self.renew_after)
            .cloned()
    }

    /// Returns a usable ticket, logging in at most once however many callers ask at the same
    /// time. `stale` is the generation a caller saw rejected (401); a ticket of that generation
    /// or older is renewed even if it looks fresh.
    pub(crate) async fn get_or_login<F, Fut>(
        &self,
        stale: Option<u64>,
        login: F,
    ) -> Result<Arc<Ticket>, crate::Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(Secret, Secret), crate::Error>>,
    {
        if stale.is_none()
            && let Some(t) = self.fresh().await
        {
            return Ok(t);
        }
        let _gate = self.login_gate.lock().await;
        // Whoever held the gate before us may already have renewed.
        let prev_generation = {
            let cur = self.current.read().await;
            if let Some(t) = cur.as_ref() {
                let usable = t.obtained.elapsed() < self.renew_after
                    && stale.is_none_or(|s| t.generation > s);
                if usable {
                    return Ok(t.clone());
                }
            }
            cur.as_ref().map_or(0, |t| t.generation)
        };
        let (cookie, csrf) = login().await?;
        let t = Arc::new(Ticket {
            cookie,
            csrf,
            obtained: Instant::now(),
            generation: prev_generation + 1,
        });
        *self.current.write().await = Some(t.clone());
        Ok(t)
    }
}
