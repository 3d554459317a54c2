//! What one client may take of `sluice serve`, so that none can take the rest's:
//! statement size and nesting (checked by [`sluice_gate::statement::admit`]
//! before planning), time, memory (each session's, and all sessions' together:
//! [`memory`]), statements at once per user, connections (all, and per user),
//! the time to authenticate, and functions whose results grow with their
//! arguments ([`functions`]), and who runs first when the CPU is short
//! ([`priority`]: users whose statements ran long wait behind the others).
//!
//! A statement holds a [`StatementSlot`] from its start until its last row is
//! sent or it is stopped; stopping it (its time limit, a cancel request, its
//! client gone) drops its plan and streams, which ends all of its tasks and
//! gives its memory back.

pub mod functions;
pub mod memory;
pub mod priority;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_gate::statement::StatementLimits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use memory::{SessionMemory, SharedMemory};

/// The server's limits, as configured.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest a statement may run (a session's `statement_timeout` may only shorten it).
    pub query_timeout: Duration,
    /// The most memory one session's statement may hold.
    pub query_memory: usize,
    /// The most memory all statements together may hold.
    pub memory: usize,
    pub statement: StatementLimits,
    /// Statements one user may run at once (over every connection and HTTP);
    /// more wait for a turn within their own time limit.
    pub statements_per_user: usize,
    pub max_connections: usize,
    pub connections_per_user: usize,
    /// A Postgres connection that has not authenticated by then is closed.
    pub auth_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            query_timeout: Duration::from_secs(30),
            query_memory: 1 << 30,
            memory: 4 << 30,
            statement: StatementLimits::default(),
            statements_per_user: 2,
            max_connections: 64,
            connections_per_user: 16,
            auth_timeout: Duration::from_secs(5),
        }
    }
}

/// The limits and what is in use against them, shared by every connection and request.
pub struct Budget {
    pub limits: Limits,
    pub memory: Arc<SharedMemory>,
    connections: Arc<Semaphore>,
    users: Mutex<HashMap<String, Arc<PerUser>>>,
}

/// One user's share.
struct PerUser {
    statements: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    /// Until when the user counts as heavy (see [`priority`]).
    heavy_until: Mutex<Option<Instant>>,
}

/// A connection's place, held until it closes.
pub struct ConnectionSlot {
    _all: OwnedSemaphorePermit,
    _user: OwnedSemaphorePermit,
}

/// A statement's turn, held until its last row is sent or it is stopped.
pub struct StatementSlot {
    _permit: OwnedSemaphorePermit,
    user: Arc<PerUser>,
    started: Instant,
}

impl Drop for StatementSlot {
    fn drop(&mut self) {
        let now = Instant::now();
        self.user.statement_ended(now.duration_since(self.started), now);
    }
}

impl PerUser {
    fn statement_ended(&self, ran: Duration, now: Instant) {
        if ran > priority::LONG_STATEMENT {
            *self.heavy_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + priority::HEAVY_FOR);
        }
    }

    fn heavy_at(&self, now: Instant) -> bool {
        self.heavy_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|until| now < until)
    }
}

/// Why a connection or statement was not let in: a message and its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// SQLSTATE 53300, too_many_connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// SQLSTATE 57014, query_canceled (also for a statement's time limit, as Postgres).
pub const CANCELED: &str = "57014";

impl Budget {
    pub fn new(limits: Limits) -> Arc<Budget> {
        Arc::new(Budget {
            memory: SharedMemory::new(limits.memory),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            users: Mutex::new(HashMap::new()),
            limits,
        })
    }

    fn user(&self, user: &str) -> Arc<PerUser> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        // Users with nothing running are forgotten, so the map stays as small as the active users.
        if users.len() > 1024 {
            let (statements, connections) = (self.limits.statements_per_user, self.limits.connections_per_user);
            let now = Instant::now();
            users.retain(|_, u| u.heavy_at(now) || u.statements.available_permits() < statements || u.connections.available_permits() < connections);
        }
        users
            .entry(user.to_string())
            .or_insert_with(|| {
                Arc::new(PerUser {
                    statements: Arc::new(Semaphore::new(self.limits.statements_per_user)),
                    connections: Arc::new(Semaphore::new(self.limits.connections_per_user)),
                    heavy_until: Mutex::new(None),
                })
            })
            .clone()
    }

    /// A place for a new Postgres connection of `user`, or why there is none.
    pub fn connection(&self, user: &str) -> Result<ConnectionSlot, Full> {
        let all = self.connections.clone().try_acquire_owned().map_err(|_| Full {
            code: TOO_MANY_CONNECTIONS,
            message: format!("too many connections: this server takes {} at a time", self.limits.max_connections),
        })?;
        let mine = self.user(user).connections.clone().try_acquire_owned().map_err(|_| Full {
            code: TOO_MANY_CONNECTIONS,
            message: format!("too many connections for user `{user}`: one user may hold {} at a time", self.limits.connections_per_user),
        })?;
        Ok(ConnectionSlot { _all: all, _user: mine })
    }

    /// A turn for one of `user`'s statements, waiting for one of theirs to end
    /// if they already run as many as they may, until `deadline`.
    pub async fn statement(&self, user: &str, deadline: Instant) -> Result<StatementSlot, Full> {
        let per_user = self.user(user);
        match tokio::time::timeout_at(deadline, per_user.statements.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(StatementSlot { _permit: permit, user: per_user, started: Instant::now() }),
            _ => Err(Full {
                code: CANCELED,
                message: format!(
                    "canceling statement: user `{user}` already runs {} statements at once, and none ended within the time limit",
                    self.limits.statements_per_user
                ),
            }),
        }
    }

    /// Whether `user` ran a long statement lately (their plans then run behind the others').
    pub fn is_heavy(&self, user: &str) -> bool {
        self.heavy_at(user, Instant::now())
    }

    fn heavy_at(&self, user: &str, now: Instant) -> bool {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.get(user).is_some_and(|u| u.heavy_at(now))
    }

    /// A new session's memory pool.
    pub fn session_memory(&self) -> SessionMemory {
        SessionMemory::new(self.limits.query_memory, self.memory.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_user_cannot_take_every_place() {
        let budget = Budget::new(Limits { max_connections: 3, connections_per_user: 2, statements_per_user: 1, ..Limits::default() });
        let a1 = budget.connection("a").unwrap();
        let _a2 = budget.connection("a").unwrap();
        let full = budget.connection("a").err().unwrap();
        assert!(full.message.contains("user `a`") && full.code == TOO_MANY_CONNECTIONS, "{full:?}");
        let _b = budget.connection("b").unwrap();
        assert!(budget.connection("c").err().unwrap().message.contains("takes 3 at a time"));
        drop(a1);
        let _c = budget.connection("c").unwrap();

        let soon = Instant::now() + Duration::from_millis(50);
        let running = budget.statement("a", soon).await.unwrap();
        let waited = budget.statement("a", soon).await.err().unwrap();
        assert_eq!(waited.code, CANCELED);
        assert!(budget.statement("b", soon).await.is_ok(), "another user is not held up");
        let later = Instant::now() + Duration::from_secs(5);
        let next = tokio::spawn({
            let budget = budget.clone();
            async move { budget.statement("a", later).await.is_ok() }
        });
        drop(running);
        assert!(next.await.unwrap(), "the next statement gets the turn the first gave back");
    }
}
