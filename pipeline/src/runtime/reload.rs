//! Live definitions: on SIGHUP a running pipeline reads its SQL directory again
//! and takes up what changed, between two epochs, without a restart.
//!
//! - An added file's table is backfilled from the archive (see `backfill`), then
//!   joins the live stream.
//! - A removed file stops its table, which stays in the lake as it was.
//! - A changed file whose fingerprint (its plan) is the same, such as a new comment
//!   or spacing, changes nothing. A changed landing (stateless) file is swapped in
//!   from the next message on. A changed windowed, keyed or over-mirrors file is
//!   refused: its state belongs to the old definition (a restart rebuilds it).
//! - The UDFs are read again too, and a changed one built (the stream waits for
//!   the build): a file calling a UDF whose code changed counts as changed.
//! - Any file that fails to load or plan, a UDF that does not build, or a refused
//!   change, refuses the whole reload with its message; the running definitions go
//!   on untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::{input_tables, Pipeline, RunningQuery};
use crate::catalog::{Lake, TablePath};
use crate::error::{Error, Result};
use crate::plan::{load_sql_dir, plan, Shape, StreamingQuery};
use crate::schema::SchemaRegistry;
use crate::udf::Udfs;

/// Where a running pipeline reads its definitions again.
#[derive(Debug, Clone)]
pub struct LiveDefinitions {
    pub sql_dir: PathBuf,
    pub registry: SchemaRegistry,
    /// The UDFs the running definitions call, and where they are read again.
    pub udfs: Udfs,
    pub udfs_dir: Option<PathBuf>,
    pub lake: Lake,
    /// What asks for a reload: SIGHUP (`None`), or, for a group's shard, the
    /// instance, which reads the files first (see `group`).
    pub told: Option<tokio::sync::watch::Receiver<u64>>,
}

/// Requests to read the definitions again.
pub(super) enum Requests {
    Hangup(tokio::signal::unix::Signal),
    Told(tokio::sync::watch::Receiver<u64>),
}

impl Requests {
    pub(super) fn listen(live: &LiveDefinitions) -> Option<Self> {
        match &live.told {
            Some(told) => Some(Requests::Told(told.clone())),
            None => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok().map(Requests::Hangup),
        }
    }

    /// The next request; `None` once none can come. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<()> {
        match self {
            Requests::Hangup(signal) => signal.recv().await,
            Requests::Told(told) => told.changed().await.ok(),
        }
    }
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<TablePath>,
    pub removed: Vec<TablePath>,
    pub changed: Vec<TablePath>,
}

impl LiveDefinitions {
    /// Every UDF of the directory, built where its code changed.
    fn udfs_again(&self) -> Result<Udfs> {
        let Some(dir) = &self.udfs_dir else { return Ok(self.udfs.clone()) };
        let hidden = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
        Udfs::build_and_load(&crate::udf::load_dir(dir)?, &crate::udf::build::cache_dir(), &hidden)
    }

    /// Every SQL file of the directory, planned with `udfs`; the first failure
    /// refuses them all.
    async fn plan_all(&self, udfs: &Udfs) -> Result<BTreeMap<TablePath, StreamingQuery>> {
        let inputs = input_tables(&self.registry);
        let mut planned = BTreeMap::new();
        for file in load_sql_dir(&self.sql_dir)? {
            planned.insert(file.table.clone(), plan(&file, &inputs, udfs).await?);
        }
        Ok(planned)
    }
}

/// Whether a query keeps state across batches.
fn stateful(query: &StreamingQuery) -> bool {
    !matches!(query.shape, Shape::Stateless { .. })
}

