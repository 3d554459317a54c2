//! What an operator watches: `/healthz` and Prometheus `/metrics` over HTTP.
//!
//! The run loop records into [`Observed`] once per batch and per commit; the HTTP
//! server renders it on request, so scraping never slows the stream.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;

use crate::catalog::TablePath;
use crate::commit::StoreHealth;
use crate::error::{Error, Result};
use crate::sink::Maintained;

/// A latency distribution in 10 ms buckets up to two minutes (beyond lands in the
/// last): fine enough for percentiles, fixed in size whatever the traffic.
#[derive(Debug, Clone)]
pub struct Latencies {
    buckets: Vec<u64>,
    count: u64,
    sum_ms: f64,
}

const BUCKET_MS: i64 = 10;
const BUCKETS: usize = 12_000;

impl Default for Latencies {
    fn default() -> Self {
        Latencies { buckets: vec![0; BUCKETS], count: 0, sum_ms: 0.0 }
    }
}

impl Latencies {
    pub fn record(&mut self, ms: i64) {
        let ms = ms.max(0);
        self.buckets[((ms / BUCKET_MS) as usize).min(BUCKETS - 1)] += 1;
        self.count += 1;
        self.sum_ms += ms as f64;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile, seconds (the upper edge of its bucket); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(((i as i64 + 1) * BUCKET_MS) as f64 / 1e3);
            }
        }
        None
    }

    /// Observations at or under `seconds`.
    fn at_most(&self, seconds: f64) -> u64 {
        let last = ((seconds * 1e3) as i64 / BUCKET_MS) as usize;
        self.buckets.iter().take(last.min(BUCKETS)).sum()
    }
}

#[derive(Debug, Default)]
pub struct Observed {
    state: Mutex<State>,
    /// Updated by the lake's writer while it waits out an outage.
    store: Arc<StoreHealth>,
}

#[derive(Debug, Default)]
struct State {
    /// Per topic: messages, bytes, bad, late.
    topics: BTreeMap<String, [u64; 4]>,
    /// Per output table: its query's watermark, µs.
    watermarks: BTreeMap<String, i64>,
    /// Per source topic: its watermark (over partitions not idle), µs.
    source_watermarks: BTreeMap<String, i64>,
    /// Per new table, the archived messages its backfill replayed and has to
    /// replay, and how fast it goes (events per second).
    backfills: BTreeMap<String, (u64, u64, f64)>,
    /// Per table: what it reads (topics, mirrors, UDFs), and what reads it
    /// (dashboard charts, API answers).
    lineage: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// In a consumer group (`run --group`), the shards this instance runs.
    shards: Option<Vec<u32>>,
    /// Per partition: the next offset the pipeline reads, and the broker's high
    /// watermark (from librdkafka's statistics); their difference is the lag.
    /// Per reader (pipeline: a group instance runs several, one per shard).
    positions: BTreeMap<(String, i32), BTreeMap<String, i64>>,
    high_watermarks: BTreeMap<(String, i32), i64>,
    open_windows: usize,
    state_bytes: usize,
    commits: u64,
    rows_committed: u64,
    last_commit_seconds: f64,
    commit_seconds_sum: f64,
    /// Kafka timestamp to the commit that made the message's rows visible.
    freshness: Latencies,
    /// Kafka timestamp to the source receiving the message (see `RunStats::received`).
    received: Latencies,
    /// Kafka timestamp to the run loop taking the message's batch: the part of
    /// freshness spent before the pipeline's queries.
    taken: Latencies,
    /// Maintenance done: Delta checkpoints, files compacted away, files vacuumed,
    /// files of days past the archive's retention removed.
    maintenance: [u64; 4],
}

impl State {
    /// A partition's lag behind the broker's high watermark, as its slowest
    /// reader has it (all of it before a first batch).
    fn lag(&self, topic: &str, partition: i32, high: i64) -> i64 {
        let next = self.positions.get(&(topic.to_string(), partition)).and_then(|r| r.values().min().copied());
        (high - next.unwrap_or(0)).max(0)
    }
}

impl Observed {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// A batch from `partition` of `topic`, after which the pipeline `reader` reads `next_offset`.
    #[allow(clippy::too_many_arguments)]
    pub fn batch(&self, reader: &str, topic: &str, partition: i32, next_offset: i64, messages: u64, bytes: u64, bad: u64, late: u64) {
        self.with(|s| {
            s.positions.entry((topic.to_string(), partition)).or_default().insert(reader.to_string(), next_offset);
            let c = s.topics.entry(topic.to_string()).or_default();
            for (counter, n) in c.iter_mut().zip([messages, bytes, bad, late]) {
                *counter += n;
            }
        });
    }

