//! A lake table as one identity may see it: the policy's row filter runs inside
//! the scan, sealed, before anything of the statement touches a row.
//!
//! Sealing matters because a filter is not a wall. Left in the logical plan, the
//! optimizer may reorder it after a user's own predicate (`CAST(user_id AS INT)`
//! erroring on another user's row), push a user's predicate below it, or show the
//! unfiltered scan's row counts in `EXPLAIN ANALYZE`. So the table takes no
//! pushed filters, and [`SealedScan`] is a leaf: no optimizer rule sees or moves
//! what runs inside it, and it reports no statistics of the rows it drops.

use std::fmt;
use std::sync::Arc;

use datafusion::catalog::{Session, TableProvider};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::common::{DFSchema, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::filter_pushdown::{ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

/// The scan of `inner` with only the rows `filter` admits, sealed. The caller's
/// table provider must not accept pushed-down filters (nothing of the statement
/// may run below the policy's filter).
pub async fn guarded_scan(
    table: &str,
    inner: &dyn TableProvider,
    filter: &Expr,
    state: &dyn Session,
    projection: Option<&Vec<usize>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = inner.schema();
    let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..schema.fields().len()).collect());
    let mut needed = wanted.clone();
    for column in filter.column_refs() {
        let index = schema.index_of(&column.name)?;
        if !needed.contains(&index) {
            needed.push(index);
        }
    }
    // The filter's literals take the columns' types (Utf8View strings, say).
    let table_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let filter = filter.clone().rewrite(&mut TypeCoercionRewriter::new(&table_schema))?.data;
    // The policy's own filter goes to the Delta scan, to skip files by their statistics.
    let scan = inner.scan(state, Some(&needed), std::slice::from_ref(&filter), None).await?;
    let scanned = scan.schema();
    let predicate = state.create_physical_expr(filter, &DFSchema::try_from(scanned.as_ref().clone())?)?;
    let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(predicate, scan)?);
    let columns = wanted
        .iter()
        .map(|&i| {
            let name = schema.field(i).name();
            Ok((Arc::new(Column::new(name, scanned.index_of(name)?)) as Arc<dyn PhysicalExpr>, name.clone()))
        })
        .collect::<Result<Vec<_>>>()?;
    let projected = Arc::new(ProjectionExec::try_new(columns, filtered)?);
    Ok(Arc::new(SealedScan { table: table.to_string(), properties: projected.properties().clone(), inner: projected }))
}

/// A leaf that runs a private plan: the filtered scan of one guarded table.
#[derive(Debug)]
pub struct SealedScan {
    table: String,
    inner: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for SealedScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SealedScan: table={}, rows=as the policy allows", self.table)
    }
}

impl ExecutionPlan for SealedScan {
    fn name(&self) -> &str {
        "SealedScan"
    }


    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    /// No filter from above is taken in (nor reported as handled).
    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::all_unsupported(child_pushdown_result))
    }

    /// The private plan is no child (nothing above may see or rewrite it), so a
    /// plan run again (the plan cache) resets its state here: without this, a
    /// learner's repeated `SELECT count(*)` answered 0 (found by the SQL fuzzer).
    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        let inner = reset_plan_states(Arc::clone(&self.inner))?;
        Ok(Arc::new(SealedScan { table: self.table.clone(), properties: Arc::clone(&self.properties), inner }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        self.inner.execute(partition, context)
    }
}
