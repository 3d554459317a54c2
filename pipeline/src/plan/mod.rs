//! SQL files to streaming plans.
//!
//! A SQL file `sql/<a>/<b>/<c>.sql` defines the lake table `<a>/<b>/<c>`. Its `FROM`
//! names input topics as tables (`gateway.requests`, `interactions`, or the
//! pipeline's own `sluice.metrics`). DataFusion plans and optimises the query as if
//! the topics were tables; this module then cuts the plan into what runs per batch
//! and what runs per window:
//!
//! - no aggregate: the whole plan is **stateless** and runs on every batch;
//! - one `GROUP BY tumble(...)` (or `hop(...)`) aggregate: the plan below it runs on
//!   every batch, the [`WindowSpec`] says how the window operator keeps its state,
//!   and the plan above it runs on the rows of the windows that close. Only the plan
//!   above may read service mirrors (`services.directory.users`): a temporal join,
//!   which sees each mirror as of the window's end;
//! - a query over mirrors alone (a `GROUP BY org_id` of `services.directory.users`)
//!   is a continuously updated table: it runs again on the mirrors' current rows
//!   whenever one of them changed, and its result replaces the table's rows;
//! - anything else (a join, `ORDER BY` or a window function on the stream, an
//!   aggregate without a window) is refused here, naming the construct and the file.
//!
//! A file can also ask, in a `-- sluice:` comment ([`directives`]), that late events
//! correct the windows they belong to.

mod current;
pub mod directives;
mod files;
mod fingerprint;
mod inspect;
mod slot;
mod window;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::TableReference;
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::{SQLOptions, SessionState};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Aggregate, LogicalPlan, TableScanBuilder};
use datafusion::optimizer::Optimizer;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use current::CurrentSpec;
pub use files::{load_sql_dir, SqlFile};
pub use fingerprint::what_changed;
use fingerprint::{fingerprint, parts_of};
use inspect::{called_functions, refuse_unbounded, regroups};
pub use crate::dialect::{window_type, WINDOW_FUNCTIONS};
pub use slot::Slot;
pub use window::WindowSpec;

use crate::catalog::TablePath;
use crate::error::{Error, Result};
use crate::udf::Udfs;

/// A table SQL can read: a topic's stream, or the mirror a CDC topic maintains.
#[derive(Debug, Clone)]
pub struct InputTable {
    /// The topic whose messages feed the table (and whose watermark it follows).
    pub topic: Arc<str>,
    pub schema: SchemaRef,
    /// For a mirror, its lake table (`services/directory/users`, in SQL
    /// `services.directory.users`); for a stream, none.
    pub mirror: Option<TablePath>,
}

impl InputTable {
    fn reference(&self) -> TableReference {
        match &self.mirror {
            Some(table) => TableReference::parse_str(&table.sql_name()),
            None => TableReference::parse_str(&self.topic),
        }
    }
}

/// A mirror a query joins, with the slot its state as of a window's end goes into.
#[derive(Debug, Clone)]
pub struct MirrorInput {
    pub table: TablePath,
    pub topic: Arc<str>,
    pub slot: Slot,
}

/// A SQL file, planned to run on a stream.
pub struct StreamingQuery {
    pub table: TablePath,
    pub path: PathBuf,
    /// The topics the query reads, each with the slot its batches go into.
    pub inputs: Vec<(Arc<str>, Slot)>,
    /// The mirrors the plan above the window joins.
    pub mirrors: Vec<MirrorInput>,
    pub shape: Shape,
    /// The schema of the query's result rows.
    pub output_schema: SchemaRef,
    /// The user-defined functions it calls, by name.
    pub udfs: Vec<String>,
    pub task_ctx: Arc<TaskContext>,
    /// A hash of the logical plan and the file's directives: two files with the
    /// same fingerprint compute the same table, whatever their comments and spacing.
    pub fingerprint: String,
    /// Fingerprints of the plan's parts (sources, filters, grouping, aggregates,
    /// joins, columns, directives), which say what a change changed.
    pub parts: BTreeMap<String, String>,
    /// `-- sluice: repartition`: in a group, every shard folds panes and the
    /// table's shard merges them ([`crate::repartition`]).
    pub repartition: bool,
}

