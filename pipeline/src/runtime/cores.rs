//! The queries a batch reaches run side by side, one thread per core. Each query
//! owns its state and its table's sink, so they share only what they read (the
//! batch, the watermarks, the mirrors); results come back in the queries' order,
//! so nothing written depends on which core ran what.

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::runtime::{Handle, RuntimeFlavor};

/// A helper thread's stack: a query's plan recurses as deep as its SQL nests,
/// as on the runtime's own threads (address space, touched only as far as used).
const STACK: usize = 32 << 20;

/// Runs `work` on every job, on as many threads as there are cores (the calling
/// one among them, each taking the next job when done with one), and returns the
/// results in the jobs' order. Where a thread may not block (a current-thread
/// runtime: a group's shards, which already have a thread each), or with one job
/// or one core, the jobs run one after another here.
pub(super) async fn across_cores<J, R, F, Fut>(jobs: Vec<J>, work: F) -> Vec<R>
where
    J: Send,
    R: Send,
    F: Fn(J) -> Fut + Sync,
    Fut: Future<Output = R>,
{
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    let runtime = Handle::try_current().ok().filter(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    let Some(runtime) = runtime.filter(|_| threads > 1) else {
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            results.push(work(job).await);
        }
        return results;
    };
    let count = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate());
    let done = Mutex::new(Vec::with_capacity(count));
    let take_jobs = || loop {
        let Some((i, job)) = queue.lock().unwrap_or_else(PoisonError::into_inner).next() else { break };
        // Tokio's `block_on`, not a futures executor's: a plan may run one of those
        // itself (an async UDF does), and they do not nest. Tokio tasks a plan
        // spawns go to the runtime's workers.
        let result = runtime.block_on(work(job));
        done.lock().unwrap_or_else(PoisonError::into_inner).push((i, result));
    };
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            for _ in 1..threads {
                let helper = std::thread::Builder::new().name("sluice-query".into()).stack_size(STACK).spawn_scoped(scope, take_jobs);
                // Without a helper, this thread takes every job.
                if let Err(e) = helper {
                    tracing::debug!("no helper thread for the queries: {e}");
                }
            }
            take_jobs();
        })
    });
    let mut done = done.into_inner().unwrap_or_else(PoisonError::into_inner);
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs of uneven length, each running a futures executor of its own, come back
    /// in their order on a multi-thread runtime (threads side by side) and on a
    /// current-thread one (one after another).
    async fn in_order() {
        let jobs: Vec<u64> = (0..40).collect();
        let results = across_cores(jobs, |n| async move {
            std::thread::sleep(std::time::Duration::from_micros((40 - n) * 50));
            // As an async UDF does, inside a plan.
            futures::executor::block_on(std::future::ready(()));
            (n, std::thread::current().id())
        })
        .await;
        assert_eq!(results.iter().map(|(n, _)| *n).collect::<Vec<_>>(), (0..40).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_come_back_in_the_jobs_order_across_threads() {
        in_order().await;
    }

    #[tokio::test]
    async fn results_come_back_in_the_jobs_order_on_one_thread() {
        in_order().await;
    }
}
