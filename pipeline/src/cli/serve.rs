//! `sluice serve`: the lake over the Postgres wire protocol and the analytics API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::Definitions;
use crate::catalog::{Lake, StorageOptions};
use crate::error::{Error, Result};
use crate::serve::{Limits, ServedLake, Server, Verifier};
use sluice_gate::statement::StatementLimits;

/// The environment variable holding the HS256 secret (kept out of argv and `ps`).
pub const SECRET_VAR: &str = "SLUICE_JWT_SECRET";

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The lake to serve, read-only (a directory or URL).
    #[arg(long)]
    pub lake: String,
    /// Where Postgres clients connect (psql, psycopg, JDBC tools, Grafana).
    #[arg(long, default_value = "127.0.0.1:5433", value_name = "ADDR")]
    pub pg_addr: SocketAddr,
    /// Where the analytics API listens.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub http_addr: SocketAddr,
    /// A file holding the HS256 secret (instead of $SLUICE_JWT_SECRET).
    #[arg(long, value_name = "FILE", conflicts_with = "jwt_public_key_file")]
    pub jwt_secret_file: Option<PathBuf>,
    /// An RSA public key (PEM) verifying RS256 tokens.
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for Postgres connections; with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The longest a statement may run (a session's statement_timeout may only shorten it).
    #[arg(long, default_value = "30s", value_parser = super::run::duration)]
    pub query_timeout: std::time::Duration,
    /// The most memory one session's statement may hold (DataFusion's memory pool).
    #[arg(long, default_value = "1GiB", value_parser = super::run::size)]
    pub query_memory: u64,
    /// The most memory all statements together may hold.
    #[arg(long, default_value = "4GiB", value_parser = super::run::size)]
    pub memory: u64,
    /// The most Postgres connections served at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_connections: u64,
    /// The most Postgres connections one user may hold at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_connections_per_user: u64,
    /// The most statements one user may run at once (over Postgres and HTTP); more
    /// wait their turn. Default: half the cores, at least 1, so that one user's
    /// runaway statements leave the other half of the machine to everyone else.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub max_statements_per_user: Option<u64>,
    /// The longest statement taken, in bytes of SQL.
    #[arg(long, default_value = "1MiB", value_parser = super::run::size)]
    pub max_statement_bytes: u64,
    /// The deepest nesting taken (operators chained, joins, unions, parentheses).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub max_statement_depth: u64,
    /// How long a Postgres client has to log in (TLS included) before it is disconnected.
    #[arg(long, default_value = "5s", value_parser = super::run::duration)]
    pub auth_timeout: std::time::Duration,
    #[command(flatten)]
    pub definitions: Definitions,
}

pub async fn serve(args: &ServeArgs, storage: &StorageOptions) -> Result<()> {
    let verifier = verifier(args)?;
    let policy = args.definitions.policy()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::serve::pg::tls_acceptor(cert, key)?),
        _ => None,
    };
    let lake = Lake::connect(&args.lake, false, storage.clone()).await?;
    let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    if args.memory < args.query_memory {
        return Err(Error::Config(format!("--memory ({}) is less than --query-memory ({}): one statement could never have its share", args.memory, args.query_memory)));
    }
    let limits = Limits {
        query_timeout: args.query_timeout,
        query_memory: bytes(args.query_memory),
        memory: bytes(args.memory),
        statement: StatementLimits { max_bytes: bytes(args.max_statement_bytes), max_depth: bytes(args.max_statement_depth), ..StatementLimits::default() },
        statements_per_user: args.max_statements_per_user.map_or_else(half_the_cores, bytes),
        max_connections: bytes(args.max_connections),
        connections_per_user: bytes(args.max_connections_per_user),
        auth_timeout: args.auth_timeout,
    };
    let server = Server { lake: Arc::new(ServedLake::new(lake, policy)), verifier, limits, tls };
    server.run(args.pg_addr, args.http_addr).await
}

fn half_the_cores() -> usize {
    (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1)
}

/// The one key tokens are verified with: an RS256 public key, or an HS256 secret.
fn verifier(args: &ServeArgs) -> Result<Verifier> {
    if let Some(path) = &args.jwt_public_key_file {
        let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        return Verifier::rs256_pem(&pem).map_err(|e| Error::Config(format!("--jwt-public-key-file {}: {e}", path.display())));
    }
    let secret = match &args.jwt_secret_file {
        Some(path) => std::fs::read(path).map_err(|e| Error::io(path, e))?.trim_ascii().to_vec(),
        None => match std::env::var(SECRET_VAR) {
            Ok(secret) => secret.into_bytes(),
            Err(_) => {
                return Err(Error::Config(format!(
                    "no key to verify tokens with: set {SECRET_VAR}, or pass --jwt-secret-file FILE (HS256) or --jwt-public-key-file FILE (RS256)"
                )))
            }
        },
    };
    Verifier::hs256(&secret).map_err(Error::Config)
}
