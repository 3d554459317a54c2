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
//!
//! Extended-protocol statements, whose plans take parameters, keep their parsed
//! and logical form instead ([`ParsedCache`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::Statement;
use sluice_gate::token::Role;

use crate::catalog::TablePath;
use crate::serve::session::{lake_tables_of, Scanned, Session};

/// Statements kept per connection.
const ENTRIES: usize = 16;

/// The longest statement kept, in bytes: a dashboard's are a few hundred, and a
/// client sending the longest statement admitted (1 MiB, planned into many times
/// that) on every connection must not make the caches hold gigabytes.
const MAX_KEPT_BYTES: usize = 8 << 10;

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

/// The most recently used entries by statement text, at most [`ENTRIES`] of at
/// most [`MAX_KEPT_BYTES`] each.
struct Recent<T>(Mutex<VecDeque<(String, T)>>);

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Recent(Mutex::default())
    }
}

impl<T: Clone> Recent<T> {
    fn entries(&self) -> std::sync::MutexGuard<'_, VecDeque<(String, T)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, sql: &str) -> Option<T> {
        let mut entries = self.entries();
        let i = entries.iter().position(|(text, _)| text == sql)?;
        let entry = entries.remove(i)?;
        entries.push_front(entry.clone());
        Some(entry.1)
    }

    fn put(&self, sql: &str, value: T) {
        if sql.len() > MAX_KEPT_BYTES {
            return;
        }
        let mut entries = self.entries();
        entries.retain(|(text, _)| text != sql);
        entries.push_front((sql.to_string(), value));
        entries.truncate(ENTRIES);
    }

    fn remove(&self, sql: &str) {
        self.entries().retain(|(text, _)| text != sql);
    }

    fn clear(&self) {
        self.entries().clear();
    }
}

#[derive(Default)]
pub struct PlanCache {
    entries: Recent<Planned>,
}

impl PlanCache {
    /// The plan kept for `sql`, if every table it scans is still at its version.
    pub async fn get(&self, sql: &str, session: &Session) -> Option<Planned> {
        let found = self.entries.get(sql)?;
        if session.unchanged(&found.scanned).await {
            return Some(found);
        }
        self.entries.remove(sql);
        None
    }

    /// Forgets every plan: the session's settings may have changed.
    pub fn clear(&self) {
        self.entries.clear();
    }

    /// Keeps `plan` for `sql` if it may be run again (see the module comment):
    /// `logical` is the statement's plan before optimization, `scanned` the lake
    /// tables planning scanned.
    pub fn keep(&self, sql: &str, session: &Session, logical: &LogicalPlan, plan: &Arc<dyn ExecutionPlan>, names: Option<Vec<String>>, scanned: Option<Scanned>) {
        let Some(scanned) = scanned else { return };
        if matches!(session.identity.role, Role::Trainer | Role::OrgAdmin) || scanned.is_empty() || table_scans(logical) != scanned.len() || !timeless(logical) {
            return;
        }
        self.entries.put(sql, Planned { plan: plan.clone(), names, scanned });
    }
}

/// Extended-protocol statements as parsed and planned, by text: psycopg and
/// pgjdbc send an unnamed statement's text again with every execution, and
/// parsing, naming the tables and the analyzer cost a tenth of a point lookup.
/// Kept is the logical plan, its parameters unbound: its tables take their latest
/// version, and the caller's access to it, when it runs, so it holds while the
/// session's settings do; a statement reading anything but lake tables (the
/// system catalogs are built when named) is not kept.
#[derive(Default)]
pub struct ParsedCache {
    entries: Recent<(super::DfStatement, Vec<(TablePath, SchemaRef)>)>,
}

impl ParsedCache {
    /// The statement kept for `sql`, if its tables still have the columns it was
    /// planned with.
    pub async fn get(&self, sql: &str, session: &Session) -> Option<super::DfStatement> {
        let (parsed, tables) = self.entries.get(sql)?;
        if session.same_columns(&tables).await {
            return Some(parsed);
        }
        self.entries.remove(sql);
        None
    }

    /// Keeps a query reading lake tables alone.
    pub fn keep(&self, sql: &str, parsed: &super::DfStatement) {
        if let Some((Statement::Query(_), plan)) = &parsed.1 {
            if let Some(tables) = lake_tables_of(plan) {
                self.entries.put(sql, (parsed.clone(), tables));
            }
        }
    }

    /// Forgets every statement: the session's settings may have changed.
    pub fn clear(&self) {
        self.entries.clear();
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

    #[test]
    fn the_sixteen_latest_short_statements_are_kept() {
        let recent = Recent::default();
        for i in 0..20 {
            recent.put(&format!("SELECT {i}"), i);
        }
        let long = format!("SELECT 1 WHERE 'x' IN ({})", vec!["'x'"; MAX_KEPT_BYTES / 4].join(","));
        recent.put(&long, 99);
        assert_eq!(recent.get(&long), None, "a statement longer than {MAX_KEPT_BYTES} bytes is not kept");
        let kept: Vec<i32> = (0..20).filter_map(|i| recent.get(&format!("SELECT {i}"))).collect();
        assert_eq!(kept, (4..20).collect::<Vec<_>>());
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
