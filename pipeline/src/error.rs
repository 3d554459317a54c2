//! One error type for the engine; every variant says what went wrong and where.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("schema {path}: {message}")]
    Schema { path: PathBuf, message: String },

    #[error("SQL file {path}: {message}")]
    Sql { path: PathBuf, message: String },

    #[error("UDF {path}: {message}")]
    Udf { path: PathBuf, message: String },

    #[error("config: {0}")]
    Config(String),

    #[error("query: {0}")]
    Query(String),

    #[error("input: {0}")]
    Input(String),

    /// `sluice test` ran, and some of its tests failed (each is printed above).
    #[error("tests: {0}")]
    TestsFailed(String),

    #[error("lake table {table}: {source}")]
    Delta { table: String, source: deltalake::DeltaTableError },

    /// Reading or writing the epoch checkpoints under `LAKE/_sluice/`.
    #[error("checkpoint: {0}")]
    Checkpoint(String),

    /// The store holding `LAKE/_sluice/` failed a request.
    #[error("checkpoint: {what} in {location}: {source}")]
    CheckpointStore { what: String, location: String, source: object_store::Error },

    /// The lake's store is missing, refuses us, or cannot commit safely.
    #[error("lake {url}: {problem}")]
    Storage { url: String, problem: String },

    /// Another run took this one's work over (its lease, or an epoch it committed
    /// first): this one must stop writing.
    #[error("fenced: {0}")]
    Fenced(String),

    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),

    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("internal error (a bug in Sluice, please report it): {0}")]
    Internal(String),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    pub fn delta(table: impl Into<String>, source: deltalake::DeltaTableError) -> Self {
        Error::Delta { table: table.into(), source }
    }
}
