//! Epoch checkpoints: what a restart needs to carry on exactly where the lake stopped.
//!
//! Every commit of the pipeline is one epoch, in three steps:
//! 1. each table's new rows are written as Parquet files, not yet part of the table;
//! 2. one checkpoint is written under `LAKE/_sluice/<pipeline>/epoch-N/`: the input
//!    positions, the watermarks, every query's window state, every mirror's retained
//!    changes, and the files of step 1;
//! 3. each table commits its files with a Delta `txn` whose version is the epoch.
//!
//! The checkpoint is the commit point. On start the pipeline loads the newest one,
//! finishes step 3 for the tables whose `txn` is behind it, restores the state and
//! reads on from its positions. Whatever was read after it is read again, and since
//! nothing derived from it reached a table, nothing is counted twice.
//!
//! A manifest is created, never overwritten, and state files carry their writer's
//! name: of two runs that both reach epoch N (one stalled while the other took over
//! its work), one commits it and the other is fenced, whatever their timing.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::catalog::storage::create_or_get;
use crate::catalog::Lake;
use crate::error::{Error, Result};
use crate::sink::Staged;
use crate::source::PartitionId;
use crate::time::PartitionMark;

const MANIFEST: &str = "manifest.json";

/// The state of the pipeline after an epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub epoch: i64,
    /// Per partition, the offset to read next.
    pub positions: Vec<Position>,
    pub watermarks: Vec<PartitionMark>,
    /// Per table (SQL file): its query's watermark and window-state file.
    pub queries: BTreeMap<String, QueryCheckpoint>,
    /// Per mirror table, the file with its retained changes.
    #[serde(default)]
    pub mirrors: BTreeMap<String, String>,
    /// Per table, the files this epoch adds to it (and removes from it).
    pub staged: BTreeMap<String, Staged>,
    /// Which run committed which epochs, oldest first (the last [`MAX_COMMITTERS`]
    /// runs): the merging side of a repartitioned query folds only what the run
    /// that committed an epoch sent for it ([`committer_of`](Self::committer_of)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub committers: Vec<Committer>,
    /// Per repartitioned table this pipeline merges, per repartition partition:
    /// how far the merge got and its open windows' file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub merges: BTreeMap<String, Vec<MergeCheckpoint>>,
}

/// How many runs a manifest remembers the epochs of.
pub const MAX_COMMITTERS: usize = 64;

/// A run that committed epochs: from `from_epoch` until the next run's first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committer {
    pub from_epoch: i64,
    /// The run's name, as in its state files ([`CheckpointStore::writer`]).
    pub writer: String,
}

impl Committer {
    /// Records that `writer` commits `epoch`: a new entry if another run committed
    /// the epoch before; the oldest are forgotten beyond [`MAX_COMMITTERS`].
    pub fn record(history: &mut Vec<Committer>, epoch: i64, writer: &str) {
        if history.last().is_none_or(|c| c.writer != writer) {
            history.push(Committer { from_epoch: epoch, writer: writer.to_string() });
        }
        let surplus = history.len().saturating_sub(MAX_COMMITTERS);
        history.drain(..surplus);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryCheckpoint {
    pub watermark: i64,
    /// The open windows' state (Arrow IPC) in the epoch's directory, if any are open.
    pub windows: Option<String>,
    /// The fingerprint of the plan that wrote the table: a later run with another
    /// rebuilds the table (checkpoints from before it have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The fingerprints of its plan's parts, which say what a change changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, String>,
    /// While the table is backfilled from the archive, how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillProgress>,
}

/// A backfill's progress: per partition, the next archived offset to replay, and
/// its own watermarks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackfillProgress {
    pub positions: Vec<Position>,
    pub watermarks: Vec<PartitionMark>,
    /// Until the replay reaches them, the positions and watermarks of the run when
    /// the backfill began: there its watermarks take up the live ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub began: Option<(Vec<Position>, Vec<PartitionMark>)>,
}

/// One repartition partition's merge ([`crate::repartition::Merger`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCheckpoint {
    #[serde(flatten)]
    pub progress: MergeProgress,
    /// The open windows' state in the epoch's directory, if any are open.
    pub windows: Option<String>,
}

/// How far a merger got, besides its windows' state rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeProgress {
    /// Where to read the repartition partition again from: the first message not
    /// decided yet. Messages after it that were folded are dropped when read again.
    pub resume_from: i64,
    /// Per upstream.
    pub upstreams: Vec<UpstreamMark>,
}

/// How far an upstream's messages were folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamMark {
    /// The last epoch folded (0: none).
    pub folded: i64,
    /// Its watermark: every pane ending by it has been folded.
    pub watermark: i64,
    /// While epoch `folded` is folded part by part: the next part, and how many
    /// there are (`None`: every part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<(u32, u32)>,
}

impl UpstreamMark {
    /// Whether part `part` of `epoch` was folded already (a copy, sent again).
    pub fn has(&self, epoch: i64, part: u32) -> bool {
        epoch < self.folded || (epoch == self.folded && self.parts.is_none_or(|(next, _)| part < next))
    }
}

