//! `sluice maintain`: compaction, vacuum and Delta checkpoints for an operator.
//!
//! A running pipeline maintains its tables itself, in its commit cycle. This
//! command is for a lake whose pipeline is stopped: a table must have one writer,
//! since delta-rs's conflict checker would let a compaction here and a correction
//! there both remove the same file.

use super::query::human_bytes;
use super::run::MaintenanceArgs;
use crate::catalog::{Lake, StorageOptions, TablePath};
use crate::checkpoint::CheckpointStore;
use crate::error::{Error, Result};
use crate::sink::maintain;

#[derive(Debug, Clone, clap::Args)]
pub struct MaintainArgs {
    /// The lake (a directory or URL).
    #[arg(long)]
    pub lake: String,
    /// Only this table (`analytics/learner/engagement_daily` or `analytics.learner.engagement_daily`).
    #[arg(long)]
    pub table: Option<String>,
    /// Compact: rewrite every partition's small files into files near the target size.
    #[arg(long)]
    pub compact: bool,
    /// Vacuum: delete removed and unreferenced files older than the retention.
    #[arg(long)]
    pub vacuum: bool,
    /// Say what would be done, and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The pipeline whose unfinished epoch must not be disturbed.
    #[arg(long, default_value = "sluice")]
    pub pipeline: String,
    #[command(flatten)]
    pub maintenance: MaintenanceArgs,
}

pub async fn maintain(args: &MaintainArgs, storage: &StorageOptions) -> Result<()> {
    let lake = Lake::connect(&args.lake, !args.dry_run, storage.clone()).await?;
    let policy = args.maintenance.policy()?;
    // Neither flag: all of it (and a Delta checkpoint when one is due).
    let (compact, vacuum) = if args.compact || args.vacuum { (args.compact, args.vacuum) } else { (true, true) };
    let tables = match &args.table {
        Some(name) => {
            let table = TablePath::new(&name.replace('.', "/")).map_err(Error::Config)?;
            if !lake.tables().await?.contains(&table) {
                return Err(Error::Config(format!("--table {name}: no such table in {}", args.lake)));
            }
            vec![table]
        }
        None => lake.tables().await?,
    };
    // A running pipeline maintains its tables itself: this refuses while one holds
    // the lake (a consumer group's instances: any of its shards).
    let pipelines = match crate::catalog::writers::Writers::of(&lake).await? {
        Some(writers) => writers.pipelines(),
        None => vec![args.pipeline.clone()],
    };
    let mut leases = Vec::new();
    for pipeline in &pipelines {
        if !args.dry_run {
            leases.push(crate::catalog::lease::Lease::acquire(&lake, pipeline).await?);
        }
        refuse_unfinished_epoch(&lake, pipeline, &tables).await?;
    }
    let verb = if args.dry_run { "would" } else { "did" };
    let mut out = String::new();
    for path in tables {
        let mut table = lake.load_table(&path).await?;
        let partition = table.snapshot().map_err(|e| Error::delta(path.as_str(), e))?.metadata().partition_columns().first().cloned();
        let properties = crate::sink::writer_properties(&table.snapshot().map_err(|e| Error::delta(path.as_str(), e))?.snapshot().arrow_schema());
        let mut said = Vec::new();
        if compact {
            let done = maintain::compact(&mut table, partition.as_deref(), &policy, &properties, maintain::Scope::All { dry_run: args.dry_run }, &mut Default::default()).await?;
            for (partition, (removed, added)) in done {
                let at = partition.map(|p| format!(" in {p}")).unwrap_or_default();
                said.push(if args.dry_run { format!("compact {removed} small files{at}") } else { format!("compacted {removed} files into {added}{at}") });
            }
        }
        if vacuum {
            let deleted = maintain::vacuum(&mut table, policy.vacuum_retention, args.dry_run).await?;
            if deleted > 0 {
                said.push(format!("{verb} delete {deleted} files older than {:?}", policy.vacuum_retention));
            }
        }
        if !args.dry_run {
            if let Some(v) = maintain::checkpoint_if_due(&table, maintain::last_checkpoint(&table).await, policy.checkpoint_interval).await? {
                said.push(format!("wrote a Delta checkpoint at version {v}"));
            }
            if vacuum {
                let cleaned = maintain::clean_expired_logs(&table).await?;
                if cleaned > 0 {
                    said.push(format!("cleaned {cleaned} expired log files"));
                }
            }
        }
        let snapshot = table.snapshot().map_err(|e| Error::delta(path.as_str(), e))?;
        let bytes: i64 = snapshot.log_data().iter().map(|f| f.size()).sum();
        let summary = if said.is_empty() { "nothing to do".to_string() } else { said.join("; ") };
        out.push_str(&format!("{}: {summary} ({} live files, {})\n", path.sql_name(), snapshot.log_data().num_files(), human_bytes(bytes as u64)));
    }
    for lease in &mut leases {
        lease.release().await;
    }
    super::emit(&out)
}

/// A table holding files staged by the pipeline's last epoch but not committed
/// yet (it was killed mid-commit) must wait for the pipeline's restart to finish
/// that commit: compacting or vacuuming under it could lose or repeat rows.
async fn refuse_unfinished_epoch(lake: &Lake, pipeline: &str, tables: &[TablePath]) -> Result<()> {
    let Some(checkpoint) = CheckpointStore::open(lake, pipeline)?.latest().await? else { return Ok(()) };
    for table in tables.iter().filter(|t| checkpoint.staged.contains_key(t.as_str())) {
        let delta = lake.load_table(table).await?;
        let committed = crate::sink::committed_epoch(&delta, &format!("{pipeline}:{table}")).await?;
        if committed < Some(checkpoint.epoch) {
            return Err(Error::Config(format!(
                "table {table} has epoch {} of pipeline `{pipeline}` staged but not committed (the pipeline stopped mid-commit): \
                 start the pipeline once to finish it, then maintain",
                checkpoint.epoch
            )));
        }
    }
    Ok(())
}
