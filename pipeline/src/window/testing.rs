//! Test input for window operators: gateway requests as JSON lines, run through a
//! planned query's input plan into the rows its aggregate folds.

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use datafusion::physical_plan::collect;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::catalog::TablePath;
use crate::decode::TopicDecoder;
use crate::plan::{plan, Shape, SqlFile, StreamingQuery, WindowSpec};
use crate::schema::SchemaRegistry;
use crate::source::{PartitionId, RawBatch, RawMessage};

/// A request: its time (µs), service, duration and JSON line.
pub type Request = (i64, String, f64, String);

pub fn registry() -> SchemaRegistry {
    SchemaRegistry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")).unwrap()
}

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
    let lines: Vec<&[u8]> = requests.iter().map(|(.., line)| line.as_bytes()).collect();
    let (batches, dead_letters) = aggregate_input_of(query, &lines).await;
    assert_eq!(dead_letters, 0, "every test request decodes");
    batches
}

/// The rows `query`'s aggregate folds for gateway requests as the broker holds
/// them, and how many were dead letters.
pub async fn aggregate_input_of(query: &StreamingQuery, payloads: &[&[u8]]) -> (Vec<RecordBatch>, usize) {
    let Shape::Windowed { input, .. } = &query.shape else { panic!("not windowed") };
    let decoder = TopicDecoder::new(registry().get("gateway.requests").unwrap().clone());
    let (mut data, mut messages) = (Vec::new(), Vec::new());
    for (i, payload) in payloads.iter().enumerate() {
        let from = data.len();
        data.extend_from_slice(payload);
        messages.push(RawMessage { offset: i as i64, payload: Some(from..data.len()), timestamp: None });
    }
    let partition = PartitionId { topic: "gateway.requests".into(), partition: 0 };
    let raw = RawBatch { partition, ingested_at: 0, data, messages, next_offset: payloads.len() as i64, end_of_partition: false };
    let decoded = decoder.decode(&raw).unwrap();
    query.inputs[0].1.fill(vec![decoded.batch]);
    (collect(input.clone(), query.task_ctx.clone()).await.unwrap(), decoded.dead_letters.len())
}
