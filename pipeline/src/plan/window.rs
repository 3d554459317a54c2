//! Windowed aggregates: `GROUP BY tumble(...)`, `hop(...)` or `session(...)`, read
//! into the [`WindowSpec`] the window operator keeps state by.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_plan::PhysicalExpr;

use super::{AggregateSpec, WINDOW_FUNCTIONS};

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

/// The aggregates grouping by a window function.
pub(super) fn find_windowed_aggregates(plan: &LogicalPlan) -> Vec<Aggregate> {
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

/// Reads the window, keys and aggregates of a `GROUP BY tumble(...)` aggregate.
pub(super) fn window_spec(agg: &Aggregate, input_schema: &SchemaRef, state: &SessionState) -> std::result::Result<WindowSpec, String> {
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
            &ties_to_the_later_message(expr, input_dfschema),
            input_dfschema,
            input_schema,
            state.execution_props(),
        )
        .map_err(df)?;
        ordered_in_any_order(&function, &order_by)?;
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
pub(super) enum WindowKind {
    /// `tumble(width)` (slides by its width) or `hop(slide, width)`, µs.
    Sliding { slide: i64, width: i64 },
    /// `session(gap)`, µs.
    Session { gap: i64 },
}

/// The window a `tumble`, `hop` or `session` group expression defines.
pub(super) fn window_shape(expr: &Expr) -> std::result::Result<Option<WindowKind>, String> {
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
pub(super) fn bind_windows_to_event_time(plan: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
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


/// Ties on an order-sensitive aggregate's ORDER BY values (two steps of a saga
/// spelled at the same instant) go to the later message: `_partition`, then
/// `_offset`, are appended to its ORDER BY where its input has them. Without them
/// the pick would follow the order rows reach the accumulator, which a restart
/// from a checkpoint changes. The expression keeps its name.
pub(super) fn ties_to_the_later_message(expr: &Expr, input: &DFSchema) -> Expr {
    let name = expr.schema_name().to_string();
    let (aggregate, alias) = match expr {
        Expr::Alias(alias) => (alias.expr.as_ref(), alias.name.clone()),
        other => (other, name),
    };
    let Expr::AggregateFunction(call) = aggregate else { return expr.clone() };
    if call.params.order_by.is_empty() || call.func.supports_within_group_clause() {
        return expr.clone();
    }
    let mut call = call.clone();
    for lineage in [crate::schema::LINEAGE[1], crate::schema::LINEAGE[2]] {
        let Some(i) = input.fields().iter().position(|f| f.name() == lineage) else { continue };
        let column = Expr::Column(input.columns()[i].clone());
        if !call.params.order_by.iter().any(|sort| sort.expr == column) {
            call.params.order_by.push(column.sort(true, false));
        }
    }
    Expr::AggregateFunction(call).alias(alias)
}

/// An aggregate with `ORDER BY` (`last_value(status ORDER BY ts)`) runs in a
/// streaming query when its accumulator orders the rows itself, whatever order
/// they come in: a window's rows arrive as the stream delivers them.
pub(super) fn ordered_in_any_order(function: &AggregateFunctionExpr, order_by: &[PhysicalSortExpr]) -> std::result::Result<(), String> {
    if order_by.is_empty() || function.fun().supports_within_group_clause() || !function.order_sensitivity().hard_requires() {
        return Ok(());
    }
    Err(format!(
        "ORDER BY inside {} needs its input sorted, which a stream is not: use an aggregate that orders by itself (first_value, last_value, array_agg)",
        function.name()
    ))
}