    pub fn watermark(&self, table: &str, watermark: i64) {
        self.with(|s| s.watermarks.insert(table.to_string(), watermark));
    }

    pub fn backfill(&self, table: &str, done: u64, total: u64, events_per_second: f64) {
        self.with(|s| s.backfills.insert(table.to_string(), (done, total, events_per_second)));
    }

    /// A pipeline that stopped reading (a shard the group moved): its positions
    /// no longer count towards the lag, and a partition no other reads has none.
    pub fn forget(&self, reader: &str) {
        self.with(|s| {
            for readers in s.positions.values_mut() {
                readers.remove(reader);
            }
            let unread: Vec<(String, i32)> = s.positions.iter().filter(|(_, r)| r.is_empty()).map(|(k, _)| k.clone()).collect();
            for partition in unread {
                s.positions.remove(&partition);
                s.high_watermarks.remove(&partition);
            }
        });
    }

    /// The shards the consumer group gave this instance, replacing what was there.
    pub fn shards_held(&self, shards: Vec<u32>) {
        self.with(|s| s.shards = Some(shards));
    }

    /// The running tables' lineage, replacing what was there.
    pub fn lineage(&self, tables: BTreeMap<String, (Vec<String>, Vec<String>)>) {
        self.with(|s| s.lineage = tables);
    }

    pub fn source_watermark(&self, topic: &str, watermark: i64) {
        self.with(|s| s.source_watermarks.insert(topic.to_string(), watermark));
    }

    /// A partition's high watermark as the broker reports it.
    pub fn high_watermark(&self, topic: &str, partition: i32, offset: i64) {
        self.with(|s| s.high_watermarks.insert((topic.to_string(), partition), offset));
    }

    /// Messages whose rows a commit just made visible, by their Kafka timestamps (ms).
    pub fn visible(&self, timestamps: &[i64], now_ms: i64) {
        self.with(|s| timestamps.iter().for_each(|t| s.freshness.record(now_ms - t)));
    }

    /// Messages the run loop just took, by their Kafka timestamps (ms).
    pub fn taken(&self, timestamps: &[i64], now_ms: i64) {
        self.with(|s| timestamps.iter().for_each(|t| s.taken.record(now_ms - t)));
    }

    pub fn freshness(&self) -> Latencies {
        self.with(|s| s.freshness.clone())
    }

    pub fn taken_latencies(&self) -> Latencies {
        self.with(|s| s.taken.clone())
    }

    pub fn received_latencies(&self) -> Latencies {
        self.with(|s| s.received.clone())
    }

    pub fn store_health(&self) -> Arc<StoreHealth> {
        self.store.clone()
    }

    pub fn maintained(&self, maintained: &BTreeMap<TablePath, Maintained>) {
        self.with(|s| {
            for done in maintained.values() {
                s.maintenance[0] += done.checkpoint.is_some() as u64;
                s.maintenance[1] += done.compacted.values().map(|(removed, _)| removed).sum::<u64>();
                s.maintenance[2] += done.vacuumed as u64;
                s.maintenance[3] += done.expired as u64;
            }
        });
    }

    pub fn commit(&self, rows: u64, seconds: f64, open_windows: usize, state_bytes: usize) {
        self.with(|s| {
            s.commits += 1;
            s.rows_committed += rows;
            s.last_commit_seconds = seconds;
            s.commit_seconds_sum += seconds;
            s.open_windows = open_windows;
            s.state_bytes = state_bytes;
        });
    }

