//! A query's aggregate expressions run over rows its operator has grouped: how a
//! session window (its sessions' rows) and a current-state query (its keys' rows)
//! turn kept input rows into result rows. Windows that fold rows as they come
//! keep DataFusion accumulators themselves ([`crate::window`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};

use crate::error::{Error, Result};
use crate::plan::AggregateSpec;

mod distinct;

/// The accumulator of `f` over many groups: DataFusion's own where it has one
/// (or ours for `count(DISTINCT text)`), else its adapter over one accumulator per group.
pub fn groups_accumulator(f: &Arc<AggregateFunctionExpr>) -> Result<Box<dyn GroupsAccumulator>> {
    if let Some(distinct) = distinct::DistinctText::for_function(f) {
        return Ok(Box::new(distinct));
    }
    if f.groups_accumulator_supported() {
        return Ok(f.create_groups_accumulator()?);
    }
    let f = f.clone();
    Ok(Box::new(GroupsAccumulatorAdapter::new(move || f.create_accumulator())))
}

/// What an aggregate's accumulator takes per row: its arguments, then its ORDER BY
/// values (as DataFusion's own aggregate passes them), with which an
/// order-sensitive aggregate orders rows itself.
pub fn arguments(f: &AggregateFunctionExpr) -> Vec<Arc<dyn PhysicalExpr>> {
    let mut arguments = f.expressions();
    arguments.extend(f.order_bys().iter().map(|order| order.expr.clone()));
    arguments
}

/// One column per aggregate: its value for each of `groups` groups, where row `i`
/// of `rows` belongs to group `group_ids[i]`. Order-sensitive aggregates
/// (`last_value(x ORDER BY ts)`) compare their ORDER BY values themselves, so the
/// rows may come in any order.
pub fn aggregate_groups(aggregates: &[AggregateSpec], rows: &RecordBatch, group_ids: &[usize], groups: usize) -> Result<Vec<ArrayRef>> {
    let n = rows.num_rows();
    let mut columns = Vec::with_capacity(aggregates.len());
    for aggregate in aggregates {
        let f = &aggregate.function;
        let mut accumulator = groups_accumulator(f)?;
        let args: Vec<ArrayRef> = arguments(f).iter().map(|e| Ok(e.evaluate(rows)?.into_array(n)?)).collect::<Result<_>>()?;
        let filter = match &aggregate.filter {
            Some(filter) => Some(filter.evaluate(rows)?.into_array(n)?.as_boolean_opt().cloned().ok_or_else(|| Error::Internal("a FILTER that is not boolean".into()))?),
            None => None,
        };
        accumulator.update_batch(&args, group_ids, filter.as_ref(), groups)?;
        columns.push(accumulator.evaluate(EmitTo::All)?);
    }
    Ok(columns)
}
