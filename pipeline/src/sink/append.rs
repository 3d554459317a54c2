//! An epoch's append written to the Delta log directly, as the table's next version.
//!
//! delta-rs's commit path (`CommitBuilder`) brings the committing table's snapshot
//! up to the new version after every commit, and in delta-rs 1.1 that replays the
//! statistics of every live file through the kernel again: an epoch's ~60 commits
//! took 80 ms on new tables and 200-350 ms once they had gathered files between
//! compactions. An append needs none of it. Its version is the one after the
//! sink's last, and the log store's create-if-absent put lands it only if no
//! other writer took that version first. Another writer's commit that only
//! appends (a group's shards all append to `late_events`) is stepped over: an
//! append reads nothing, so only a change of the table's schema or protocol, or
//! a `txn` of the same app id (a zombie's commit), could conflict with it, and
//! those go back to delta-rs's path, whose conflict checker decides as before.
//! The sink brings its snapshot up to date only when something reads the
//! table's files (`TableSink::catch_up`).

use deltalake::kernel::transaction::{CommitData, TransactionError};
use deltalake::kernel::{Action, Add, Transaction};
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

/// Another writer's commit at `version`, if an append of `app_id` may follow it
/// without delta-rs's conflict checker: it holds only added files (returned),
/// removed ones (`true`: files this sink did not count went) and other app ids'
/// `txn`. `None`: anything else, or a commit that does not read as one.
pub async fn step_over(log_store: &dyn LogStore, version: u64, app_id: &str) -> Result<Option<(Vec<Add>, bool)>, DeltaTableError> {
    let Some(bytes) = log_store.read_commit_entry(version).await? else { return Ok(None) };
    let (mut adds, mut removed) = (Vec::new(), false);
    for action in serde_json::Deserializer::from_slice(&bytes).into_iter::<Action>() {
        match action {
            Ok(Action::Add(add)) => adds.push(add),
            Ok(Action::Remove(_)) => removed = true,
            Ok(Action::CommitInfo(_)) => {}
            Ok(Action::Txn(txn)) if txn.app_id != app_id => {}
            _ => return Ok(None),
        }
    }
    Ok(Some((adds, removed)))
}
