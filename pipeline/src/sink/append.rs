//! An epoch's append written to the Delta log directly, as the table's next version.
//!
//! delta-rs's commit path (`CommitBuilder`) brings the committing table's snapshot
//! up to the new version after every commit, and in delta-rs 1.1 that replays the
//! statistics of every live file through the kernel again: an epoch's ~60 commits
//! took 80 ms on new tables and 200-350 ms once they had gathered files between
//! compactions. An append needs none of it. Its version is the one after the
//! sink's last, and the log store's create-if-absent put lands it only if no
//! other writer took that version first; if one did, the sink goes back to
//! delta-rs's path, which resolves the conflict as before. The sink brings its
//! snapshot up to date only when something reads the table's files
//! (`TableSink::catch_up`).

use deltalake::kernel::transaction::{CommitData, TransactionError};
use deltalake::kernel::{Action, Transaction};
use deltalake::logstore::{CommitOrBytes, LogStore};
use deltalake::protocol::DeltaOperation;
use deltalake::DeltaTableError;

/// Whether `log_store` commits by a create-if-absent put of the log entry's bytes,
/// as delta-rs's own path does for it (the others stage a temporary file first).
pub fn writes_directly(log_store: &dyn LogStore) -> bool {
    log_store.name() == "DefaultLogStore"
}

/// Writes `actions` and `txn` as `version`, with the `commitInfo` delta-rs's
/// `CommitBuilder` would write. `Ok(false)`: another writer committed `version` first.
pub async fn append(log_store: &dyn LogStore, version: u64, actions: Vec<Action>, operation: DeltaOperation, txn: Transaction) -> Result<bool, DeltaTableError> {
    let bytes = CommitData::new(actions, operation, Default::default(), vec![txn]).get_bytes()?;
    match log_store.write_commit_entry(version, CommitOrBytes::LogBytes(bytes), uuid::Uuid::new_v4()).await {
        Ok(()) => Ok(true),
        Err(TransactionError::VersionAlreadyExists(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
