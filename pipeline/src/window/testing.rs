//! Test input for window operators, and what their windows must hold: gateway
//! requests as JSON lines, run through a planned query's input plan into the rows
//! its aggregate folds, and per window the statistics computed from the requests
//! themselves, independently of the operators under test.

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow::array::{AsArray, RecordBatch, StructArray};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use datafusion::physical_plan::collect;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::catalog::TablePath;
use crate::decode::testing::{raw_payloads, registry};
use crate::decode::TopicDecoder;
use crate::plan::{plan, Shape, SqlFile, StreamingQuery, WindowSpec};

/// A request: its time (µs), service, duration and JSON line.
pub type Request = (i64, String, f64, String);

/// `sql` planned as the table `a/b/c`, with its window.
pub async fn windowed(sql: &str) -> (StreamingQuery, WindowSpec) {
    let file = SqlFile { path: PathBuf::from("t.sql"), table: TablePath::new("a/b/c").unwrap(), sql: sql.to_string() };
    let query = plan(&file, &crate::runtime::input_tables(&registry()), &Default::default()).await.unwrap();
    let Shape::Windowed { window, .. } = &query.shape else { panic!("not windowed: {sql}") };
    let spec = window.clone();
    (query, spec)
}

/// A request at `ts` (µs) from one of three services, its duration in quarters of
/// a millisecond (sums of which are exact in any order).
pub fn request(rng: &mut SmallRng, i: usize, ts: i64) -> Request {
    let service = ["auth", "devlab", "assessment"][rng.random_range(0..3)];
    let duration = f64::from(rng.random_range(1..500u32)) / 4.0;
    let iso = chrono::DateTime::from_timestamp_micros(ts).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let line = format!(
        r#"{{"request_id":"r{i}","correlation_id":"c","ts":"{iso}","service":"{service}","upstream_instance":"x","method":"GET","route":"/","status":200,"duration_ms":{duration},"auth_outcome":"ok","rate_limited":false,"bytes_out":1}}"#
    );
    (ts, service.to_string(), duration, line)
}

/// The rows `query`'s aggregate folds for `requests`, decoded and run through its
/// input plan.
pub async fn aggregate_input(query: &StreamingQuery, requests: &[Request]) -> Vec<RecordBatch> {
    let payloads: Vec<Option<&[u8]>> = requests.iter().map(|(.., line)| Some(line.as_bytes())).collect();
    let (batches, dead_letters) = aggregate_input_of(query, &payloads).await;
    assert_eq!(dead_letters, 0, "every test request decodes");
    batches
}

/// The rows `query`'s aggregate folds for gateway requests as the broker holds
/// them, and how many were dead letters.
pub async fn aggregate_input_of(query: &StreamingQuery, payloads: &[Option<&[u8]>]) -> (Vec<RecordBatch>, usize) {
    let Shape::Windowed { input, .. } = &query.shape else { panic!("not windowed") };
    let decoder = TopicDecoder::new(registry().get("gateway.requests").unwrap().clone());
    let decoded = decoder.decode(&raw_payloads("gateway.requests", payloads)).unwrap();
    query.inputs[0].1.fill(vec![decoded.batch]);
    (collect(input.clone(), query.task_ctx.clone()).await.unwrap(), decoded.dead_letters.len())
}

/// `SELECT <window>, service` and the statistics [`Stats`] holds, in its order.
pub fn stats_sql(window: &str) -> String {
    format!(
        "SELECT {window} AS window, service, count(*) AS n, count(DISTINCT duration_ms) AS distinct_durations, \
         percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95, sum(duration_ms) AS total, \
         max(duration_ms) AS worst, avg(duration_ms) AS mean \
         FROM gateway.requests GROUP BY window, service"
    )
}

/// One window's statistics of one service's request durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub n: i64,
    pub distinct: i64,
    pub p95: f64,
    pub total: f64,
    pub worst: f64,
    pub mean: f64,
}

/// Per window start and service.
pub type StatsByWindow = BTreeMap<(i64, String), Stats>;

/// What [`stats_sql`] must give for `requests` in windows `width` long, `slide`
/// apart, computed here from the requests.
pub fn expected_stats(requests: &[Request], width: i64, slide: i64) -> StatsByWindow {
    let mut durations: BTreeMap<(i64, String), Vec<f64>> = BTreeMap::new();
    for (ts, service, duration, _) in requests {
        let first = ts - ts.rem_euclid(slide) - (width - slide);
        for start in (first..=*ts).step_by(slide as usize) {
            durations.entry((start, service.clone())).or_default().push(*duration);
        }
    }
    durations
        .into_iter()
        .map(|(key, mut d)| {
            d.sort_by(f64::total_cmp);
            let mut distinct = d.clone();
            distinct.dedup();
            // Linear interpolation between the closest ranks, as Postgres's
            // percentile_cont, with the weight cut to 6 decimals as DataFusion 55 does
            // (`INTERPOLATION_PRECISION`, percentile_cont.rs).
            let rank = 0.95 * (d.len() - 1) as f64;
            let (low, high) = (d[rank.floor() as usize], d[rank.ceil() as usize]);
            let weight = ((rank - rank.floor()) * 1e6).floor() / 1e6;
            let total: f64 = d.iter().sum();
            let n = d.len() as i64;
            let stats = Stats { n, distinct: distinct.len() as i64, p95: low + (high - low) * weight, total, worst: d[d.len() - 1], mean: total / n as f64 };
            (key, stats)
        })
        .collect()
}

/// The rows of [`stats_sql`] windows, each window and service once.
pub fn emitted_stats<'a>(batches: impl IntoIterator<Item = &'a RecordBatch>) -> StatsByWindow {
    let mut got = StatsByWindow::new();
    for batch in batches {
        // The aggregate's rows, before the query names them: by position.
        let window: &StructArray = batch.column(0).as_struct();
        let starts = window.column(0).as_primitive::<TimestampMicrosecondType>();
        let service = batch.column(1).as_string::<i32>();
        let (n, distinct) = (batch.column(2).as_primitive::<Int64Type>(), batch.column(3).as_primitive::<Int64Type>());
        let [p95, total, worst, mean] = [4, 5, 6, 7].map(|i| batch.column(i).as_primitive::<Float64Type>());
        for r in 0..batch.num_rows() {
            let key = (starts.value(r), service.value(r).to_string());
            let stats = Stats { n: n.value(r), distinct: distinct.value(r), p95: p95.value(r), total: total.value(r), worst: worst.value(r), mean: mean.value(r) };
            assert!(got.insert(key.clone(), stats).is_none(), "{key:?} emitted twice");
        }
    }
    got
}

/// Every expected window emitted, and no other: counts and sums exact (durations
/// are quarters), the percentile and the mean within rounding.
pub fn assert_stats(got: &StatsByWindow, expected: &StatsByWindow, what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: windows");
    for (key, want) in expected {
        let have = got.get(key).unwrap_or_else(|| panic!("{what}: {key:?} never emitted"));
        assert_eq!((have.n, have.distinct, have.total, have.worst), (want.n, want.distinct, want.total, want.worst), "{what} {key:?}: count, distinct, sum, max");
        assert!((have.p95 - want.p95).abs() < 1e-9, "{what} {key:?}: p95 {} vs {}", have.p95, want.p95);
        assert!((have.mean - want.mean).abs() < 1e-9, "{what} {key:?}: mean {} vs {}", have.mean, want.mean);
    }
}