pub enum Shape {
    /// Runs on every batch; every result row is output at once.
    Stateless { plan: Arc<dyn ExecutionPlan> },
    /// Rows go through `input`, into the window operator, and closed windows' rows
    /// through `output` (fed by `output_slot`).
    Windowed {
        input: Arc<dyn ExecutionPlan>,
        window: WindowSpec,
        output: Arc<dyn ExecutionPlan>,
        output_slot: Slot,
        /// `output` runs once per window end, on that end's rows alone: it joins
        /// mirrors as of the end, or aggregates the window's rows again.
        per_window: bool,
    },
    /// Reads mirrors only: runs on their current rows whenever one of them changed,
    /// and the result replaces the table's rows.
    OverMirrors { plan: Arc<dyn ExecutionPlan> },
    /// `-- sluice: current state`: rows go through `input` into the current-state
    /// operator, which keeps them per key; at each commit after a key changed, every
    /// live key's aggregate goes through `output` (fed by `output_slot`) and replaces
    /// the table's rows.
    Current { input: Arc<dyn ExecutionPlan>, spec: CurrentSpec, output: Arc<dyn ExecutionPlan>, output_slot: Slot },
}

#[derive(Clone)]
pub struct AggregateSpec {
    pub function: Arc<AggregateFunctionExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl StreamingQuery {
    pub fn topics(&self) -> impl Iterator<Item = &Arc<str>> {
        self.inputs.iter().map(|(t, _)| t)
    }

    /// How long after their end late events still correct the query's windows, µs.
    pub fn corrections(&self) -> Option<i64> {
        match &self.shape {
            Shape::Windowed { window, .. } => window.corrections,
            _ => None,
        }
    }

    /// The topics whose watermarks the query's windows wait for: its streams, and
    /// the CDC topics of the mirrors it joins.
    pub fn clock_topics(&self) -> Vec<Arc<str>> {
        let mut topics: Vec<Arc<str>> = self.topics().cloned().collect();
        for mirror in &self.mirrors {
            if !topics.contains(&mirror.topic) {
                topics.push(mirror.topic.clone());
            }
        }
        topics
    }
}

/// Plans one SQL file against the input tables.
pub async fn plan(file: &SqlFile, inputs: &[InputTable], udfs: &Udfs) -> Result<StreamingQuery> {
    let sql_err = |message: String| Error::Sql { path: file.path.clone(), message };
    let df_err = |e: datafusion::error::DataFusionError| sql_err(e.strip_backtrace().to_string());
    let directives = directives::parse(&file.sql).map_err(sql_err)?;

    let state = session_state();
    let ctx = SessionContext::new_with_state(state.clone());
    for udf in crate::dialect::all() {
        ctx.register_udf((*udf).clone());
    }
    udfs.register(&ctx);
    let mut slots = Vec::new();
    for input in inputs {
        let slot = Slot::new(input.schema.clone());
        let reference = input.reference();
        ensure_schema(&ctx, &reference);
        ctx.register_table(reference.clone(), Arc::new(slot.table().map_err(df_err)?)).map_err(df_err)?;
        slots.push((reference, input, slot));
    }

    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let logical = ctx.sql_with_options(&file.sql, options).await.map_err(df_err)?.into_unoptimized_plan();
    let fingerprint = fingerprint(&format!("{}\n{directives:?}", logical.display_indent_schema()));
    let parts = parts_of(&logical, &format!("{directives:?}"));
    let logical = window::bind_windows_to_event_time(logical).map_err(df_err)?;
    let state = ctx.state();
    let logical = match &directives.current_state {
        Some(current) => current::bind(logical, current.removed_when.as_deref(), &state).map_err(df_err)?,
        None => logical,
    };
    let optimized = state.optimize(&logical).map_err(df_err)?;

    // The tables a plan reads, in a stable order.
    let scanned = |plan: &LogicalPlan| {
        let mut found: Vec<(&InputTable, Slot)> = Vec::new();
        let _ = plan.apply(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                if let Some((_, input, slot)) = slots.iter().find(|(r, _, _)| r.resolved_eq(&scan.table_name)) {
                    if !found.iter().any(|(i, _)| std::ptr::eq(*i, *input)) {
                        found.push((input, slot.clone()));
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        found
    };
    let all = scanned(&optimized);
    let used: Vec<(Arc<str>, Slot)> = all.iter().filter(|(i, _)| i.mirror.is_none()).map(|(i, s)| (i.topic.clone(), s.clone())).collect();
    let mirrors: Vec<MirrorInput> = all
        .iter()
        .filter_map(|(i, slot)| Some(MirrorInput { table: i.mirror.clone()?, topic: i.topic.clone(), slot: slot.clone() }))
        .collect();
    if used.is_empty() && mirrors.is_empty() {
        return Err(sql_err("the query reads no topic: name one in FROM (e.g. `FROM gateway.requests`)".into()));
    }
    let mirror_below = |plan: &LogicalPlan| scanned(plan).into_iter().find_map(|(i, _)| i.mirror.clone());

    let task_ctx = ctx.task_ctx();
    let planner = DefaultPhysicalPlanner::default();
    let windowed = window::find_windowed_aggregates(&optimized);
    let shape = match windowed.as_slice() {
        _ if directives.current_state.is_some() => {
            if !mirrors.is_empty() {
                return Err(sql_err("a current-state query reads topics only, not mirrors".into()));
            }
            if used.is_empty() {
                return Err(sql_err("a current-state query keeps the state of a topic's keys: name a topic in FROM".into()));
            }
            let Some(aggregate) = current::find(&optimized) else {
                return Err(sql_err("a current-state query keeps one row per key: GROUP BY its key (`GROUP BY connection_id`)".into()));
            };
            refuse_unbounded(&aggregate.input).map_err(sql_err)?;
            let input = planner.create_physical_plan(&aggregate.input, &state).await.map_err(df_err)?;
            let removed_when = directives.current_state.as_ref().and_then(|c| c.removed_when.as_deref());
            let spec = current::current_spec(&aggregate, &input.schema(), &state, removed_when).map_err(sql_err)?;
            let output_slot = Slot::new(spec.schema.clone());
            let output_plan = replace_aggregate(&optimized, &aggregate, &output_slot).map_err(df_err)?;
            if let Some((topic, _)) = scanned(&output_plan).into_iter().find(|(i, _)| i.mirror.is_none()) {
                return Err(sql_err(format!("topic {} is read outside the current-state aggregate: read topics below its GROUP BY", topic.topic)));
            }
            let output = planner.create_physical_plan(&output_plan, &state).await.map_err(df_err)?;
            Shape::Current { input, spec, output, output_slot }
        }
        _ if used.is_empty() => {
            if !windowed.is_empty() {
                return Err(sql_err(
                    "a mirror has no event time to window: aggregate it with a plain GROUP BY, or window a topic \
                     and join the mirror with the result"
                        .into(),
                ));
            }
            let plan = planner.create_physical_plan(&optimized, &state).await.map_err(df_err)?;
            Shape::OverMirrors { plan }
        }
        [] => {
            if let Some(mirror) = mirror_below(&optimized) {
                return Err(sql_err(format!(
                    "mirror {} is joined with a stream without a window: a temporal join reads the mirror as of a \
                     window's end, so aggregate the stream with GROUP BY tumble(...) and join the mirror with its result",
                    mirror.sql_name()
                )));
            }
            refuse_unbounded(&optimized).map_err(sql_err)?;
            let plan = planner.create_physical_plan(&optimized, &state).await.map_err(df_err)?;
            Shape::Stateless { plan }
        }
        [aggregate] => {
            if let Some(mirror) = mirror_below(&aggregate.input) {
                return Err(sql_err(format!(
                    "mirror {} is joined below the window: join it with the windowed aggregate's result \
                     (in an outer query), where it is read as of each window's end",
                    mirror.sql_name()
                )));
            }
            refuse_unbounded(&aggregate.input).map_err(sql_err)?;
            let input = planner.create_physical_plan(&aggregate.input, &state).await.map_err(df_err)?;
            let mut window = window::window_spec(aggregate, &input.schema(), &state).map_err(sql_err)?;
            window.corrections = directives.corrections;
            let output_slot = Slot::new(window.schema.clone());
            let output_plan = replace_aggregate(&optimized, aggregate, &output_slot).map_err(df_err)?;
            if let Some((topic, _)) = scanned(&output_plan).into_iter().find(|(i, _)| i.mirror.is_none()) {
                return Err(sql_err(format!(
                    "topic {} is read outside the windowed aggregate: a stream can only be read below the one \
                     GROUP BY tumble(...) (combine topics with UNION ALL inside it)",
                    topic.topic
                )));
            }
            let per_window = !mirrors.is_empty() || regroups(&output_plan);
            let output = planner.create_physical_plan(&output_plan, &state).await.map_err(df_err)?;
            if window.corrections.is_some() {
                if window.session_gap.is_some() || window.slide != window.size {
                    return Err(sql_err(
                        "late events can update tumble() windows only: this query uses hop() or session()".into(),
                    ));
                }
                if !output.schema().fields().iter().any(|f| is_window_column(f.data_type())) {
                    return Err(sql_err(
                        "late events update a window's rows, found by the window: select the window column".into(),
                    ));
                }
            }
            Shape::Windowed { input, window, output, output_slot, per_window }
        }
        _ => {
            return Err(sql_err(
                "more than one windowed aggregation in one query is not supported: split it into two SQL files".into(),
            ))
        }
    };
    if directives.corrections.is_some() && !matches!(shape, Shape::Windowed { .. }) {
        return Err(sql_err("late events update windows, and this query has none: drop the `-- sluice:` line".into()));
    }
    if directives.repartition {
        refuse_repartition(&shape, &mirrors).map_err(sql_err)?;
    }
    let output_schema = match &shape {
        Shape::Stateless { plan } | Shape::OverMirrors { plan } => plan.schema(),
        Shape::Windowed { output, .. } | Shape::Current { output, .. } => output.schema(),
    };
    let called = called_functions(&optimized);
    let udfs = udfs.names().filter(|n| called.iter().any(|c| c == n)).map(str::to_string).collect();
    Ok(StreamingQuery {
        table: file.table.clone(),
        path: file.path.clone(),
        inputs: used,
        mirrors,
        shape,
        output_schema,
        udfs,
        task_ctx,
        fingerprint,
        parts,
        repartition: directives.repartition,
    })
}

/// What `-- sluice: repartition` cannot merge from partial states: panes merge,
/// sessions span partitions by gap, corrections reopen emitted windows, and a
/// mirror is joined as of each window's end by the one process that emits it.
fn refuse_repartition(shape: &Shape, mirrors: &[MirrorInput]) -> std::result::Result<(), String> {
    let Shape::Windowed { window, .. } = shape else {
        return Err("`-- sluice: repartition` merges windows: this query has no GROUP BY tumble(...) or hop(...)".into());
    };
    let refused = if window.session_gap.is_some() {
        "session windows"
    } else if window.corrections.is_some() {
        "late events that update windows"
    } else if !mirrors.is_empty() {
        "joins with mirrors"
    } else {
        return Ok(());
    };
    Err(format!("`-- sluice: repartition` merges tumble() and hop() windows over topics, not {refused}: drop the directive (the table is then computed whole by its shard)"))
}

/// One partition, no repartitioning: a batch goes through a plan as one stream.
fn session_state() -> SessionState {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(8192)
        .with_information_schema(false)
        .set_bool("datafusion.optimizer.repartition_aggregations", false)
        .set_bool("datafusion.optimizer.repartition_windows", false)
        .set_bool("datafusion.execution.coalesce_batches", false)
        // Plans run again for every batch or window: no filter may carry over.
        .set_bool("datafusion.optimizer.enable_dynamic_filter_pushdown", false);
    // A single COUNT(DISTINCT) would otherwise become two nested aggregates.
    let rules = Optimizer::new()
        .rules
        .into_iter()
        .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
        .collect();
    SessionStateBuilder::new().with_config(config).with_default_features().with_optimizer_rules(rules).build()
}

/// Creates the catalog and schema a dotted topic name needs (`cdc.directory.users`).
fn ensure_schema(ctx: &SessionContext, reference: &TableReference) {
    let catalog_name = reference.catalog().unwrap_or("datafusion");
    let catalog = match ctx.catalog(catalog_name) {
        Some(c) => c,
        None => {
            let c: Arc<dyn CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
            ctx.register_catalog(catalog_name, c.clone());
            c
        }
    };
    if let Some(schema) = reference.schema() {
        if catalog.schema(schema).is_none() {
            let _ = catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()));
        }
    }
}

/// The plan above the windowed or current-state aggregate, reading the aggregate's rows from `slot`.
fn replace_aggregate(plan: &LogicalPlan, windowed: &Aggregate, slot: &Slot) -> datafusion::error::Result<LogicalPlan> {
    let source = provider_as_source(Arc::new(slot.table()?));
    plan.clone()
        .transform_up(|node| match node {
            LogicalPlan::Aggregate(agg) if agg == *windowed => {
                let mut scan = TableScanBuilder::new("__window", source.clone()).build()?;
                // Keep the aggregate's field names and qualifiers: the plan above refers to them.
                scan.projected_schema = agg.schema.clone();
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
}

impl StreamingQuery {
    /// The index of the result's `window` column, if it has one.
    pub fn window_column(&self) -> Option<usize> {
        self.output_schema.fields().iter().position(|f| is_window_column(f.data_type()))
    }
}

/// Whether a result column is a `window` ({start, end}), which lands as window_start/window_end.
pub fn is_window_column(data_type: &DataType) -> bool {
    *data_type == window_type()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use crate::schema::SchemaRegistry;

    fn inputs() -> Vec<InputTable> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        crate::runtime::input_tables(&SchemaRegistry::load(&dir).unwrap())
    }

    async fn plan_sql(sql: &str) -> Result<StreamingQuery> {
        let file = SqlFile {
            path: PathBuf::from("sql/a/b/c.sql"),
            table: TablePath::new("a/b/c").unwrap(),
            sql: sql.into(),
        };
        plan(&file, &inputs(), &Udfs::default()).await
    }

    #[tokio::test]
    async fn the_fingerprint_follows_the_plan_not_the_text() {
        let base = "SELECT tumble(interval '1 minute') AS window, service, count(*) AS n FROM gateway.requests GROUP BY window, service";
        let fingerprint = |sql: String| async move { plan_sql(&sql).await.unwrap().fingerprint };
        let same = fingerprint(base.into()).await;
        assert_eq!(fingerprint(format!("-- why\n{}\n\n", base.replace(", ", " ,  "))).await, same, "comments and spacing");
        assert_ne!(fingerprint(base.replace("count(*)", "sum(duration_ms)")).await, same, "an aggregate");
        assert_ne!(fingerprint(base.replace("1 minute", "2 minutes")).await, same, "the window");
        assert_ne!(fingerprint(format!("-- sluice: late events update windows for 1 hour\n{base}")).await, same, "a directive");
    }

    #[tokio::test]
    async fn repartition_is_refused_for_what_partial_states_cannot_merge() {
        let base = "SELECT tumble(interval '1 minute') AS window, service, count(*) AS n FROM gateway.requests GROUP BY window, service";
        let planned = plan_sql(&format!("-- sluice: repartition\n{base}")).await.unwrap();
        assert!(planned.repartition);
        assert_ne!(planned.fingerprint, plan_sql(base).await.unwrap().fingerprint, "switching rebuilds the table");
        let hop = base.replace("tumble(interval '1 minute')", "hop(interval '1 minute', interval '5 minutes')");
        assert!(plan_sql(&format!("-- sluice: repartition\n{hop}")).await.unwrap().repartition);
        let refused = |sql: String, why: &'static str| async move {
            let err = plan_sql(&format!("-- sluice: repartition\n{sql}")).await.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("`-- sluice: repartition`") && err.contains(why) && err.contains("sql/a/b/c.sql"), "{why}: {err}");
        };
        refused(base.replace("tumble(interval '1 minute')", "session(interval '5 minutes')"), "session windows").await;
        refused(format!("-- sluice: late events update windows for 1 hour\n{base}"), "late events that update windows").await;
        refused("SELECT service, status FROM gateway.requests".into(), "no GROUP BY tumble").await;
        let joined = "SELECT b.window, b.user_id, u.org_id, b.best FROM (SELECT tumble(interval '1 day') AS window, user_id, max(score) AS best \
                      FROM assessment.completions GROUP BY window, user_id) b JOIN services.directory.users u ON u.user_id = b.user_id";
        refused(joined.into(), "joins with mirrors").await;
    }

    #[tokio::test]
    async fn a_change_is_named_by_the_parts_of_the_plan_it_touches() {
        let base = "SELECT tumble(interval '1 minute') AS window, service, count(*) AS n FROM gateway.requests GROUP BY window, service";
        let parts = |sql: String| async move { plan_sql(&sql).await.unwrap().parts };
        let before = parts(base.into()).await;
        let why = |after| what_changed(&before, &after);
        assert_eq!(why(parts(base.replace("count(*)", "sum(duration_ms)")).await), "its aggregates and columns changed");
        assert_eq!(why(parts(base.replace("count(*) AS n", "count(*) AS requests")).await), "its columns changed");
        assert_eq!(why(parts(base.replace("FROM gateway.requests", "FROM gateway.requests WHERE status >= 500")).await), "its filters changed");
        assert_eq!(why(parts(base.replace("1 minute", "2 minutes")).await), "its grouping changed");
        assert_eq!(why(parts(format!("-- sluice: late events update windows for 1 hour\n{base}")).await), "its directives changed");
        assert_eq!(what_changed(&BTreeMap::new(), &before), "its plan changed", "a checkpoint from before parts were kept");
    }

    async fn refusal(sql: &str) -> String {
        match plan_sql(sql).await {
            Ok(_) => panic!("planned, but should be refused: {sql}"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn a_windowed_aggregate_is_cut_around_its_window() {
        let q = plan_sql(
            "SELECT tumble(interval '1 minute') AS window, service, count(*) AS n, \
             count(*) FILTER (WHERE status >= 500) AS errors \
             FROM gateway.requests WHERE method = 'GET' GROUP BY window, service",
        )
        .await
        .unwrap();
        let Shape::Windowed { window, .. } = &q.shape else { panic!("not windowed") };
        assert_eq!(window.size, 60_000_000);
        assert_eq!(window.keys.len(), 1);
        assert_eq!(window.aggregates.len(), 2);
        assert!(window.aggregates[1].filter.is_some());
        let names: Vec<_> = q.output_schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["window", "service", "n", "errors"]);
        assert!(is_window_column(q.output_schema.field(0).data_type()));
        assert_eq!(q.topics().map(|t| t.to_string()).collect::<Vec<_>>(), ["gateway.requests"]);
    }

    #[tokio::test]
    async fn a_query_without_aggregate_is_stateless_and_reads_every_topic_it_unions() {
        let q = plan_sql("SELECT event_id, ts FROM interactions UNION ALL SELECT event_id, ts FROM learning.progress")
            .await
            .unwrap();
        assert!(matches!(q.shape, Shape::Stateless { .. }));
        let mut topics: Vec<_> = q.topics().map(|t| t.to_string()).collect();
        topics.sort();
        assert_eq!(topics, ["interactions", "learning.progress"]);
    }

    #[tokio::test]
    async fn a_query_over_mirrors_alone_is_a_continuously_updated_table() {
        let q = plan_sql("SELECT org_id, count(*) AS members FROM services.directory.users GROUP BY org_id").await.unwrap();
        assert!(matches!(q.shape, Shape::OverMirrors { .. }));
        assert!(q.inputs.is_empty());
        assert_eq!(q.mirrors.iter().map(|m| m.table.as_str()).collect::<Vec<_>>(), ["services/directory/users"]);
    }

    #[tokio::test]
    async fn a_corrections_directive_keeps_tumbling_windows_for_its_duration() {
        let q = plan_sql(
            "-- sluice: late events update windows for 2 hours\n\
             SELECT tumble(interval '1 hour') AS window, count(*) AS n FROM interactions GROUP BY window",
        )
        .await
        .unwrap();
        let Shape::Windowed { window, .. } = &q.shape else { panic!("not windowed") };
        assert_eq!(window.corrections, Some(2 * 3_600_000_000));
    }

    #[tokio::test]
    async fn what_cannot_stream_is_refused_naming_the_construct_and_the_file() {
        let cases = [
            ("SELECT a.event_id FROM interactions a JOIN learning.progress b ON a.user_id = b.user_id", "join"),
            ("SELECT event_id FROM interactions ORDER BY ts", "ORDER BY"),
            ("SELECT user_id, count(*) FROM interactions GROUP BY user_id", "needs a window"),
            ("SELECT event_id, row_number() OVER (ORDER BY ts) FROM interactions", "window function"),
            ("SELECT tumble(interval '1 month') AS w, count(*) FROM interactions GROUP BY w", "fixed interval"),
            ("CREATE TABLE t AS SELECT 1", "not supported"),
            ("SELECT * FROM no_such_topic", "no_such_topic"),
            ("SELECT 1", "reads no topic"),
            ("SELECT i.event_id, u.role FROM interactions i JOIN services.directory.users u ON u.user_id = i.user_id", "join"),
            (
                "SELECT tumble(interval '1 day') AS w, u.org_id, count(*) FROM interactions i \
                 JOIN services.directory.users u ON u.user_id = i.user_id GROUP BY w, u.org_id",
                "joined below the window",
            ),
            ("SELECT tumble(interval '1 day') AS w, count(*) FROM services.directory.users GROUP BY w", "event time"),
            (
                "-- sluice: late events update windows for 1 day\n\
                 SELECT hop(interval '1 minute', interval '5 minutes') AS w, count(*) FROM interactions GROUP BY w",
                "tumble() windows only",
            ),
            ("-- sluice: late events update windows for 1 day\nSELECT event_id FROM interactions", "has none"),
            ("-- sluice: keep everything\nSELECT event_id FROM interactions", "unknown directive"),
            ("SELECT session(interval '0 minutes') AS w, user_id, count(*) FROM interactions GROUP BY w, user_id", "session()"),
            (
                "SELECT session(interval '30 minutes') AS w, lower(user_id), count(*) FROM interactions GROUP BY w, lower(user_id)",
                "compute it in a subquery",
            ),
        ];
        for (sql, want) in cases {
            let err = refusal(sql).await;
            assert!(err.contains("sql/a/b/c.sql"), "{err}");
            assert!(err.to_lowercase().contains(&want.to_lowercase()), "{sql}\n  error: {err}\n  wanted: {want}");
        }
    }
}
