//! Memory for statements: each session may hold `--query-memory`, and all of
//! them together `--memory`, so that 64 sessions cannot hold 64 times the first.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{human_readable_size, MemoryLimit, MemoryPool, MemoryReservation};

/// The server's memory for all statements at once.
#[derive(Debug)]
pub struct SharedMemory {
    total: usize,
    used: AtomicUsize,
}

impl SharedMemory {
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(SharedMemory { total, used: AtomicUsize::new(0) })
    }

    /// Bytes reserved by every session now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| used.checked_add(bytes).filter(|&u| u <= self.total)).is_ok()
    }

    fn give_back(&self, bytes: usize) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(bytes)));
    }
}

/// One session's memory pool: at most its own limit, and only what the shared
/// total has left. Nothing spills to disk (the served lake writes no files).
#[derive(Debug)]
pub struct SessionMemory {
    limit: usize,
    used: AtomicUsize,
    shared: Arc<SharedMemory>,
}

impl SessionMemory {
    pub fn new(limit: usize, shared: Arc<SharedMemory>) -> Self {
        SessionMemory { limit, used: AtomicUsize::new(0), shared }
    }
}

impl fmt::Display for SessionMemory {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "session memory (used {} of {})", human_readable_size(self.reserved()), human_readable_size(self.limit))
    }
}

impl MemoryPool for SessionMemory {
    fn name(&self) -> &str {
        "session"
    }

    /// Infallible growth (DataFusion's own bookkeeping of memory already held).
    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.shared.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(shrink)));
        self.shared.give_back(shrink);
    }

    fn try_grow(&self, _reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let own = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| used.checked_add(additional).filter(|&u| u <= self.limit));
        if own.is_err() {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the statement needs more than the {} a statement may use (--query-memory)",
                human_readable_size(self.limit)
            )));
        }
        if !self.shared.try_take(additional) {
            let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(additional)));
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the server's memory for statements ({}, --memory) is taken by other statements: try again shortly",
                human_readable_size(self.shared.total)
            )));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::MemoryConsumer;

    #[test]
    fn sessions_are_bounded_alone_and_together() {
        let shared = SharedMemory::new(150);
        let a: Arc<dyn MemoryPool> = Arc::new(SessionMemory::new(100, shared.clone()));
        let b: Arc<dyn MemoryPool> = Arc::new(SessionMemory::new(100, shared.clone()));
        let ra = MemoryConsumer::new("a").register(&a);
        let rb = MemoryConsumer::new("b").register(&b);
        ra.try_grow(90).unwrap();
        let own = ra.try_grow(20).unwrap_err().to_string();
        assert!(own.contains("--query-memory"), "{own}");
        let total = rb.try_grow(70).unwrap_err().to_string();
        assert!(total.contains("--memory"), "{total}");
        assert_eq!((a.reserved(), b.reserved(), shared.used()), (90, 0, 90), "a refusal takes nothing");
        rb.try_grow(60).unwrap();
        drop(ra);
        assert_eq!(shared.used(), 60, "a dropped reservation gives its memory back");
        rb.try_grow(30).unwrap();
    }
}
