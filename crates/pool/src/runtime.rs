//! `ActorRuntime`: the dedicated OS thread all of the pool's actors live on.
//!
//! actix actors need a single-threaded runtime with a `LocalSet`: `Actor::start()` panics
//! anywhere else. Callers (a tokio multi-thread runtime, a PyO3 extension, another executor)
//! must not care. So one thread runs an `actix_rt::System`; actors are started on its arbiter
//! with `start_in_arbiter`, and everyone else talks to them through `Addr::send`, which works
//! from any executor. Dropping the runtime stops the system and joins the thread.

use std::sync::mpsc;
use std::thread::JoinHandle;

use actix::{Actor, Addr, Context};

/// A running actix system on its own thread.
pub struct ActorRuntime {
    system: actix_rt::System,
    arbiter: actix_rt::ArbiterHandle,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ActorRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorRuntime").finish_non_exhaustive()
    }
}

impl ActorRuntime {
    /// Starts the system thread.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runner = actix_rt::System::new();
                // Hand the handles out before blocking in `run`.
                let _ = tx.send((actix_rt::System::current(), actix_rt::Arbiter::current()));
                if let Err(e) = runner.run() {
                    tracing::error!(error = %e, "actor system ended with an error");
                }
            })?;
        let (system, arbiter) = rx
            .recv()
            .map_err(|_| std::io::Error::other("actor thread died during start"))?;
        Ok(ActorRuntime {
            system,
            arbiter,
            thread: Some(thread),
        })
    }

    /// Starts an actor on the runtime's thread. `make` runs there, so anything thread- or
    /// runtime-bound it creates (timers, connection pools) belongs to that thread.
    pub fn spawn<A, F>(&self, make: F) -> Addr<A>
    where
        A: Actor<Context = Context<A>>,
        F: FnOnce(&mut Context<A>) -> A + Send + 'static,
    {
        A::start_in_arbiter(&self.arbiter, make)
    }
}

impl Drop for ActorRuntime {
    fn drop(&mut self) {
        self.system.stop();
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}
