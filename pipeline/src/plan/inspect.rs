//! What a logical plan does, asked before it is cut into its streaming parts.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan};

/// The names of the functions a plan calls.
pub(super) fn called_functions(plan: &LogicalPlan) -> Vec<String> {
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
pub(super) fn regroups(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        found = matches!(node, LogicalPlan::Aggregate(_) | LogicalPlan::Join(_) | LogicalPlan::Distinct(_) | LogicalPlan::Window(_));
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

/// Refuses what cannot run on an unbounded stream batch by batch.
pub(super) fn refuse_unbounded(plan: &LogicalPlan) -> std::result::Result<(), String> {
    let mut refusal = None;
    let _ = plan.apply(|node| {
        refusal = match node {
            LogicalPlan::Join(_) => Some("a join of unbounded streams is not supported"),
            LogicalPlan::Sort(_) => Some("ORDER BY on an unbounded stream never finishes: order the output of a window instead"),
            LogicalPlan::Limit(_) => Some("LIMIT on an unbounded stream is not supported"),
            LogicalPlan::Window(_) => Some("a window function (OVER) needs a window: aggregate with GROUP BY tumble(...) first"),
            LogicalPlan::Distinct(_) => Some("DISTINCT on an unbounded stream needs a window: GROUP BY tumble(...)"),
            LogicalPlan::RecursiveQuery(_) => Some("recursive queries are not supported"),
            LogicalPlan::Aggregate(_) => Some(
                "an aggregate needs a window: GROUP BY tumble(interval '...'), ...; or, for one row per key kept up to date, \
                 the line `-- sluice: current state` (see the README)",
            ),
            _ => None,
        };
        Ok(if refusal.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    match refusal {
        Some(r) => Err(r.into()),
        None => Ok(()),
    }
}