impl Checkpoint {
    /// The run that committed `epoch`, if this manifest knows: `None` for an epoch
    /// after it, or before the runs it remembers.
    pub fn committer_of(&self, epoch: i64) -> Option<&str> {
        if epoch > self.epoch {
            return None;
        }
        self.committers.iter().rev().find(|c| c.from_epoch <= epoch).map(|c| c.writer.as_str())
    }

    pub fn positions(&self) -> BTreeMap<PartitionId, i64> {
        self.positions
            .iter()
            .map(|p| (PartitionId { topic: Arc::from(p.topic.as_str()), partition: p.partition }, p.next_offset))
            .collect()
    }
}

/// Checkpoints of one pipeline in the lake's object store.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    location: String,
    /// The directory, for a local lake: pruning removes whole epoch directories.
    local: Option<std::path::PathBuf>,
    /// Unique to this run, in the names of the state files it writes.
    writer: String,
}

fn epoch_dir(epoch: i64) -> String {
    format!("epoch-{epoch:020}")
}

impl CheckpointStore {
    /// The store at `LAKE/_sluice/<pipeline>/`.
    pub fn open(lake: &Lake, pipeline: &str) -> Result<Self> {
        let url = lake
            .root()
            .join(&format!("_sluice/{pipeline}/"))
            .map_err(|e| Error::Config(format!("pipeline name `{pipeline}`: {e}")))?;
        let local = url.to_file_path().ok();
        if let Some(dir) = &local {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let store = lake.store_at(url.clone())?;
        let writer = format!("{}-{}", std::process::id(), chrono::Utc::now().timestamp_micros());
        Ok(CheckpointStore { store, location: url.to_string(), local, writer })
    }

    /// This run's name, in its state files and the manifests it commits.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Checkpoint(format!("{what} in {}: {e}", self.location))
    }

    fn store_error(&self, what: &str, source: object_store::Error) -> Error {
        Error::CheckpointStore { what: what.to_string(), location: self.location.clone(), source }
    }

