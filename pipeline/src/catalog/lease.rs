//! Who writes a lake: a lease in `_sluice/<pipeline>/lease.json`, so that a second
//! pipeline started on the same lake by mistake refuses to start, naming the one
//! that holds it, instead of failing at its first Delta commit.
//!
//! - The holder renews it every 10 s (between commits); it lapses 30 s after the
//!   last renewal.
//! - A holder on this host whose process is gone (killed) is taken over at once; a
//!   live one never. A holder on another host is taken over once its lease lapsed.
//! - A renewal that finds another holder stops the run: it was taken over while
//!   this one was stalled, and two writers must not both commit. A store that does
//!   not answer is the commit's business (it waits out outages), not the lease's.
//! - A run that ends (its input, or a signal) releases it, so a run elsewhere can
//!   start at once; `sluice maintain` holds it while it rewrites files.
//! - A shard of a consumer group ([`Lease::acquire_assigned`]) was given to this
//!   instance by Kafka, which is the authority: a live holder gave it up before
//!   the group handed it on, so the lease is taken at once, and checked at every
//!   commit; a holder that stalled finds it taken at its next commit and stops.
//!   An instance fenced that way while the group still gives it the shard waits
//!   for the other's lease to lapse instead, so two claimants do not take turns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::Lake;
use crate::error::{Error, Result};

/// How long a lease holds after its last renewal.
const TTL: Duration = Duration::from_secs(30);
/// How often the holder renews it.
const RENEW_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Holder {
    /// Host, process and start time: unique to one run.
    id: String,
    host: String,
    pid: u32,
    /// Unix ms of the last renewal.
    renewed_ms: i64,
}

impl Holder {
    fn describe(&self) -> String {
        let ago = (now_ms() - self.renewed_ms).max(0) / 1000;
        format!("process {} on {}, renewed {ago} s ago", self.pid, self.host)
    }

    /// Whether a run may take the lease from this holder.
    fn gone(&self, me: &Holder) -> bool {
        let same_host = self.host == me.host;
        // This process (a pipeline opened again), or one that no longer runs.
        (same_host && (self.pid == me.pid || !process_alive(self.pid))) || (!same_host && self.lapsed())
    }

    fn lapsed(&self) -> bool {
        now_ms() - self.renewed_ms > TTL.as_millis() as i64
    }
}

/// A pipeline's hold on its lake.
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    path: Path,
    location: String,
    me: Holder,
    renewed: Instant,
    /// Checked at every renewal, not only when one is due: held by a group's shard.
    fenced: bool,
}

impl Lease {
    /// Takes the lease of `pipeline` on `lake`, or refuses if another run holds it.
    pub async fn acquire(lake: &Lake, pipeline: &str) -> Result<Lease> {
        let mut lease = Lease::new(lake, pipeline)?;
        if let Some(holder) = lease.holder().await? {
            if !holder.gone(&lease.me) {
                return Err(Error::Config(format!(
                    "another pipeline holds the lake {} ({}; {}): stop it first, or give this one another lake",
                    lake.root(),
                    holder.describe(),
                    lease.location
                )));
            }
            tracing::info!(previous = %holder.describe(), "taking over the lake's lease from a run that is gone");
        }
        lease.write().await?;
        Ok(lease)
    }

