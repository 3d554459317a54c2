//! Who gets the CPU first. A user whose statement ran for more than
//! [`LONG_STATEMENT`] is a heavy user for [`HEAVY_FOR`] after it ends, and the
//! plans of a heavy user's statements run on a background runtime whose
//! threads have the lowest OS priority (nice 19). On an idle server that costs
//! them nothing; on a busy one, everyone else's short statements run first, so
//! one user's runaway joins leave the others' latency nearly as it was.
//!
//! The plan is moved whole: [`Prioritized`] wraps its root, and a heavy user's
//! root is executed inside a task on the background runtime, so every task the
//! plan spawns runs there too. Dropping the stream (the statement ended or was
//! stopped) aborts that task and, with it, the plan.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_datafusion_err, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{FutureExt, StreamExt};
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use super::Budget;

/// A statement that runs longer makes its user heavy.
pub const LONG_STATEMENT: Duration = Duration::from_secs(1);
/// How long a user stays heavy after their last long statement ended.
pub const HEAVY_FOR: Duration = Duration::from_secs(60);

/// The background runtime, built at its first use; `None` (plans then run in
/// place) if the OS would not give it threads.
fn background() -> Option<&'static Handle> {
    static BACKGROUND: OnceLock<Option<Runtime>> = OnceLock::new();
    BACKGROUND
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("sluice-heavy")
                .on_thread_start(lowest_priority)
                .enable_all()
                .build()
                .inspect_err(|e| tracing::warn!("no background runtime for heavy users' statements (they run beside the others): {e}"))
                .ok()
        })
        .as_ref()
        .map(Runtime::handle)
}

/// Nice 19 for the calling thread (Linux schedules threads one by one).
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its arguments; the thread id is the caller's own.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
    }
}

/// A physical optimizer rule, last of a session's: wraps the plan's root in
/// [`Prioritized`] for the session's user.
pub struct Prioritize {
    pub budget: Arc<Budget>,
    pub user: String,
}

impl PhysicalOptimizerRule for Prioritize {
    fn name(&self) -> &str {
        "prioritize"
    }

    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        if plan.is::<Prioritized>() {
            return Ok(plan);
        }
        Ok(Arc::new(Prioritized { child: plan, budget: self.budget.clone(), user: self.user.clone() }))
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A plan's root: runs the plan in place, or on the background runtime if its
/// user is heavy when it starts.
pub struct Prioritized {
    child: Arc<dyn ExecutionPlan>,
    budget: Arc<Budget>,
    user: String,
}

impl fmt::Debug for Prioritize {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Prioritize").field("user", &self.user).finish()
    }
}

impl fmt::Debug for Prioritized {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Prioritized").field("user", &self.user).field("child", &self.child).finish()
    }
}

impl DisplayAs for Prioritized {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Prioritized: behind other users' statements if this user's recent ones ran long")
    }
}

impl ExecutionPlan for Prioritized {
    fn name(&self) -> &str {
        "Prioritized"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.child.properties()
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.child]
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let child = children.pop().ok_or_else(|| internal_datafusion_err!("Prioritized has one child"))?;
        Ok(Arc::new(Prioritized { child, budget: self.budget.clone(), user: self.user.clone() }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let background = match background() {
            Some(handle) if self.budget.is_heavy(&self.user) => handle,
            _ => return self.child.execute(partition, context),
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let child = self.child.clone();
        let task = background.spawn(async move {
            let run = AssertUnwindSafe(async {
                let mut batches = child.execute(partition, context)?;
                while let Some(batch) = batches.next().await {
                    if sender.send(batch).await.is_err() {
                        break; // the statement ended: nobody reads on
                    }
                }
                Ok(())
            });
            let failed = match run.catch_unwind().await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(_) => internal_datafusion_err!("a heavy user's statement panicked (the server goes on)"),
            };
            let _ = sender.send(Err(failed)).await;
        });
        let batches = futures::stream::unfold((receiver, AbortOnDrop(task)), |(mut receiver, task)| async move {
            receiver.recv().await.map(|batch| (batch, (receiver, task)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), batches)))
    }
}

/// Ends the background task when the statement's stream is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::limits::Limits;
    use datafusion::arrow::array::{AsArray, StringArray};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
    use datafusion::prelude::SessionContext;

    /// The name of the thread that computes the row.
    async fn computed_on(budget: &Arc<Budget>, user: &str) -> String {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(Prioritize { budget: budget.clone(), user: user.into() }))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let thread = Arc::new(|_: &[ColumnarValue]| {
            let name = std::thread::current().name().unwrap_or("unnamed").to_string();
            Ok(ColumnarValue::Array(Arc::new(StringArray::from(vec![name]))))
        });
        ctx.register_udf(create_udf("thread", vec![], DataType::Utf8, Volatility::Volatile, thread));
        let batches = ctx.sql("SELECT thread()").await.unwrap().collect().await.unwrap();
        batches[0].column(0).as_string::<i32>().value(0).to_string()
    }

    #[tokio::test]
    async fn a_user_whose_statement_ran_long_runs_behind_the_others_for_a_while() {
        let budget = Budget::new(Limits::default());
        assert_ne!(computed_on(&budget, "a").await, "sluice-heavy", "a new user runs in place");

        let now = tokio::time::Instant::now();
        budget.user("a").statement_ended(LONG_STATEMENT, now);
        assert!(!budget.is_heavy("a"), "{LONG_STATEMENT:?} is not long");
        budget.user("a").statement_ended(LONG_STATEMENT + Duration::from_millis(1), now);
        assert!(budget.is_heavy("a"));
        assert_eq!(computed_on(&budget, "a").await, "sluice-heavy");
        assert_ne!(computed_on(&budget, "b").await, "sluice-heavy", "another user is not moved");
        assert!(!budget.heavy_at("a", now + HEAVY_FOR), "a heavy user is forgiven after {HEAVY_FOR:?}");
    }
}
