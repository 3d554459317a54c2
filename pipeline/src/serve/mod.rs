//! `sluice serve`: the lake, read-only, to the people who use it. Postgres wire
//! protocol for analysts and dashboards ([`pg`]), the platform's analytics API
//! ([`http`]), both authenticated by JWT ([`auth`]) and filtered row by row by
//! one policy ([`policy`]) inside every scan ([`guard`]) of a per-identity
//! [`session`] over the shared, always-current [`lake`]; and a [`dashboard`]
//! page whose charts are SQL through the same sessions.

pub mod auth;
pub mod dashboard;
pub mod guard;
pub mod http;
pub mod information_schema;
pub mod lake;
pub mod pg;
pub mod policy;
pub mod session;
pub mod statement;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::error::{Error, Result};

pub use auth::{Identity, Role, Verifier};
pub use lake::ServedLake;
pub use policy::Policy;
pub use session::{Limits, Session, Unanswered};

/// Everything `sluice serve` needs, checked.
pub struct Server {
    pub lake: Arc<ServedLake>,
    pub verifier: Verifier,
    pub limits: Limits,
    pub max_connections: usize,
    pub tls: Option<pgwire::tokio::TlsAcceptor>,
}

impl Server {
    /// Binds both listeners (an address in use is one line naming it) and serves
    /// until the process is stopped.
    pub async fn run(self, pg_addr: SocketAddr, http_addr: SocketAddr) -> Result<()> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|e| Error::Config(format!("{what} address {addr}: {e}")))
        };
        let pg_listener = bind(pg_addr, "--pg-addr").await?;
        let http_listener = bind(http_addr, "--http-addr").await?;
        let pg = Arc::new(pg::PgServer::new(self.lake.clone(), self.verifier.clone(), self.limits, self.max_connections));
        let api = Arc::new(http::Api { lake: self.lake.clone(), verifier: self.verifier, limits: self.limits });
        tracing::info!(
            "serving {}: postgres on {}{}, the dashboard and analytics API on http://{}/",
            crate::catalog::storage::redact(self.lake.lake().root().as_str()),
            pg_listener.local_addr().unwrap_or(pg_addr),
            if self.tls.is_some() { " (TLS)" } else { "" },
            http_listener.local_addr().unwrap_or(http_addr),
        );
        let pg_task = tokio::spawn(pg.serve(pg_listener, self.tls));
        let http_task = axum::serve(http_listener, http::router(api).into_make_service_with_connect_info::<SocketAddr>());
        tokio::select! {
            result = http_task => result.map_err(|e| Error::Config(format!("--http-addr {http_addr}: {e}"))),
            _ = pg_task => Err(Error::Config("the postgres listener stopped".into())),
        }
    }
}