    /// Takes the lease of a shard the consumer group gave this instance: at once,
    /// or when `patient`, once its last holder released it, is gone, or let it
    /// lapse (a stalled instance on this host too).
    pub async fn acquire_assigned(lake: &Lake, pipeline: &str, patient: bool) -> Result<Lease> {
        let mut lease = Lease::new(lake, pipeline)?;
        lease.fenced = true;
        let mut said = false;
        while let Some(holder) = lease.holder().await? {
            if holder.gone(&lease.me) || holder.lapsed() {
                break;
            }
            if !patient {
                tracing::info!(pipeline, holder = %holder.describe(), "taking the shard's lease over: the group gave the shard here");
                break;
            }
            if !std::mem::replace(&mut said, true) {
                tracing::info!(pipeline, holder = %holder.describe(), "waiting for the shard's last holder to give it up, or for its lease to lapse");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        lease.write().await?;
        Ok(lease)
    }

    fn new(lake: &Lake, pipeline: &str) -> Result<Lease> {
        let url = lake.root().join(&format!("_sluice/{pipeline}/")).map_err(|e| Error::Config(format!("pipeline name `{pipeline}`: {e}")))?;
        let store = lake.store_at(url.clone())?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "this host".into());
        let pid = std::process::id();
        // Unique to this acquisition, even of two in one process within a millisecond.
        static ACQUIRED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = ACQUIRED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let me = Holder { id: format!("{host}:{pid}:{}:{n}", now_ms()), host, pid, renewed_ms: now_ms() };
        Ok(Lease { store, path: Path::from("lease.json"), location: format!("{url}lease.json"), me, renewed: Instant::now(), fenced: false })
    }

    /// Renews the lease if it is due; fails if another run has taken it.
    pub async fn renew(&mut self) -> Result<()> {
        let due = self.renewed.elapsed() >= RENEW_EVERY;
        if !due && !self.fenced {
            return Ok(());
        }
        match self.holder().await {
            Ok(Some(holder)) if holder.id != self.me.id => {
                let what = if self.fenced { "another instance took over the shard" } else { "another pipeline took over the lake" };
                return Err(Error::Fenced(format!(
                    "{what} ({}; {}) while this one was stalled: this one stops, so that two do not write",
                    holder.describe(),
                    self.location
                )))
            }
            Ok(_) if !due => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not read the lake's lease; trying again at the next renewal");
                return Ok(());
            }
        }
        self.me.renewed_ms = now_ms();
        if let Err(e) = self.write().await {
            tracing::warn!(error = %e, "could not renew the lake's lease; trying again at the next renewal");
        }
        Ok(())
    }

    /// Gives the lease up, if this run still holds it.
    pub async fn release(&mut self) {
        if let Ok(Some(holder)) = self.holder().await {
            if holder.id == self.me.id {
                if let Err(e) = self.store.delete(&self.path).await {
                    tracing::warn!(error = %e, "could not release the lake's lease; it lapses in 30 s");
                }
            }
        }
    }

    async fn holder(&self) -> Result<Option<Holder>> {
        let bytes = match self.store.get(&self.path).await {
            Ok(found) => found.bytes().await.map_err(|e| self.error("reading", e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("reading", e)),
        };
        // A lease that does not parse was not written by a running pipeline.
        Ok(serde_json::from_slice(&bytes).ok())
    }

    async fn write(&mut self) -> Result<()> {
        let body = serde_json::to_vec_pretty(&self.me).map_err(|e| Error::Internal(format!("the lease: {e}")))?;
        self.store.put(&self.path, PutPayload::from(body)).await.map_err(|e| self.error("writing", e))?;
        self.renewed = Instant::now();
        Ok(())
    }

    fn error(&self, what: &str, e: object_store::Error) -> Error {
        Error::Config(format!("{what} the lake's lease {}: {e}", self.location))
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether process `pid` of this host runs (Linux's /proc; elsewhere, assume so).
fn process_alive(pid: u32) -> bool {
    match std::path::Path::new("/proc/self").exists() {
        true => std::path::Path::new(&format!("/proc/{pid}")).exists(),
        false => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(host: &str, pid: u32, ago_ms: i64) -> Holder {
        Holder { id: format!("{host}:{pid}"), host: host.into(), pid, renewed_ms: now_ms() - ago_ms }
    }

    #[test]
    fn a_lease_is_taken_from_a_gone_process_or_a_lapsed_remote_one_only() {
        let me = holder("a", std::process::id(), 0);
        assert!(holder("a", std::process::id(), 0).gone(&me), "this very process, opening the lake again");
        assert!(holder("a", u32::MAX - 1, 0).gone(&me), "a process of this host that is not running");
        assert!(!holder("a", 1, 60_000).gone(&me), "pid 1 runs: however old its lease, it holds");
        assert!(!holder("b", 1, 5_000).gone(&me), "another host's fresh lease holds");
        assert!(holder("b", 1, 31_000).gone(&me), "another host's lapsed lease is taken");
    }

    #[tokio::test]
    async fn a_shard_taken_over_fences_its_stalled_holder_at_its_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::connect(dir.path().to_str().unwrap(), true, Default::default()).await.unwrap();
        let mut stalled = Lease::acquire_assigned(&lake, "g/shard-0", false).await.unwrap();
        let mut taker = Lease::acquire_assigned(&lake, "g/shard-0", false).await.unwrap();
        let fenced = stalled.renew().await;
        assert!(matches!(&fenced, Err(Error::Fenced(m)) if m.contains("took over the shard")), "{fenced:?}");
        taker.renew().await.unwrap();
        // The fenced one does not release what it no longer holds.
        stalled.release().await;
        assert!(taker.holder().await.unwrap().is_some_and(|h| h.id == taker.me.id));
    }
}
