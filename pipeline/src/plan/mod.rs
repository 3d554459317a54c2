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

pub mod directives;
mod functions;
mod slot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::{SQLOptions, SessionState};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, TableScanBuilder};
use datafusion::optimizer::Optimizer;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use functions::{window_type, WINDOW_FUNCTIONS};
pub use slot::Slot;

use crate::catalog::TablePath;
use crate::error::{Error, Result};
use crate::udf::Udfs;

/// One `.sql` file of the `sql/` directory.
#[derive(Debug, Clone)]
pub struct SqlFile {
    pub path: PathBuf,
    pub table: TablePath,
    pub sql: String,
}

/// Every `.sql` file under `dir`, each defining the table at its relative path.
pub fn load_sql_dir(dir: &Path) -> Result<Vec<SqlFile>> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort_by(|a, b| a.table.cmp(&b.table));
    if files.is_empty() {
        return Err(Error::Config(format!("{}: no .sql files", dir.display())));
    }
    Ok(files)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<SqlFile>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if path.extension().is_some_and(|x| x == "sql") {
            let relative = path.strip_prefix(root).unwrap_or(&path).with_extension("");
            let table = TablePath::from_relative(&relative).map_err(|message| Error::Sql { path: path.clone(), message })?;
            let sql = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            out.push(SqlFile { path, table, sql });
        }
    }
    Ok(())
}

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
}

