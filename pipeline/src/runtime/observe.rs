//! What an operator watches: `/healthz` and Prometheus `/metrics` over HTTP.
//!
//! The run loop records into [`Observed`] once per batch and per commit; the HTTP
//! server renders it on request, so scraping never slows the stream.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;

use crate::error::{Error, Result};

#[derive(Debug, Default)]
pub struct Observed {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Per topic: messages, bytes, bad, late.
    topics: BTreeMap<String, [u64; 4]>,
    /// Per output table: its query's watermark, µs.
    watermarks: BTreeMap<String, i64>,
    /// Per source topic: its watermark (over partitions not idle), µs.
    source_watermarks: BTreeMap<String, i64>,
    /// Per partition: the next offset the pipeline reads, and the broker's high
    /// watermark (from librdkafka's statistics); their difference is the lag.
    positions: BTreeMap<(String, i32), i64>,
    high_watermarks: BTreeMap<(String, i32), i64>,
    open_windows: usize,
    state_bytes: usize,
    commits: u64,
    rows_committed: u64,
    last_commit_seconds: f64,
    commit_seconds_sum: f64,
}

impl Observed {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// A batch from `partition` of `topic`, after which the pipeline reads `next_offset`.
    #[allow(clippy::too_many_arguments)]
    pub fn batch(&self, topic: &str, partition: i32, next_offset: i64, messages: u64, bytes: u64, bad: u64, late: u64) {
        self.with(|s| {
            s.positions.insert((topic.to_string(), partition), next_offset);
            let c = s.topics.entry(topic.to_string()).or_default();
            for (counter, n) in c.iter_mut().zip([messages, bytes, bad, late]) {
                *counter += n;
            }
        });
    }

    pub fn watermark(&self, table: &str, watermark: i64) {
        self.with(|s| s.watermarks.insert(table.to_string(), watermark));
    }

    pub fn source_watermark(&self, topic: &str, watermark: i64) {
        self.with(|s| s.source_watermarks.insert(topic.to_string(), watermark));
    }

    /// A partition's high watermark as the broker reports it.
    pub fn high_watermark(&self, topic: &str, partition: i32, offset: i64) {
        self.with(|s| s.high_watermarks.insert((topic.to_string(), partition), offset));
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
            let _ = writeln!(out, "# HELP sluice_source_watermark_seconds Event-time watermark of each topic.\n# TYPE sluice_source_watermark_seconds gauge");
            for (topic, wm) in &s.source_watermarks {
                if *wm != i64::MIN && *wm != i64::MAX {
                    let _ = writeln!(out, "sluice_source_watermark_seconds{{topic=\"{topic}\"}} {}", *wm as f64 / 1e6);
                }
            }
            let _ = writeln!(out, "# HELP sluice_consumer_lag Messages in the partition not read yet (broker high watermark - next offset).\n# TYPE sluice_consumer_lag gauge");
            for ((topic, partition), high) in &s.high_watermarks {
                let next = s.positions.get(&(topic.clone(), *partition)).copied().unwrap_or(0);
                let _ = writeln!(out, "sluice_consumer_lag{{topic=\"{topic}\",partition=\"{partition}\"}} {}", (high - next).max(0));
            }
            let gauges = [
                ("sluice_open_windows", "Windows holding state.", s.open_windows as f64),
                ("sluice_window_state_bytes", "Bytes of window state.", s.state_bytes as f64),
                ("sluice_last_commit_seconds", "Duration of the last commit.", s.last_commit_seconds),
            ];
            for (name, help, value) in gauges {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
            }
            let _ = writeln!(out, "# HELP sluice_commits_total Lake commits (epochs).\n# TYPE sluice_commits_total counter\nsluice_commits_total {}", s.commits);
            let _ = writeln!(out, "# HELP sluice_commit_seconds_total Time spent committing epochs.\n# TYPE sluice_commit_seconds_total counter\nsluice_commit_seconds_total {}", s.commit_seconds_sum);
            let _ = writeln!(out, "# HELP sluice_rows_committed_total Rows committed to the lake.\n# TYPE sluice_rows_committed_total counter\nsluice_rows_committed_total {}", s.rows_committed);
            out
        })
    }
}

/// Binds `addr` and serves `/healthz` and `/metrics` in the background; returns the
/// address bound (useful with port 0).
pub async fn serve(addr: SocketAddr, observed: Arc<Observed>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("--metrics-addr {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Error::Config(format!("--metrics-addr {addr}: {e}")))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(move || async move { observed.render() }));
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
        observed.batch("gateway.requests", 0, 10, 10, 3000, 1, 2);
        observed.batch("gateway.requests", 0, 15, 5, 1500, 0, 0);
        observed.high_watermark("gateway.requests", 0, 40);
        observed.high_watermark("gateway.requests", 1, 7);
        observed.source_watermark("gateway.requests", 1_772_323_100_000_000);
        observed.watermark("a/b/c", 1_772_323_200_000_000);
        observed.commit(12, 0.25, 3, 4096);
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
            "sluice_open_windows 3",
            "sluice_commits_total 1",
            "sluice_rows_committed_total 12",
        ] {
            assert!(metrics.lines().any(|l| l == line), "missing `{line}` in\n{metrics}");
        }
    }
}
