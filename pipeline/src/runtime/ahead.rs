//! Decoding ahead of the run loop. Each batch read is decoded (and its archive rows
//! made) on Tokio's blocking pool while the loop feeds the queries with the batches
//! before it: decoding, most of a message's cost, takes the other cores instead of
//! waiting its turn on the loop's. Batches come out in the order they were read, so
//! no result depends on how far ahead decoding ran.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use tokio::task::JoinHandle;

use crate::decode::{Decoded, TopicDecoder};
use crate::error::{Error, Result};
use crate::sink::archive_batch;
use crate::source::RawBatch;

/// A batch as read, decoded, and its raw archive's rows when the topic is archived.
pub(super) struct Ready {
    pub raw: RawBatch,
    pub decoded: Decoded,
    pub archived: Option<RecordBatch>,
}

pub(super) struct DecodeAhead {
    in_flight: VecDeque<JoinHandle<Result<Ready>>>,
    /// Batches decoded at once: two per core, so that a core finishing one has the
    /// next while the loop is still reading (one per core measured 14 % slower on the
    /// one-query run, four per core 10 %).
    depth: usize,
}

impl DecodeAhead {
    pub(super) fn new() -> Self {
        let depth = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
        DecodeAhead { in_flight: VecDeque::with_capacity(depth), depth }
    }

    /// Starts decoding `raw` into the columns `wanted` marks (see
    /// [`TopicDecoder::decode_columns`]; and with `archive`, making its archive
    /// rows); it comes out of [`next`](Self::next) after the batches read before it.
    pub(super) fn start(&mut self, decoder: TopicDecoder, raw: RawBatch, wanted: Option<Arc<[bool]>>, archive: bool) {
        self.in_flight.push_back(tokio::task::spawn_blocking(move || {
            let decoded = decoder.decode_columns(&raw, wanted.as_deref())?;
            let archived = if archive { Some(archive_batch(&raw)?) } else { None };
            Ok(Ready { raw, decoded, archived })
        }));
    }

    /// As many batches as it decodes at once are in flight: the loop should take one
    /// before it reads another.
    pub(super) fn is_full(&self) -> bool {
        self.in_flight.len() >= self.depth
    }

    pub(super) fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// The oldest batch, once decoded; `None` when nothing is in flight.
    pub(super) async fn next(&mut self) -> Option<Result<Ready>> {
        let handle = self.in_flight.pop_front()?;
        Some(handle.await.unwrap_or_else(|e| Err(Error::Internal(format!("decoding a batch stopped: {e}")))))
    }
}
