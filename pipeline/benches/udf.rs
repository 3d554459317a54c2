//! The per-row cost of calling a UDF through the plugin ABI, against the same
//! expression in plain SQL: `SELECT add_one(x)` against `SELECT x + 1.0` over the
//! same in-memory Float64 batches, at several batch sizes.
//!
//! `cargo bench -p sluice --bench udf` (builds `benches/udfs/add_one.rs` first;
//! the first UDF build on a machine takes minutes).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sluice::udf::{build, load_dir, Udfs};

const ROWS: usize = 8_388_608;

async fn time(ctx: &SessionContext, sql: &str) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let started = Instant::now();
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), ROWS);
        best = best.min(elapsed);
    }
    best
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let files = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/udfs")).unwrap();
    let progress = indicatif::MultiProgress::new();
    let udfs = Udfs::build_and_load(&files, &build::cache_dir(), &progress).unwrap();
    println!("{:>10} {:>14} {:>14} {:>8} {:>16}", "batch", "plain ns/row", "udf ns/row", "ratio", "overhead ns/row");
    for batch_size in [1024, 8192, 65536] {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, false)]));
        let batches: Vec<RecordBatch> = (0..ROWS / batch_size)
            .map(|b| {
                let values = Float64Array::from_iter_values((0..batch_size).map(|i| (b * batch_size + i) as f64 * 0.5));
                RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap()
            })
            .collect();
        let ctx = SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_target_partitions(1).with_batch_size(batch_size));
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![batches]).unwrap())).unwrap();
        udfs.register(&ctx);
        let plain = time(&ctx, "SELECT x + 1.0 AS y FROM t").await;
        let udf = time(&ctx, "SELECT add_one(x) AS y FROM t").await;
        let per_row = |d: Duration| d.as_nanos() as f64 / ROWS as f64;
        println!(
            "{batch_size:>10} {:>14.2} {:>14.2} {:>8.2} {:>16.2}",
            per_row(plain),
            per_row(udf),
            per_row(udf) / per_row(plain),
            per_row(udf) - per_row(plain)
        );
    }
}
