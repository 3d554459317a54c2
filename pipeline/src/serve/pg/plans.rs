//! A connection's plan cache. A dashboard sends the same statements again and
//! again, and planning one (parsing, the optimizers, listing the Delta files to
//! scan) costs more than running it. The physical plan of a statement is kept by
//! its text and run again, its state reset as DataFusion's recursive queries do,
//! while every table it scans is at the version it was planned at.
//!
//! Not kept: a statement calling a function whose answer is not fixed by its
//! arguments (`now()`, `random()`: planning folds them into constants), one
//! reading anything but lake tables (the system catalogs change with the lake),
//! and any statement of a trainer or org admin (their rows follow the directory,
//! which changes apart from the tables they read). Any other statement (`SET TIME
//! ZONE`, say, which planning reads) empties the cache.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::ExecutionPlan;
use sluice_gate::token::Role;

use crate::serve::session::{Scanned, Session};

/// Statements kept per connection.
const ENTRIES: usize = 16;

/// A statement as planned.
#[derive(Clone)]
pub struct Planned {
    /// Never executed itself: each run executes a copy with fresh state.
    plan: Arc<dyn ExecutionPlan>,
    pub names: Option<Vec<String>>,
    scanned: Scanned,
}

impl Planned {
    /// A copy of the plan to execute.
    pub fn to_run(&self) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        reset_plan_states(self.plan.clone())
    }
}

#[derive(Default)]
pub struct PlanCache {
    /// Most recently used first.
    entries: Mutex<VecDeque<(String, Planned)>>,
}

impl PlanCache {
    /// The plan kept for `sql`, if every table it scans is still at its version.
    pub async fn get(&self, sql: &str, session: &Session) -> Option<Planned> {
        let found = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let i = entries.iter().position(|(text, _)| text == sql)?;
            let entry = entries.remove(i)?;
            entries.push_front(entry.clone());
            entry.1
        };
        if session.unchanged(&found.scanned).await {
            return Some(found);
        }
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|(text, _)| text != sql);
        None
    }

    /// Forgets every plan: the session's settings may have changed.
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Keeps `plan` for `sql` if it may be run again (see the module comment):
    /// `logical` is the statement's plan before optimization, `scanned` the lake
    /// tables planning scanned.
    pub fn keep(&self, sql: &str, session: &Session, logical: &LogicalPlan, plan: &Arc<dyn ExecutionPlan>, names: Option<Vec<String>>, scanned: Option<Scanned>) {
        let Some(scanned) = scanned else { return };
        if matches!(session.identity.role, Role::Trainer | Role::OrgAdmin) || scanned.is_empty() || table_scans(logical) != scanned.len() || !timeless(logical) {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(text, _)| text != sql);
        entries.push_front((sql.to_string(), Planned { plan: plan.clone(), names, scanned }));
        entries.truncate(ENTRIES);
    }
}

/// Table scans in `plan` and its subqueries.
fn table_scans(plan: &LogicalPlan) -> usize {
    let mut scans = 0;
    let _ = plan.apply_with_subqueries(|node| {
        scans += matches!(node, LogicalPlan::TableScan(_)) as usize;
        Ok(TreeNodeRecursion::Continue)
    });
    scans
}

/// Whether every function `plan` calls answers the same for the same arguments.
fn timeless(plan: &LogicalPlan) -> bool {
    let mut fixed = true;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    fixed &= f.func.signature().volatility == Volatility::Immutable;
                }
                Ok(if fixed { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
            })
        })
    });
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn logical(sql: &str) -> LogicalPlan {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t (a INT, d DATE)").await.unwrap();
        ctx.sql(sql).await.unwrap().logical_plan().clone()
    }

    #[tokio::test]
    async fn a_statement_calling_now_or_random_is_not_timeless_and_scans_are_counted_in_subqueries() {
        for sql in ["SELECT now()", "SELECT a FROM t WHERE d > current_date", "SELECT random() FROM t", "SELECT a FROM t WHERE a IN (SELECT a FROM t WHERE d < now())"] {
            assert!(!timeless(&logical(sql).await), "{sql}");
        }
        for sql in ["SELECT a, abs(a) FROM t", "SELECT d, count(*) FROM t GROUP BY d ORDER BY d", "SELECT date_trunc('day', d) FROM t"] {
            assert!(timeless(&logical(sql).await), "{sql}");
        }
        assert_eq!(table_scans(&logical("SELECT a FROM t WHERE a IN (SELECT a FROM t)").await), 2);
        assert_eq!(table_scans(&logical("SELECT 1").await), 0);
    }
}
