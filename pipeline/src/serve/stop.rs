//! What ends a running statement before its last row: its time limit, a
//! Postgres CancelRequest, or its client gone; and a panic inside it, which ends
//! that statement and nothing else.
//!
//! A statement is a future (planning) and then a stream (its rows). Both are
//! polled only inside [`Stop::guard`] and [`Stop::guard_stream`], which race them
//! against the stop signals and drop them when one fires: dropping a DataFusion
//! stream drops its plan, which aborts every task it spawned and frees every
//! memory reservation it held. DataFusion's operators yield to the runtime
//! cooperatively, so a signal is noticed within one batch's work.

use std::any::Any;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::SchedulingType;
use datafusion::physical_plan::ExecutionPlan;
use futures::{FutureExt, Stream, StreamExt};
use futures::channel::oneshot;
use tokio::time::Instant;

use super::pg::wire::Peer;

/// How often a running statement looks whether its client is still there.
const PEER_CHECK: Duration = Duration::from_millis(100);

/// Why a statement was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    TimedOut(Duration),
    Canceled,
    ClientGone,
    /// A bug in the engine: the statement panicked (the message, for the log and the client).
    Panicked(String),
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Stopped::TimedOut(limit) => write!(f, "canceling statement due to statement timeout ({} ms)", limit.as_millis()),
            Stopped::Canceled => f.write_str("canceling statement due to user request"),
            Stopped::ClientGone => f.write_str("canceling statement: the client closed its connection"),
            Stopped::Panicked(why) => write!(f, "internal error (a bug in Sluice; the server goes on): the statement failed: {why}"),
        }
    }
}

impl Stopped {
    /// The SQLSTATE a client is told.
    pub fn code(&self) -> &'static str {
        match self {
            Stopped::Panicked(_) => "XX000",
            _ => "57014",
        }
    }
}

/// The signals one statement listens to (made once: a stream of rows polls them per row).
pub struct Stop {
    deadline: Instant,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    cancel: Option<oneshot::Receiver<()>>,
    peer: Option<Peer>,
    tick: tokio::time::Interval,
}