/// What the window operator needs to know of a windowed aggregate.
#[derive(Clone)]
pub struct WindowSpec {
    /// Window length (width), µs.
    pub size: i64,
    /// How far apart windows start, µs: `size` for tumbling windows, less for hopping
    /// ones, whose state is kept per slide-long pane and shared by the windows
    /// overlapping it.
    pub slide: i64,
    /// The event time of a row of the aggregate's input.
    pub time: Arc<dyn PhysicalExpr>,
    /// For a session window, the gap (µs) that ends a session; `size` and `slide`
    /// are then the gap too.
    pub session_gap: Option<i64>,
    /// For a session window, the input rows' `_offset`: a late event is found among
    /// the aggregate's input rows and recorded from its message.
    pub offset: Option<Arc<dyn PhysicalExpr>>,
    /// The GROUP BY keys other than the window.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_schema: SchemaRef,
    pub aggregates: Vec<AggregateSpec>,
    /// Where the `window` column sits among the aggregate's group columns.
    pub window_index: usize,
    /// The aggregate's result rows: group columns (with `window`), then aggregates.
    pub schema: SchemaRef,
    /// With corrections, how long after a window is emitted late events still
    /// update it (µs): its state is kept that long.
    pub corrections: Option<i64>,
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
    for udf in functions::all() {
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
    let logical = bind_windows_to_event_time(logical).map_err(df_err)?;
    let state = ctx.state();
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
    let windowed = find_windowed_aggregates(&optimized);
    let shape = match windowed.as_slice() {
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
            let mut window = window_spec(aggregate, &input.schema(), &state).map_err(sql_err)?;
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
    let output_schema = match &shape {
        Shape::Stateless { plan } | Shape::OverMirrors { plan } => plan.schema(),
        Shape::Windowed { output, .. } => output.schema(),
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
    })
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

/// The aggregates grouping by a window function.
fn find_windowed_aggregates(plan: &LogicalPlan) -> Vec<Aggregate> {
    let mut found = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::Aggregate(a) = node {
            if a.group_expr.iter().any(|e| matches!(window_shape(e), Ok(Some(_)) | Err(_))) {
                found.push(a.clone());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The names of the functions a plan calls.
fn called_functions(plan: &LogicalPlan) -> Vec<String> {
    let mut names = Vec::new();
    let _ = plan.apply(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                match e {
                    Expr::ScalarFunction(f) => names.push(f.name().to_string()),
                    Expr::AggregateFunction(f) => names.push(f.func.name().to_string()),
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    names
}

/// Whether the plan above the window combines rows again (an aggregate, join or
/// DISTINCT), so it must see one window's rows at a time.
fn regroups(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        found = matches!(node, LogicalPlan::Aggregate(_) | LogicalPlan::Join(_) | LogicalPlan::Distinct(_) | LogicalPlan::Window(_));
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

/// Refuses what cannot run on an unbounded stream batch by batch.
fn refuse_unbounded(plan: &LogicalPlan) -> std::result::Result<(), String> {
    let mut refusal = None;
    let _ = plan.apply(|node| {
        refusal = match node {
            LogicalPlan::Join(_) => Some("a join of unbounded streams is not supported"),
            LogicalPlan::Sort(_) => Some("ORDER BY on an unbounded stream never finishes: order the output of a window instead"),
            LogicalPlan::Limit(_) => Some("LIMIT on an unbounded stream is not supported"),
            LogicalPlan::Window(_) => Some("a window function (OVER) needs a window: aggregate with GROUP BY tumble(...) first"),
            LogicalPlan::Distinct(_) => Some("DISTINCT on an unbounded stream needs a window: GROUP BY tumble(...)"),
            LogicalPlan::RecursiveQuery(_) => Some("recursive queries are not supported"),
            LogicalPlan::Aggregate(_) => Some("an aggregate needs a window: GROUP BY tumble(interval '...'), ..."),
            _ => None,
        };
        Ok(if refusal.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    match refusal {
        Some(r) => Err(r.into()),
        None => Ok(()),
    }
}

/// Reads the window, keys and aggregates of a `GROUP BY tumble(...)` aggregate.
fn window_spec(agg: &Aggregate, input_schema: &SchemaRef, state: &SessionState) -> std::result::Result<WindowSpec, String> {
    let df = |e: datafusion::error::DataFusionError| e.strip_backtrace().to_string();
    let input_dfschema = agg.input.schema();
    let mut window = None;
    let mut keys = Vec::new();
    let mut key_fields = Vec::new();
    for (i, expr) in agg.group_expr.iter().enumerate() {
        if let Some(shape) = window_shape(expr)? {
            if window.is_some() {
                return Err("GROUP BY has more than one window".into());
            }
            window = Some((i, shape));
        } else {
            keys.push(state.create_physical_expr(expr.clone(), input_dfschema).map_err(df)?);
            key_fields.push(agg.schema.field(i).clone());
        }
    }
    let Some((window_index, kind)) = window else {
        return Err("an aggregate needs a window: GROUP BY tumble(interval '...'), ...".into());
    };
    let (slide, size, session_gap) = match kind {
        WindowKind::Sliding { slide, width } => (slide, width, None),
        WindowKind::Session { gap } => (gap, gap, Some(gap)),
    };
    let column = |name: &str| input_dfschema.fields().iter().position(|f| f.name() == name).map(|i| Expr::Column(input_dfschema.columns()[i].clone()));
    let offset = match session_gap {
        Some(_) => {
            let offset = column(crate::schema::LINEAGE[2]).ok_or("a session window needs the `_offset` column in its input: keep it in subqueries")?;
            if let Some(key) = agg.group_expr.iter().enumerate().find(|(i, e)| *i != window_index && !matches!(e, Expr::Column(_))) {
                return Err(format!("session windows group by columns of the topic; `{}` is an expression: compute it in a subquery", key.1.schema_name()));
            }
            Some(state.create_physical_expr(offset, input_dfschema).map_err(df)?)
        }
        None => None,
    };
    if matches!(agg.group_expr.first(), Some(Expr::GroupingSet(_))) {
        return Err("GROUPING SETS, CUBE and ROLLUP are not supported in streaming queries".into());
    }
    let time_column = input_dfschema
        .fields()
        .iter()
        .position(|f| f.name() == crate::schema::EVENT_TIME)
        .ok_or("a windowed query needs the event time column `ts` in its input: keep `ts` in subqueries")?;
    let time_expr = Expr::Column(input_dfschema.columns()[time_column].clone());
    let time = state.create_physical_expr(time_expr, input_dfschema).map_err(df)?;

    let mut aggregates = Vec::new();
    for expr in &agg.aggr_expr {
        #[allow(deprecated)]
        let (function, filter, order_by) = datafusion::physical_planner::create_aggregate_expr_and_maybe_filter(
            expr,
            input_dfschema,
            input_schema,
            state.execution_props(),
        )
        .map_err(df)?;
        if !order_by.is_empty() && !function.fun().supports_within_group_clause() {
            return Err(format!("ORDER BY inside {} is not supported in streaming queries", function.name()));
        }
        aggregates.push(AggregateSpec { function, filter });
    }
    let key_schema = Arc::new(arrow::datatypes::Schema::new(key_fields));
    Ok(WindowSpec {
        size,
        slide,
        session_gap,
        offset,
        time,
        keys,
        key_schema,
        aggregates,
        window_index,
        schema: Arc::new(agg.schema.as_arrow().clone()),
        corrections: None,
    })
}

/// A window's shape, from its GROUP BY call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowKind {
    /// `tumble(width)` (slides by its width) or `hop(slide, width)`, µs.
    Sliding { slide: i64, width: i64 },
    /// `session(gap)`, µs.
    Session { gap: i64 },
}

/// The window a `tumble`, `hop` or `session` group expression defines.
fn window_shape(expr: &Expr) -> std::result::Result<Option<WindowKind>, String> {
    let expr = match expr {
        Expr::Alias(alias) => &*alias.expr,
        e => e,
    };
    let Expr::ScalarFunction(call) = expr else { return Ok(None) };
    let name = call.func.name();
    if !WINDOW_FUNCTIONS.contains(&name) {
        return Ok(None);
    }
    // The event time (and a session's `_offset`) were appended by `bind_windows_to_event_time`.
    let bound = if name == "session" { 2 } else { 1 };
    let given = &call.args[..call.args.len().saturating_sub(bound)];
    let intervals: Option<Vec<i64>> = given.iter().map(fixed_interval).collect();
    match (name, intervals.as_deref()) {
        ("tumble", Some(&[width])) if width > 0 => Ok(Some(WindowKind::Sliding { slide: width, width })),
        ("hop", Some(&[slide, width])) if slide > 0 && width >= slide && width % slide == 0 => Ok(Some(WindowKind::Sliding { slide, width })),
        ("hop", Some(&[_, _])) => Err("hop(slide, width) needs 0 < slide <= width, with width a multiple of slide".into()),
        ("hop", _) => Err("hop() takes two fixed intervals, e.g. hop(interval '1 minute', interval '5 minutes')".into()),
        ("session", Some(&[gap])) if gap > 0 => Ok(Some(WindowKind::Session { gap })),
        ("session", _) => Err("session() takes one fixed interval longer than zero, e.g. session(interval '30 minutes')".into()),
        _ => Err("tumble() takes one fixed interval longer than zero, e.g. tumble(interval '1 minute') (months vary in length)".into()),
    }
}

/// A literal interval of fixed length, µs (months vary in length: not fixed).
fn fixed_interval(expr: &Expr) -> Option<i64> {
    match expr {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(i)), _) if i.months == 0 => {
            Some(i64::from(i.days) * 86_400_000_000 + i.nanoseconds / 1000)
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(i)), _) => Some(i64::from(i.days) * 86_400_000_000 + i64::from(i.milliseconds) * 1000),
        _ => None,
    }
}

/// Rewrites `GROUP BY tumble(i)` to `tumble(i, ts)` (keeping the column's name), so
/// the optimizer keeps the event time in the aggregate's input.
fn bind_windows_to_event_time(plan: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    plan.transform_up(|node| {
        let LogicalPlan::Aggregate(agg) = node else { return Ok(Transformed::no(node)) };
        let is_window = |e: &Expr| matches!(e, Expr::ScalarFunction(f) if WINDOW_FUNCTIONS.contains(&f.func.name()));
        if !agg.group_expr.iter().any(is_window) {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        }
        let columns = agg.input.schema().columns();
        let Some(ts) = columns.iter().find(|c| c.name == crate::schema::EVENT_TIME) else {
            return datafusion::common::plan_err!(
                "a windowed query needs the event time column `ts` in its input: keep `ts` in subqueries"
            );
        };
        let offset = columns.iter().find(|c| c.name == crate::schema::LINEAGE[2]);
        let group_expr = agg
            .group_expr
            .iter()
            .map(|e| match e {
                Expr::ScalarFunction(f) if is_window(e) => {
                    let mut call = f.clone();
                    call.args.push(Expr::Column(ts.clone()));
                    // A session finds its late events among the input rows, by offset.
                    if f.func.name() == "session" {
                        let Some(offset) = offset else {
                            return datafusion::common::plan_err!(
                                "a session window needs the `_offset` column in its input: keep it in subqueries"
                            );
                        };
                        call.args.push(Expr::Column(offset.clone()));
                    }
                    Ok(Expr::ScalarFunction(call).alias(e.schema_name().to_string()))
                }
                other => Ok(other.clone()),
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let rebuilt = Aggregate::try_new(agg.input.clone(), group_expr, agg.aggr_expr.clone())?;
        Ok(Transformed::yes(LogicalPlan::Aggregate(rebuilt)))
    })
    .map(|t| t.data)
}

/// The plan above the windowed aggregate, reading the aggregate's rows from `slot`.
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
