//! Current-state queries: `-- sluice: current state[, removed when <condition>]`
//! over a `GROUP BY` without a window. The aggregate's rows are kept per key and
//! rewritten as the key's events arrive ([`crate::keyed`]); the condition, a SQL
//! expression over the aggregate's input rows, marks the events that remove their
//! key's row.
//!
//! While planning, the first key rides as `__sluice_current_key(key, ts[,
//! condition])` so that the optimizer keeps the event time and the condition's
//! columns in the aggregate's input; [`current_spec`] takes the call apart again.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::physical_plan::PhysicalExpr;

use crate::dialect::{current_key, CURRENT_KEY};
use super::window::{ordered_in_any_order, ties_to_the_later_message};
use super::{AggregateSpec, WINDOW_FUNCTIONS};

/// What the current-state operator needs to know of the aggregate.
#[derive(Clone)]
pub struct CurrentSpec {
    /// The GROUP BY keys.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_schema: SchemaRef,
    pub aggregates: Vec<AggregateSpec>,
    /// The event time of an input row.
    pub time: Arc<dyn PhysicalExpr>,
    /// Whether an input row removes its key.
    pub removed: Option<Arc<dyn PhysicalExpr>>,
    /// The removal condition as written, for `sluice explain`.
    pub removed_when: Option<String>,
    /// The aggregate's result rows: keys, then aggregates.
    pub schema: SchemaRef,
}

/// Wraps the first key of the query's aggregate (the lowest, over the stream).
pub(super) fn bind(plan: LogicalPlan, removed_when: Option<&str>, state: &SessionState) -> datafusion::error::Result<LogicalPlan> {
    let mut bound = false;
    plan.transform_up(|node| {
        let LogicalPlan::Aggregate(agg) = node else { return Ok(Transformed::no(node)) };
        if bound {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        }
        bound = true;
        if agg.group_expr.iter().any(|e| matches!(e, Expr::ScalarFunction(f) if WINDOW_FUNCTIONS.contains(&f.func.name()))) {
            return datafusion::common::plan_err!(
                "a current-state query keeps one row per key, without a window: drop tumble()/hop()/session(), or the `-- sluice: current state` line"
            );
        }
        let Some(first) = agg.group_expr.first() else {
            return datafusion::common::plan_err!("a current-state query keeps one row per key: GROUP BY its key (`GROUP BY connection_id`)");
        };
        let input = agg.input.schema();
        let Some(ts) = input.columns().into_iter().find(|c| c.name == crate::schema::EVENT_TIME) else {
            return datafusion::common::plan_err!("a current-state query orders a key's events by `ts`: keep `ts` in subqueries");
        };
        let mut args = vec![first.clone(), Expr::Column(ts)];
        if let Some(condition) = removed_when {
            let removal = state
                .create_logical_expr(condition, input)
                .map_err(|e| datafusion::error::DataFusionError::Plan(format!("removed when `{condition}`: {}", e.strip_backtrace())))?;
            args.push(removal);
        }
        let mut group_expr = agg.group_expr.clone();
        // Under the key's own (qualified) name, which the plan above refers to.
        let (qualifier, name) = first.qualified_name();
        group_expr[0] = Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(current_key()), args)).alias_qualified(qualifier, name);
        Ok(Transformed::yes(LogicalPlan::Aggregate(Aggregate::try_new(agg.input.clone(), group_expr, agg.aggr_expr.clone())?)))
    })
    .map(|t| t.data)
}

/// The `__sluice_current_key(...)` call of a group expression, if it is one.
fn current_key_call(expr: &Expr) -> Option<&ScalarFunction> {
    let expr = match expr {
        Expr::Alias(alias) => &*alias.expr,
        e => e,
    };
    match expr {
        Expr::ScalarFunction(f) if f.func.name() == CURRENT_KEY => Some(f),
        _ => None,
    }
}

/// The aggregate [`bind`] marked, in the optimized plan.
pub(super) fn find(plan: &LogicalPlan) -> Option<Aggregate> {
    let mut found = None;
    let _ = plan.apply(|node| {
        if let LogicalPlan::Aggregate(agg) = node {
            if agg.group_expr.first().and_then(current_key_call).is_some() {
                found = Some(agg.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Reads the keys, the aggregates, the time and the removal condition.
pub(super) fn current_spec(agg: &Aggregate, input_schema: &SchemaRef, state: &SessionState, removed_when: Option<&str>) -> std::result::Result<CurrentSpec, String> {
    let df = |e: datafusion::error::DataFusionError| e.strip_backtrace().to_string();
    let input = agg.input.schema();
    if matches!(agg.group_expr.first(), Some(Expr::GroupingSet(_))) {
        return Err("GROUPING SETS, CUBE and ROLLUP are not supported in streaming queries".into());
    }
    let call = agg.group_expr.first().and_then(current_key_call).ok_or("internal: the current-state key is not marked")?;
    let physical = |e: &Expr| state.create_physical_expr(e.clone(), input).map_err(df);
    let time = physical(&call.args[1])?;
    let removed = call.args.get(2).map(physical).transpose()?;
    let mut keys = vec![physical(&call.args[0])?];
    for expr in &agg.group_expr[1..] {
        keys.push(physical(expr)?);
    }
    let key_fields = (0..agg.group_expr.len()).map(|i| agg.schema.field(i).clone()).collect::<Vec<_>>();
    let mut aggregates = Vec::new();
    for expr in &agg.aggr_expr {
        #[allow(deprecated)]
        let (function, filter, order_by) =
            datafusion::physical_planner::create_aggregate_expr_and_maybe_filter(&ties_to_the_later_message(expr, input), input, input_schema, state.execution_props()).map_err(df)?;
        ordered_in_any_order(&function, &order_by)?;
        aggregates.push(AggregateSpec { function, filter });
    }
    Ok(CurrentSpec {
        keys,
        key_schema: Arc::new(arrow::datatypes::Schema::new(key_fields)),
        aggregates,
        time,
        removed,
        removed_when: removed_when.map(str::to_string),
        schema: Arc::new(agg.schema.as_arrow().clone()),
    })
}