    /// Epochs with a complete checkpoint, newest first.
    async fn epochs(&self) -> Result<Vec<i64>> {
        let listing = self.store.list_with_delimiter(None).await.map_err(|e| self.store_error("listing checkpoints", e))?;
        let mut epochs: Vec<i64> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.strip_prefix("epoch-")?.parse().ok())
            .collect();
        epochs.sort_unstable_by(|a, b| b.cmp(a));
        Ok(epochs)
    }

    /// The newest complete checkpoint, if any. A directory without its manifest is
    /// an epoch that died before its commit point, and is passed over.
    pub async fn latest(&self) -> Result<Option<Checkpoint>> {
        for epoch in self.epochs().await? {
            let path = Path::from(format!("{}/{MANIFEST}", epoch_dir(epoch)));
            match self.store.get(&path).await {
                Ok(found) => {
                    let bytes = found.bytes().await.map_err(|e| self.store_error("reading a manifest", e))?;
                    let checkpoint: Checkpoint =
                        serde_json::from_slice(&bytes).map_err(|e| self.error(&format!("manifest {path}"), e))?;
                    return Ok(Some(checkpoint));
                }
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.store_error("reading a manifest", e)),
            }
        }
        Ok(None)
    }

    /// Writes a query's window state, a merger's or a mirror's changes for `epoch`,
    /// as `<stem>.<writer>.arrow` (the stem names the table); returns the name to record.
    pub async fn put_state(&self, epoch: i64, stem: &str, state: &RecordBatch) -> Result<String> {
        let name = format!("{stem}.{}.arrow", self.writer);
        let mut bytes = Vec::new();
        let mut writer = arrow::ipc::writer::FileWriter::try_new(&mut bytes, &state.schema())?;
        writer.write(state)?;
        writer.finish()?;
        drop(writer);
        let path = Path::from(format!("{}/{name}", epoch_dir(epoch)));
        self.store.put(&path, PutPayload::from(bytes)).await.map_err(|e| self.store_error("writing window state", e))?;
        Ok(name)
    }

    /// State as written by [`put_state`](Self::put_state).
    pub async fn state(&self, epoch: i64, name: &str) -> Result<Vec<RecordBatch>> {
        let path = Path::from(format!("{}/{name}", epoch_dir(epoch)));
        let found = self.store.get(&path).await.map_err(|e| self.store_error("reading window state", e))?;
        let bytes = found.bytes().await.map_err(|e| self.store_error("reading window state", e))?;
        // A damaged file is refused naming it, never a panic or an abort (crate::ipc).
        crate::ipc::read_file(&bytes).map_err(|e| self.error(&format!("window state {path}"), e))
    }

    /// Creates the manifest: from here on the epoch counts as done. Fails as
    /// [`Error::Fenced`] if another run created it first.
    pub async fn save(&self, checkpoint: &Checkpoint) -> Result<()> {
        let json = serde_json::to_vec(checkpoint).map_err(|e| self.error("encoding the manifest", e))?;
        let path = Path::from(format!("{}/{MANIFEST}", epoch_dir(checkpoint.epoch)));
        match create_or_get(self.store.as_ref(), &path, json.clone()).await {
            // Ours, if an earlier attempt landed without its answer.
            Ok(found) if found.as_ref().is_none_or(|bytes| bytes.as_ref() == json.as_slice()) => Ok(()),
            Ok(_) => Err(Error::Fenced(format!(
                "epoch {} under {} was committed by another run: this one stops, so that the epoch counts once",
                checkpoint.epoch, self.location
            ))),
            Err(e) => Err(self.store_error("writing the manifest", e)),
        }
    }

    /// Deletes every checkpoint older than `epoch`, and unfinished ones among them.
    pub async fn prune_before(&self, epoch: i64) -> Result<()> {
        for old in self.epochs().await?.into_iter().filter(|e| *e < epoch) {
            if let Some(dir) = &self.local {
                let dir = dir.join(epoch_dir(old));
                match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&dir, e)),
                    _ => continue,
                }
            }
            let prefix = Path::from(epoch_dir(old));
            let files = self.store.list(Some(&prefix)).map(|m| m.map(|m| m.location)).boxed();
            let mut deleted = self.store.delete_stream(files);
            while let Some(result) = deleted.next().await {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.store_error("pruning old checkpoints", e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::TablePath;

    #[tokio::test]
    async fn an_epoch_is_committed_once_and_a_second_writer_is_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::connect(dir.path().to_str().unwrap(), true, Default::default()).await.unwrap();
        let (first, second) = (CheckpointStore::open(&lake, "g/shard-1").unwrap(), CheckpointStore::open(&lake, "g/shard-1").unwrap());
        let ours = Checkpoint { epoch: 7, ..Default::default() };
        first.save(&ours).await.unwrap();
        // Saved again (an answer lost on the way): the same manifest is fine.
        first.save(&ours).await.unwrap();
        let theirs = Checkpoint { epoch: 7, mirrors: BTreeMap::from([("t".to_string(), "f".to_string())]), ..Default::default() };
        let fenced = second.save(&theirs).await;
        assert!(matches!(&fenced, Err(Error::Fenced(m)) if m.contains("epoch 7")), "{fenced:?}");
        assert!(first.latest().await.unwrap().is_some_and(|c| c.mirrors.is_empty()), "the first manifest stands");
        // Their state files do not overwrite each other's.
        let state = RecordBatch::new_empty(Arc::new(arrow::datatypes::Schema::empty()));
        let table = TablePath::new("a/b/c").unwrap();
        assert_ne!(first.put_state(7, &table.sql_name(), &state).await.unwrap(), second.put_state(7, &table.sql_name(), &state).await.unwrap());
    }

    /// A state file damaged in the store is refused naming it, not a panic.
    #[tokio::test]
    async fn a_damaged_state_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::connect(dir.path().to_str().unwrap(), true, Default::default()).await.unwrap();
        let store = CheckpointStore::open(&lake, "p").unwrap();
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Int64, false)]));
        let rows = RecordBatch::try_new(schema, vec![Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3]))]).unwrap();
        let name = store.put_state(3, "a.b.c", &rows).await.unwrap();
        assert_eq!(store.state(3, &name).await.unwrap(), vec![rows]);
        let file = dir.path().join("_sluice/p").join(epoch_dir(3)).join(&name);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        let refused = store.state(3, &name).await.unwrap_err().to_string();
        assert!(refused.contains(&format!("window state {}/{name}", epoch_dir(3))), "{refused}");
    }

    #[test]
    fn a_manifest_names_the_run_that_committed_each_of_its_last_epochs() {
        let mut history = Vec::new();
        for epoch in 1..=3 {
            Committer::record(&mut history, epoch, "a");
        }
        // b carried on from epoch 3's checkpoint (a's attempt at 4 died before its manifest).
        for epoch in 4..=5 {
            Committer::record(&mut history, epoch, "b");
        }
        let manifest = Checkpoint { epoch: 5, committers: history.clone(), ..Default::default() };
        let committers: Vec<_> = (0..=6).map(|e| manifest.committer_of(e)).collect();
        assert_eq!(committers, [None, Some("a"), Some("a"), Some("a"), Some("b"), Some("b"), None], "epoch 6 is not committed yet");
        // Only the last MAX_COMMITTERS runs are remembered.
        for (run, epoch) in (6..6 + MAX_COMMITTERS as i64).enumerate() {
            Committer::record(&mut history, epoch, &format!("run-{run}"));
        }
        let manifest = Checkpoint { epoch: 5 + MAX_COMMITTERS as i64, committers: history, ..Default::default() };
        assert_eq!(manifest.committers.len(), MAX_COMMITTERS);
        assert_eq!((manifest.committer_of(5), manifest.committer_of(6)), (None, Some("run-0")));
    }
}