    /// The Prometheus text exposition of everything observed.
    pub fn render(&self) -> String {
        self.with(|s| {
            let mut out = String::new();
            let names = [
                ("sluice_records_total", "Messages read, bad ones and tombstones included."),
                ("sluice_bytes_total", "Bytes of messages read."),
                ("sluice_bad_records_total", "Messages that went to dead_letters."),
                ("sluice_late_records_total", "Valid events late for at least one table."),
            ];
            for (i, (name, help)) in names.iter().enumerate() {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (topic, c) in &s.topics {
                    let _ = writeln!(out, "{name}{{topic=\"{topic}\"}} {}", c[i]);
                }
            }
            let _ = writeln!(out, "# HELP sluice_watermark_seconds Event-time watermark of each table's query.\n# TYPE sluice_watermark_seconds gauge");
            for (table, wm) in &s.watermarks {
                if *wm != i64::MIN && *wm != i64::MAX {
                    let _ = writeln!(out, "sluice_watermark_seconds{{table=\"{table}\"}} {}", *wm as f64 / 1e6);
                }
            }
            if let Some(shards) = &s.shards {
                let _ = writeln!(out, "# HELP sluice_group_shard_held 1 for each shard of the consumer group this instance runs.\n# TYPE sluice_group_shard_held gauge");
                for shard in shards {
                    let _ = writeln!(out, "sluice_group_shard_held{{shard=\"{shard}\"}} 1");
                }
                let _ = writeln!(out, "# HELP sluice_group_shards_held Shards of the consumer group this instance runs.\n# TYPE sluice_group_shards_held gauge\nsluice_group_shards_held {}", shards.len());
            }
            if !s.backfills.is_empty() {
                let _ = writeln!(out, "# HELP sluice_backfill_messages Archived messages a new table's backfill replayed, of sluice_backfill_messages_to_replay.\n# TYPE sluice_backfill_messages gauge");
                for (table, (done, _, _)) in &s.backfills {
                    let _ = writeln!(out, "sluice_backfill_messages{{table=\"{table}\"}} {done}");
                }
                let _ = writeln!(out, "# HELP sluice_backfill_messages_to_replay Archived messages a new table's backfill replays in all.\n# TYPE sluice_backfill_messages_to_replay gauge");
                for (table, (_, total, _)) in &s.backfills {
                    let _ = writeln!(out, "sluice_backfill_messages_to_replay{{table=\"{table}\"}} {total}");
                }
                let _ = writeln!(out, "# HELP sluice_backfill_events_per_second How fast each backfill replays.\n# TYPE sluice_backfill_events_per_second gauge");
                for (table, (_, _, rate)) in &s.backfills {
                    let _ = writeln!(out, "sluice_backfill_events_per_second{{table=\"{table}\"}} {rate:.0}");
                }
            }
            let _ = writeln!(out, "# HELP sluice_source_watermark_seconds Event-time watermark of each topic.\n# TYPE sluice_source_watermark_seconds gauge");
            for (topic, wm) in &s.source_watermarks {
                if *wm != i64::MIN && *wm != i64::MAX {
                    let _ = writeln!(out, "sluice_source_watermark_seconds{{topic=\"{topic}\"}} {}", *wm as f64 / 1e6);
                }
            }
            let _ = writeln!(out, "# HELP sluice_consumer_lag Messages in the partition not read yet (broker high watermark - next offset).\n# TYPE sluice_consumer_lag gauge");
            for ((topic, partition), high) in &s.high_watermarks {
                let _ = writeln!(out, "sluice_consumer_lag{{topic=\"{topic}\",partition=\"{partition}\"}} {}", s.lag(topic, *partition, *high));
            }
            let gauges = [
                ("sluice_open_windows", "Windows holding state.", s.open_windows as f64),
                ("sluice_window_state_bytes", "Bytes of window state.", s.state_bytes as f64),
                ("sluice_last_commit_seconds", "Duration of the last commit.", s.last_commit_seconds),
            ];
            for (name, help, value) in gauges {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
            }
            let name = "sluice_freshness_seconds";
            let _ = writeln!(out, "# HELP {name} From a message's Kafka timestamp to the commit that made its rows visible.\n# TYPE {name} histogram");
            for le in [0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0, 60.0] {
                let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", s.freshness.at_most(le));
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {0}\n{name}_count {0}\n{name}_sum {1}", s.freshness.count, s.freshness.sum_ms / 1e3);
            let _ = writeln!(out, "# HELP sluice_commits_total Lake commits (epochs).\n# TYPE sluice_commits_total counter\nsluice_commits_total {}", s.commits);
            let _ = writeln!(out, "# HELP sluice_commit_seconds_total Time spent committing epochs.\n# TYPE sluice_commit_seconds_total counter\nsluice_commit_seconds_total {}", s.commit_seconds_sum);
            let _ = writeln!(out, "# HELP sluice_rows_committed_total Rows committed to the lake.\n# TYPE sluice_rows_committed_total counter\nsluice_rows_committed_total {}", s.rows_committed);
            let counters = [
                ("sluice_store_retries_total", "Lake store requests tried again after the store did not answer.", self.store.retries.load(Ordering::Relaxed)),
                ("sluice_delta_checkpoints_total", "Delta checkpoints written.", s.maintenance[0]),
                ("sluice_files_compacted_total", "Small files rewritten by compaction.", s.maintenance[1]),
                ("sluice_files_vacuumed_total", "Removed or orphaned files deleted by vacuum.", s.maintenance[2]),
                ("sluice_files_expired_total", "Files of days past --archive-retention removed from the archive.", s.maintenance[3]),
            ];
            for (name, help, value) in counters {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
            }
            let unavailable = self.store.unavailable.load(Ordering::Relaxed) as u8;
            let _ = writeln!(out, "# HELP sluice_store_unavailable 1 while a commit waits for the lake's store.\n# TYPE sluice_store_unavailable gauge\nsluice_store_unavailable {unavailable}");
            out
        })
    }
}

impl Observed {
    /// What the dashboard charts live, as JSON: counters (the page takes rates
    /// between two polls), watermarks, lag per topic, commits.
    pub fn snapshot(&self) -> serde_json::Value {
        self.with(|s| {
            let mut topics = serde_json::Map::new();
            for (topic, [records, bytes, bad, late]) in &s.topics {
                let lag: i64 = s
                    .high_watermarks
                    .iter()
                    .filter(|((t, _), _)| t == topic)
                    .map(|((t, p), high)| s.lag(t, *p, *high))
                    .sum();
                let watermark = s.source_watermarks.get(topic).filter(|w| **w != i64::MIN && **w != i64::MAX).map(|w| *w as f64 / 1e6);
                topics.insert(
                    topic.clone(),
                    serde_json::json!({ "records": records, "bytes": bytes, "bad": bad, "late": late, "lag": lag, "watermark_s": watermark }),
                );
            }
            let backfills: Vec<serde_json::Value> = s
                .backfills
                .iter()
                .map(|(table, &(done, total, rate))| {
                    let left = (rate > 0.0 && done < total).then(|| (total - done) as f64 / rate);
                    serde_json::json!({ "table": table, "done": done, "total": total, "events_per_second": rate.round(), "seconds_left": left.map(f64::round) })
                })
                .collect();
            let tables: Vec<serde_json::Value> = s
                .lineage
                .iter()
                .map(|(table, (reads, read_by))| serde_json::json!({ "table": table, "reads": reads.join(", "), "read_by": read_by.join(", ") }))
                .collect();
            serde_json::json!({
                "now_s": chrono::Utc::now().timestamp_millis() as f64 / 1e3,
                "topics": topics,
                "backfills": backfills,
                "tables": tables,
                "shards": s.shards,
                "commits": s.commits,
                "commit_seconds_sum": s.commit_seconds_sum,
                "last_commit_seconds": s.last_commit_seconds,
                "rows_committed": s.rows_committed,
                "open_windows": s.open_windows,
                "state_bytes": s.state_bytes,
                "store_unavailable": self.store.unavailable.load(Ordering::Relaxed),
            })
        })
    }
}

impl crate::source::BrokerStats for Observed {
    fn high_watermark(&self, topic: &str, partition: i32, offset: i64) {
        Observed::high_watermark(self, topic, partition, offset);
    }