impl Stop {
    /// A statement that may run for `limit` from now.
    pub fn after(limit: Duration) -> Stop {
        let deadline = Instant::now() + limit;
        let mut tick = tokio::time::interval(PEER_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Stop { deadline, limit, timer: Box::pin(tokio::time::sleep_until(deadline)), cancel: None, peer: None, tick }
    }

    /// Also stopped by a cancel request (the receiver of pgwire's connection handle).
    pub fn with_cancel(mut self, cancel: oneshot::Receiver<()>) -> Stop {
        self.cancel = Some(cancel);
        self
    }

    /// Also stopped when this client closes its socket.
    pub fn with_peer(mut self, peer: Option<Peer>) -> Stop {
        self.peer = peer;
        self
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Resolves when the statement must stop.
    async fn fired(&mut self) -> Stopped {
        loop {
            let cancel = async {
                match self.cancel.as_mut() {
                    // A dropped sender (the connection's next statement replaced it) is no cancel.
                    Some(receiver) => match receiver.await {
                        Ok(()) => true,
                        Err(_) => false,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut self.timer => return Stopped::TimedOut(self.limit),
                canceled = cancel => {
                    if canceled {
                        return Stopped::Canceled;
                    }
                    self.cancel = None;
                }
                _ = self.tick.tick(), if self.peer.is_some() => {
                    if self.peer.is_some_and(|p| p.gone()) {
                        return Stopped::ClientGone;
                    }
                }
            }
        }
    }

    /// Runs `work` until it finishes or the statement must stop; a panic in it
    /// becomes [`Stopped::Panicked`].
    pub async fn guard<T>(&mut self, work: impl std::future::Future<Output = T>) -> Result<T, Stopped> {
        let work = AssertUnwindSafe(work).catch_unwind();
        tokio::select! {
            biased;
            why = self.fired() => Err(why),
            done = work => done.map_err(|panic| Stopped::Panicked(panic_message(panic))),
        }
    }

    /// `rows`, ended by an error item once the statement must stop (the stream is
    /// then dropped), or by a panic in it. `hold` (the statement's slot) is kept
    /// until the stream ends or is dropped.
    pub fn guard_stream<T: Send + 'static, H: Send + 'static>(
        self,
        rows: Pin<Box<dyn Stream<Item = T> + Send>>,
        hold: H,
        stopped: impl Fn(Stopped) -> T + Send + Sync + 'static,
    ) -> Pin<Box<dyn Stream<Item = T> + Send>> {
        struct State<T, H> {
            stop: Stop,
            rows: Pin<Box<dyn Stream<Item = T> + Send>>,
            _hold: H,
        }
        let stopped = std::sync::Arc::new(stopped);
        Box::pin(futures::stream::unfold(Some(State { stop: self, rows, _hold: hold }), move |state| {
            let stopped = stopped.clone();
            async move {
                let mut state = state?;
                let next = AssertUnwindSafe(state.rows.next()).catch_unwind();
                let item = tokio::select! {
                    biased;
                    why = state.stop.fired() => return Some((stopped(why), None)),
                    item = next => item,
                };
                match item {
                    Ok(Some(item)) => Some((item, Some(state))),
                    Ok(None) => None,
                    Err(panic) => Some((stopped(Stopped::Panicked(panic_message(panic))), None)),
                }
            }
        }))
    }
}

/// A physical optimizer rule: every operator's output takes from the task's
/// cooperative budget, not only the scans'. An operator that makes many batches
/// from rows it already holds (a cross join, a nested-loop join) would otherwise
/// never yield, and a statement stopped while it runs would go on using a core
/// until it finished: its spawned tasks are aborted only when they yield.
#[derive(Debug, Default)]
pub struct YieldEverywhere;

impl PhysicalOptimizerRule for YieldEverywhere {
    fn name(&self) -> &str {
        "yield_everywhere"
    }

    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.is::<CooperativeExec>() || (node.properties().scheduling_type == SchedulingType::Cooperative && node.children().is_empty()) {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    let text = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
    let text = text.unwrap_or_else(|| "a panic".into());
    tracing::error!("a statement panicked (the server goes on): {text}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_statement_stops_at_its_limit_on_cancel_and_on_panic() {
        let mut stop = Stop::after(Duration::from_millis(50));
        let slow = stop.guard(tokio::time::sleep(Duration::from_secs(10))).await;
        assert_eq!(slow, Err(Stopped::TimedOut(Duration::from_millis(50))));

        let (cancel, receiver) = oneshot::channel();
        let mut stop = Stop::after(Duration::from_secs(10)).with_cancel(receiver);
        cancel.send(()).unwrap();
        assert_eq!(stop.guard(std::future::pending::<()>()).await, Err(Stopped::Canceled));

        let (replaced, receiver) = oneshot::channel::<()>();
        let mut stop = Stop::after(Duration::from_millis(100)).with_cancel(receiver);
        drop(replaced);
        assert_eq!(stop.guard(std::future::pending::<()>()).await, Err(Stopped::TimedOut(Duration::from_millis(100))), "a dropped sender is no cancel");

        let mut stop = Stop::after(Duration::from_secs(10));
        let panicked = stop.guard(async { panic!("boom") }).await;
        assert!(matches!(panicked, Err(Stopped::Panicked(ref m)) if m == "boom"), "{panicked:?}");

        let endless = Box::pin(futures::stream::repeat(1u8).then(|x| async move {
            tokio::task::yield_now().await;
            Ok::<u8, String>(x)
        }));
        let guarded = Stop::after(Duration::from_millis(50)).guard_stream(endless, (), |why| Err(why.to_string()));
        let items: Vec<Result<u8, String>> = guarded.collect().await;
        assert!(items.last().unwrap().as_ref().unwrap_err().contains("statement timeout"), "the stream ends with the reason");
    }
}
