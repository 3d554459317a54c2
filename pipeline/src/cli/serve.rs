//! `sluice serve`: the lake over the Postgres wire protocol and the analytics API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::Definitions;
use crate::catalog::{Lake, StorageOptions};
use crate::error::{Error, Result};
use crate::serve::{Limits, ServedLake, Server, Verifier};

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
    /// The most Postgres connections served at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_connections: u64,
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
    let limits = Limits { query_timeout: args.query_timeout, memory_bytes: usize::try_from(args.query_memory).unwrap_or(usize::MAX) };
    let server = Server { lake: Arc::new(ServedLake::new(lake, policy)), verifier, limits, max_connections: args.max_connections as usize, tls };
    server.run(args.pg_addr, args.http_addr).await
}

/// The one key tokens are verified with: an RS256 public key, or an HS256 secret.
fn verifier(args: &ServeArgs) -> Result<Verifier> {
    if let Some(path) = &args.jwt_public_key_file {
        let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        return Verifier::rs256_pem(&pem, path);
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
    Verifier::hs256(&secret)
}