    fn received(&self, latencies_ms: &[i64]) {
        if !latencies_ms.is_empty() {
            self.with(|s| latencies_ms.iter().for_each(|&ms| s.received.record(ms)));
        }
    }
}

/// Binds `addr` and serves `/healthz`, `/metrics`, and the dashboard page with its
/// live pipeline view (`/api/v1/pipeline`), in the background; returns the address
/// bound (useful with port 0).
pub async fn serve(addr: SocketAddr, observed: Arc<Observed>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("--metrics-addr {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Error::Config(format!("--metrics-addr {addr}: {e}")))?;
    let snapshot = observed.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(move || async move { observed.render() }))
        .route("/api/v1/pipeline", get(move || async move { axum::Json(snapshot.snapshot()) }))
        .route("/", get(crate::serve::dashboard::index))
        .route("/static/{name}", get(crate::serve::dashboard::asset));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_come_from_10ms_buckets() {
        let mut l = Latencies::default();
        for ms in 1..=1000 {
            l.record(ms);
        }
        // The 500th value, 500 ms, is in the bucket [500, 510): its upper edge is reported.
        assert_eq!(l.quantile(0.5), Some(0.51));
        assert_eq!(l.quantile(0.99), Some(1.0), "990 ms is in [990, 1000)");
        assert_eq!(l.quantile(1.0), Some(1.01), "1000 ms is in the bucket [1000, 1010)");
        l.record(1_000_000);
        assert_eq!(l.quantile(1.0), Some(120.0), "beyond two minutes lands in the last bucket");
        assert_eq!(Latencies::default().quantile(0.5), None);
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_health_and_what_the_run_recorded() {
        let observed = Arc::new(Observed::default());
        observed.batch("sluice", "gateway.requests", 0, 10, 10, 3000, 1, 2);
        observed.batch("sluice", "gateway.requests", 0, 15, 5, 1500, 0, 0);
        // Two shards of a group read partition 0; the slower one sets its lag.
        observed.batch("g/shard-1", "gateway.requests", 0, 12, 0, 0, 0, 0);
        observed.batch("g/shard-2", "gateway.requests", 0, 30, 0, 0, 0, 0);
        observed.forget("g/shard-1");
        observed.high_watermark("gateway.requests", 0, 40);
        observed.high_watermark("gateway.requests", 1, 7);
        observed.source_watermark("gateway.requests", 1_772_323_100_000_000);
        observed.watermark("a/b/c", 1_772_323_200_000_000);
        observed.backfill("a.b.new", 700, 2000, 100.0);
        let reads = (vec!["topic gateway.requests".to_string()], vec!["the dashboard's chart \"Pipeline: x\"".to_string()]);
        observed.lineage([("a.b.new".to_string(), reads)].into());
        observed.commit(12, 0.25, 3, 4096);
        observed.visible(&[10_000, 9_700, 8_500], 10_000);
        let addr = serve("127.0.0.1:0".parse().unwrap(), observed).await.unwrap();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        for line in [
            "sluice_records_total{topic=\"gateway.requests\"} 15",
            "sluice_bad_records_total{topic=\"gateway.requests\"} 1",
            "sluice_late_records_total{topic=\"gateway.requests\"} 2",
            "sluice_watermark_seconds{table=\"a/b/c\"} 1772323200",
            "sluice_source_watermark_seconds{topic=\"gateway.requests\"} 1772323100",
            "sluice_consumer_lag{topic=\"gateway.requests\",partition=\"0\"} 25",
            "sluice_consumer_lag{topic=\"gateway.requests\",partition=\"1\"} 7",
            "sluice_commit_seconds_total 0.25",
            "sluice_freshness_seconds_bucket{le=\"0.5\"} 2",
            "sluice_freshness_seconds_bucket{le=\"1\"} 2",
            "sluice_freshness_seconds_bucket{le=\"2\"} 3",
            "sluice_freshness_seconds_count 3",
            "sluice_open_windows 3",
            "sluice_commits_total 1",
            "sluice_rows_committed_total 12",
            "sluice_backfill_messages{table=\"a.b.new\"} 700",
            "sluice_backfill_messages_to_replay{table=\"a.b.new\"} 2000",
            "sluice_backfill_events_per_second{table=\"a.b.new\"} 100",
        ] {
            assert!(metrics.lines().any(|l| l == line), "missing `{line}` in\n{metrics}");
        }
        // The dashboard's live view: the same counters as JSON, and the page itself.
        let live = get(addr, "/api/v1/pipeline").await;
        let body: serde_json::Value = serde_json::from_str(live.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
        let topic = &body["topics"]["gateway.requests"];
        assert_eq!((topic["records"].as_u64(), topic["bad"].as_u64(), topic["lag"].as_i64()), (Some(15), Some(1), Some(32)), "{body}");
        assert_eq!(topic["watermark_s"].as_f64(), Some(1_772_323_100.0));
        assert_eq!((body["commits"].as_u64(), body["rows_committed"].as_u64()), (Some(1), Some(12)));
        let backfill = &body["backfills"][0];
        assert_eq!((backfill["table"].as_str(), backfill["done"].as_u64(), backfill["seconds_left"].as_f64()), (Some("a.b.new"), Some(700), Some(13.0)), "{body}");
        assert_eq!(body["tables"][0]["reads"].as_str(), Some("topic gateway.requests"), "{body}");
        let page = get(addr, "/").await;
        assert!(page.starts_with("HTTP/1.1 200") && page.contains("/static/app.js"), "{page}");
    }
}
