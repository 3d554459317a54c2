//! Backfill: a SQL file whose table is new to a lake that already has history is
//! computed from the raw archive up to the live positions, then joins the live
//! stream, so it holds what it would hold had it been there from the start.
//!
//! - The boundary is the positions of the last epoch: the archive holds exactly the
//!   messages before them (it is committed in the same epochs), and the live stream
//!   goes on from them. No message is missed or counted twice.
//! - The messages are replayed in the order they were first read (by `_ingested_at`,
//!   then topic, partition and offset), through a watermark of their own, so the same
//!   events are late as were late then.
//! - It runs between two epochs, before the next message is read, and its rows land
//!   in the next commit; a kill before that commit starts it again (nothing of it was
//!   committed). The other tables wait meanwhile.
//! - A query that joins mirrors is not backfilled (the mirrors' past is not kept that
//!   far), nor one over `sluice.metrics` (not archived): they start from the next
//!   message on, and the run says so.
//! - Progress: in the log every few seconds, and in `/metrics`
//!   (`sluice_backfill_messages` of `sluice_backfill_messages_to_replay`).

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};
use futures::StreamExt;

use super::{event_times, Pipeline, RunningQuery};
use crate::catalog::Lake;
use crate::error::{Error, Result};
use crate::plan::Shape;
use crate::sink::LateEvents;
use crate::source::{PartitionId, RawBatch, RawMessage};
use crate::time::Watermarks;

/// Messages per replayed batch, at most.
const BATCH: usize = 8192;
/// How often progress is logged.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `query` can be computed from the archive: it reads only archived topics
/// and joins no mirror.
pub(super) fn can_backfill(query: &crate::plan::StreamingQuery, archives: &std::collections::HashMap<Arc<str>, crate::catalog::TablePath>) -> bool {
    !matches!(query.shape, Shape::OverMirrors { .. }) && query.mirrors.is_empty() && query.topics().all(|t| archives.contains_key(t))
}