impl Pipeline {
    /// Reads the SQL directory again and takes up what changed (see the module
    /// comment); called between epochs. Nothing changes unless all of it can.
    pub(super) async fn reload(&mut self, live: &LiveDefinitions) -> Result<Reloaded> {
        let udfs = live.udfs_again()?;
        let mut planned = live.plan_all(&udfs).await?;
        // A group's shard takes up its own tables only, and keeps the repartitioned
        // ones it runs; a new repartitioned table starts at the group's next start,
        // in every shard at once.
        let group = self.options.shard.clone();
        planned.retain(|table, query| match &group {
            None => true,
            Some(_) if query.repartition && !self.queries.iter().any(|q| q.query.table == *table) => {
                tracing::warn!(table = %table.sql_name(), "a new repartitioned table is taken up when the group's instances start again, not by SIGHUP");
                false
            }
            Some(shard) => query.repartition || shard.writes(table),
        });
        // The UDFs a query calls whose code changed since the running plans were made.
        let rebuilt = |query: &StreamingQuery| -> Vec<String> { query.udfs.iter().filter(|u| live.udfs.library_of(u) != udfs.library_of(u)).cloned().collect() };
        let backfilling: Vec<&RunningQuery> = self.backfills.iter().map(|b| &b.query).collect();
        let running: BTreeMap<TablePath, &RunningQuery> = self.queries.iter().chain(backfilling.iter().copied()).map(|q| (q.query.table.clone(), q)).collect();
        let mut reloaded = Reloaded::default();
        // Why each changed file is taken up, said once the whole reload is.
        let mut reasons = BTreeMap::new();
        for (table, query) in &planned {
            let Some(old) = running.get(table) else {
                reloaded.added.push(table.clone());
                continue;
            };
            let changed_udfs = rebuilt(query);
            if old.query.fingerprint == query.fingerprint && changed_udfs.is_empty() {
                continue;
            }
            let why = match changed_udfs.is_empty() {
                true => format!("{} (plan {} → {})", crate::plan::what_changed(&old.query.parts, &query.parts), old.query.fingerprint, query.fingerprint),
                false => format!("the code of the UDF it calls changed ({})", changed_udfs.join(", ")),
            };
            if backfilling.iter().any(|b| b.query.table == *table) {
                return Err(Error::Sql {
                    path: query.path.clone(),
                    message: "its definition changed while its table is backfilled from the archive: change it again once the backfill is done (the log says `backfilled`)".into(),
                });
            }
            if stateful(&old.query) || stateful(query) {
                return Err(Error::Sql {
                    path: query.path.clone(),
                    message: format!(
                        "{why}, and the table keeps state (windows, keys or mirrors) that belongs to the old one: \
                         a change of a stateful table is not taken up while running; restart the run to rebuild the table from the archive"
                    ),
                });
            }
            if old.query.output_schema != query.output_schema {
                return Err(Error::Sql {
                    path: query.path.clone(),
                    message: "its columns changed: the table's rows so far have the old ones, so the change is not taken up while running".into(),
                });
            }
            reasons.insert(table.clone(), why);
            reloaded.changed.push(table.clone());
        }
        reloaded.removed = running.keys().filter(|t| !planned.contains_key(*t)).cloned().collect();

        // What can fail first (opening the new tables), then the swap.
        let mut sinks = Vec::new();
        let mut started = Vec::new();
        let mut fill_from_mirrors: Vec<Arc<str>> = Vec::new();
        for table in reloaded.added.iter().chain(&reloaded.changed) {
            let Some(query) = planned.remove(table) else { continue };
            if reloaded.added.contains(table) {
                let sink = super::open_sink(&live.lake, &query, &self.options.pipeline, false).await?;
                if matches!(query.shape, Shape::OverMirrors { .. }) {
                    fill_from_mirrors.extend(query.mirrors.iter().map(|m| m.topic.clone()));
                }
                sinks.push(sink);
            }
            started.push(RunningQuery::new(query)?);
        }
        let gone: BTreeSet<&TablePath> = reloaded.removed.iter().chain(&reloaded.changed).collect();
        self.queries.retain(|q| !gone.contains(&q.query.table));
        self.backfills.retain(|b| !gone.contains(b.table()));
        for table in &reloaded.removed {
            self.lake.remove_sink(table);
            tracing::warn!(table = %table.sql_name(), "its SQL file was removed: the table stays in the lake as it was, no longer updated");
        }
        for sink in sinks {
            self.lake.add_sink(sink);
        }
        for query in started {
            let table = query.query.table.clone();
            match reasons.get(&table) {
                None => tracing::info!(table = %table.sql_name(), file = %query.query.path.display(), plan = %query.query.fingerprint, "took up a new SQL file"),
                Some(why) => tracing::info!(table = %table.sql_name(), file = %query.query.path.display(), "took up a changed SQL file: {why}; a landing, swapped in from the next message on"),
            }
            self.queries.push(query);
            if reloaded.added.contains(&table) {
                self.backfill_if_new(self.queries.len() - 1, &live.lake).await?;
            }
        }
        // A table over mirrors is computed from their current rows at once.
        self.rerun_over_mirrors(&fill_from_mirrors).await?;
        if let Some(running) = self.options.live.as_mut() {
            running.udfs = udfs;
        }
        Ok(reloaded)
    }
}
