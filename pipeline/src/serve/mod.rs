//! `sluice serve`: the lake, read-only, to the people who use it. Postgres wire
//! protocol for analysts and dashboards ([`pg`]), the platform's analytics API
//! ([`analytics`]) and a [`dashboard`] whose charts are SQL, over [`http`]; all
//! authenticated by JWT and admitted statement by statement
//! ([`sluice_gate`]), filtered row by row by one policy ([`policy`]) inside every
//! scan ([`guard`]) of a per-identity [`session`] over the shared, always-current
//! [`lake`], and bounded in time, memory and share of the server by
//! [`limits`] and [`stop`].

pub mod analytics;
pub mod dashboard;
pub mod guard;
pub mod http;
pub mod information_schema;
pub mod lake;
pub mod limits;
pub mod pg;
pub mod policy;
pub mod session;
pub mod stop;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::error::{Error, Result};

pub use lake::ServedLake;
pub use limits::{Budget, Limits};
pub use policy::Policy;
pub use session::{Session, Unanswered};
pub use sluice_gate::token::{Identity, Role, Verifier};

/// Everything `sluice serve` needs, checked.
pub struct Server {
    pub lake: Arc<ServedLake>,
    pub verifier: Verifier,
    pub limits: Limits,
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
        let budget = Budget::new(self.limits);
        let pg = Arc::new(pg::PgServer::new(self.lake.clone(), self.verifier.clone(), budget.clone()));
        let api = Arc::new(http::Api { lake: self.lake.clone(), verifier: self.verifier, budget });
        tracing::info!(
            "serving {}: postgres on {}{}, the dashboard and analytics API on http://{}/",
            crate::catalog::storage::redact(self.lake.lake().root().as_str()),
            pg_listener.local_addr().unwrap_or(pg_addr),
            if self.tls.is_some() { " (TLS)" } else { "" },
            http_listener.local_addr().unwrap_or(http_addr),
        );
        let pg_task = tokio::spawn(pg.serve(pg_listener, self.tls));
        let http_task = tokio::spawn(http::serve(http_listener, router(api)));
        tokio::select! {
            _ = http_task => Err(Error::Config(format!("the HTTP listener on {http_addr} stopped"))),
            _ = pg_task => Err(Error::Config(format!("the postgres listener on {pg_addr} stopped"))),
        }
    }
}

/// Every HTTP route: the analytics API and the dashboard.
pub fn router(api: Arc<http::Api>) -> Router {
    let routes = Router::new()
        .route("/api/v1/health", get(http::health))
        .route(analytics::LEARNER, get(analytics::learner))
        .route(analytics::TRAINER, get(analytics::trainer))
        .route(analytics::ORGANIZATION, get(analytics::organization))
        .route("/", get(dashboard::index))
        .route("/static/{name}", get(dashboard::asset))
        .route("/api/v1/dashboard/charts", get(dashboard::charts))
        .route("/api/v1/dashboard/version", get(dashboard::version))
        .fallback(http::not_found);
    http::guarded(routes, api)
}