impl Pipeline {
    /// Replays the archive into `q`, a query whose table is new to the lake;
    /// returns the messages replayed (0 if it cannot be backfilled).
    pub(super) async fn backfill(&mut self, q: &mut RunningQuery, lake: &Lake) -> Result<u64> {
        let table = q.query.table.sql_name();
        if matches!(q.query.shape, Shape::OverMirrors { .. }) {
            return Ok(0);
        }
        if !q.query.mirrors.is_empty() {
            tracing::warn!(table, "a new table that joins mirrors is not backfilled: it is computed from the next message on");
            return Ok(0);
        }
        let mut sources = Vec::new();
        for topic in q.query.topics() {
            match self.archives.get(topic) {
                Some(archive) => sources.push((topic.clone(), archive.sql_name())),
                None => {
                    tracing::warn!(table, topic = %topic, "a new table over a topic without an archive is not backfilled: it is computed from the next message on");
                    return Ok(0);
                }
            }
        }
        let archives: Vec<_> = lake.tables().await?.into_iter().filter(|t| sources.iter().any(|(_, a)| *a == t.sql_name())).collect();
        if archives.len() < sources.len() {
            tracing::warn!(table, "the lake has no archive of its topics yet (it was written without one): the new table is computed from the next message on");
            return Ok(0);
        }
        // The archives alone: loading every table of the lake is not needed.
        let ctx = lake.session_of(&archives).await?;
        // Only what the last epoch read: the live stream goes on from there.
        let branches: Vec<String> = sources
            .iter()
            .map(|(topic, archive)| {
                let before: Vec<String> = self
                    .positions
                    .iter()
                    .filter(|(id, _)| id.topic == *topic)
                    .map(|(id, next)| format!("(_partition = {} AND _offset < {next})", id.partition))
                    .collect();
                let within = if before.is_empty() { "false".to_string() } else { before.join(" OR ") };
                format!("SELECT _topic, _partition, _offset, _ingested_at, value FROM {archive} WHERE {within}")
            })
            .collect();
        let union = branches.join(" UNION ALL ");
        let query_err = |e: datafusion::error::DataFusionError| Error::Query(format!("backfill of {table}: {}", e.strip_backtrace()));
        let total = count(&ctx, &union).await.map_err(query_err)?;
        if total == 0 {
            return Ok(0);
        }
        tracing::info!(table, messages = total, "backfilling a new table from the archive");
        self.options.observed.backfill(&table, 0, total);
        let ordered = format!("SELECT * FROM ({union}) ORDER BY _ingested_at, _topic, _partition, _offset");
        let mut rows = ctx.sql(&ordered).await.map_err(query_err)?.execute_stream().await.map_err(query_err)?;

        // Every partition read so far holds the watermark back from the start, as
        // in the run that first read them.
        let mut marks = Watermarks::new(self.options.idle_timeout);
        for id in self.positions.keys().filter(|id| sources.iter().any(|(topic, _)| *topic == id.topic)) {
            let delay = self.decoders.get(&id.topic).map_or(0, |d| d.schema().out_of_orderness.as_micros() as i64);
            marks.add_partition(id.clone(), delay);
        }
        let (started, mut logged, mut done) = (Instant::now(), Instant::now(), 0u64);
        while let Some(batch) = rows.next().await {
            let batch = batch.map_err(query_err)?;
            for raw in raw_batches(&batch)? {
                done += raw.messages.len() as u64;
                self.replay(q, &raw, &mut marks).await?;
            }
            self.options.observed.backfill(&table, done, total);
            if logged.elapsed() >= PROGRESS_EVERY {
                logged = Instant::now();
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let left = (total.saturating_sub(done)) as f64 / rate.max(1.0);
                tracing::info!(table, done, total, share = format!("{:.0}%", 100.0 * done as f64 / total as f64), events_per_second = rate as u64, seconds_left = left as u64, "backfilling");
            }
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(table, messages = done, seconds = format!("{secs:.1}"), "backfilled: the table joins the live stream");
        Ok(done)
    }

    /// One archived batch through `q` alone, with the backfill's own watermarks.
    async fn replay(&mut self, q: &mut RunningQuery, raw: &RawBatch, marks: &mut Watermarks) -> Result<()> {
        let Some(decoder) = self.decoders.get(&raw.partition.topic) else { return Ok(()) };
        // Bad messages went to dead_letters when first read.
        let decoded = decoder.decode(raw)?;
        let batch = decoded.batch;
        let ts = event_times(&batch)?.clone();
        let mut late = LateEvents::default();
        let mut late_any = vec![false; batch.num_rows()];
        if batch.num_rows() > 0 {
            let lateness = super::Lateness { events: &mut late, late_any: &mut late_any };
            let sink = self.lake.sink(&q.query.table)?;
            q.feed(&raw.partition, &batch, marks, &mut self.row_watermarks, Some(lateness), sink).await?;
        }
        if !late.is_empty() {
            let rows = late.to_batch(&batch)?;
            self.lake.sink(&self.late_events.clone())?.push_table_rows(rows);
        }
        marks.observe(&raw.partition, arrow::compute::max(&ts), false);
        let sink = self.lake.sink(&q.query.table)?;
        q.close(marks, &self.mirrors, sink).await?;
        Ok(())
    }
}

async fn count(ctx: &datafusion::prelude::SessionContext, union: &str) -> datafusion::error::Result<u64> {
    let batches = ctx.sql(&format!("SELECT count(*) FROM ({union})")).await?.collect().await?;
    Ok(batches.first().and_then(|b| b.column(0).as_primitive_opt::<Int64Type>().map(|c| c.value(0))).unwrap_or(0) as u64)
}

/// Archive rows (ordered) as the raw batches they were read in: a run of rows
/// of one partition read at one instant.
fn raw_batches(rows: &RecordBatch) -> Result<Vec<RawBatch>> {
    let column = |name: &str| rows.column_by_name(name).ok_or_else(|| Error::Internal(format!("the archive has no `{name}`")));
    let topics = arrow::compute::cast(column("_topic")?, &arrow::datatypes::DataType::Utf8)?;
    let topics = topics.as_string::<i32>();
    let partitions = column("_partition")?.as_primitive::<Int32Type>();
    let offsets = column("_offset")?.as_primitive::<Int64Type>();
    let read_at = column("_ingested_at")?.as_primitive::<TimestampMicrosecondType>();
    let values = arrow::compute::cast(column("value")?, &arrow::datatypes::DataType::Binary)?;
    let values = values.as_binary::<i32>();
    let mut batches: Vec<RawBatch> = Vec::new();
    for row in 0..rows.num_rows() {
        let (topic, partition, ingested_at) = (topics.value(row), partitions.value(row), read_at.value(row));
        let same = batches.last().is_some_and(|b| {
            b.ingested_at == ingested_at && b.partition.partition == partition && &*b.partition.topic == topic && b.messages.len() < BATCH
        });
        if !same {
            let partition = PartitionId { topic: Arc::from(topic), partition };
            batches.push(RawBatch { partition, ingested_at, data: Vec::new(), messages: Vec::new(), next_offset: 0, end_of_partition: false });
        }
        let Some(batch) = batches.last_mut() else { continue };
        let offset = offsets.value(row);
        let payload = match values.is_null(row) {
            true => None,
            false => {
                let start = batch.data.len();
                batch.data.extend_from_slice(values.value(row));
                Some(start..batch.data.len())
            }
        };
        batch.messages.push(RawMessage { offset, payload, timestamp: None });
        batch.next_offset = offset + 1;
    }
    Ok(batches)
}
