//! The merging side of a repartitioned query: one repartition partition's
//! [`Partial`]s, from every upstream, folded into windows that close once every
//! upstream's watermark has passed their end.
//!
//! An upstream's messages are decided in the order they came: a message whose
//! epoch the upstream's latest manifest has not committed yet holds back the ones
//! behind it (as a `read_committed` consumer stops at an open transaction); one
//! sent by the run that committed its epoch is folded; one sent by another run
//! (an attempt that died, a zombie) is dropped, as is a part of an epoch already
//! folded (a copy sent again). The run that commits an epoch has sent its
//! messages, part after part, before its manifest, so they come in order and
//! before any of a later epoch's.

use std::collections::VecDeque;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;

use super::Partial;
use crate::checkpoint::{Checkpoint, MergeProgress, UpstreamMark, MAX_COMMITTERS};
use crate::error::{Error, Result};
use crate::plan::WindowSpec;
use crate::window::Windows;

/// The windows of one repartition partition, and what every upstream sent it.
pub struct Merger {
    windows: Windows,
    /// Pane length (µs): a pane ends a slide after its start.
    slide: i64,
    /// The plan's fingerprint: partials of another are refused.
    plan: String,
    upstreams: Vec<FromUpstream>,
    /// The offset after the last message received.
    next_offset: i64,
}

/// What one upstream sent: how far it was folded, and what waits.
struct FromUpstream {
    mark: UpstreamMark,
    /// Received and not decided yet, with their offsets, in the order they came.
    waiting: VecDeque<(i64, Partial)>,
}

impl Merger {
    /// A merger of `upstreams` upstreams' partials of the plan with fingerprint
    /// `plan` and window `spec`, from the partition's start.
    pub fn new(spec: WindowSpec, plan: &str, upstreams: u32) -> Self {
        let fresh = || FromUpstream { mark: UpstreamMark { folded: 0, watermark: i64::MIN, parts: None }, waiting: VecDeque::new() };
        let upstreams = (0..upstreams).map(|_| fresh()).collect();
        Merger { slide: spec.slide, windows: Windows::new(spec), plan: plan.to_string(), upstreams, next_offset: 0 }
    }

    /// A merger from its checkpoint: `progress` and the windows' state rows.
    pub fn resume(spec: WindowSpec, plan: &str, progress: &MergeProgress, windows: Option<&RecordBatch>) -> Result<Self> {
        let mut merger = Merger::new(spec, plan, progress.upstreams.len() as u32);
        for (upstream, mark) in merger.upstreams.iter_mut().zip(&progress.upstreams) {
            upstream.mark = *mark;
        }
        merger.next_offset = progress.resume_from;
        merger.windows.resume_after(merger.watermark());
        if let Some(rows) = windows {
            merger.windows.restore(rows)?;
        }
        Ok(merger)
    }

    /// Takes the message read at `offset`.
    pub fn receive(&mut self, offset: i64, partial: Partial) -> Result<()> {
        if partial.plan != self.plan {
            return Err(Error::Input(format!(
                "offset {offset}: a partial of upstream {}'s epoch {} was computed by another plan ({}, this one is {}): \
                 every instance must run the same SQL",
                partial.upstream, partial.epoch, partial.plan, self.plan
            )));
        }
        let count = self.upstreams.len();
        let upstream = self.upstreams.get_mut(partial.upstream as usize).ok_or_else(|| {
            Error::Input(format!(
                "offset {offset}: a partial from upstream {} of {count}: was the group's shard count changed?",
                partial.upstream
            ))
        })?;
        self.next_offset = self.next_offset.max(offset.saturating_add(1));
        if !upstream.mark.has(partial.epoch, partial.part) {
            upstream.waiting.push_back((offset, partial));
        }
        Ok(())
    }

    /// The upstreams with messages waiting for [`decide`](Self::decide).
    pub fn waiting(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.upstreams.len() as u32).filter(|u| !self.upstreams[*u as usize].waiting.is_empty())
    }

    /// Folds or drops `upstream`'s waiting messages as its latest `manifest` says
    /// who committed their epochs, up to the first epoch it has not committed yet.
    /// Returns how many were folded.
    pub fn decide(&mut self, upstream: u32, manifest: &Checkpoint) -> Result<usize> {
        let index = upstream as usize;
        if index >= self.upstreams.len() {
            return Err(Error::Internal(format!("upstream {upstream} of {}", self.upstreams.len())));
        }
        let mut folded = 0;
        while let Some((_, partial)) = self.upstreams[index].waiting.front() {
            let mark = self.upstreams[index].mark;
            if mark.has(partial.epoch, partial.part) {
                self.upstreams[index].waiting.pop_front();
                continue;
            }
            if partial.epoch > manifest.epoch {
                break;
            }
            let committer = manifest.committer_of(partial.epoch).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "upstream {upstream}'s manifest of epoch {} no longer says which run committed epoch {}: \
                     the merge fell more than {MAX_COMMITTERS} upstream restarts behind",
                    manifest.epoch, partial.epoch
                ))
            })?;
            let ours = committer == partial.writer;
            let Some((_, partial)) = self.upstreams[index].waiting.pop_front() else { break };
            if !ours {
                tracing::debug!(upstream, epoch = partial.epoch, writer = partial.writer, committer, "dropped a partial of a run that did not commit its epoch");
                continue;
            }
            // The run that committed the epoch sent its parts in order, one after another.
            let due = match mark.parts {
                Some((next, parts)) if partial.epoch == mark.folded => (next, parts),
                _ => (0, partial.parts),
            };
            if (partial.part, partial.parts) != due {
                return Err(Error::Internal(format!(
                    "upstream {upstream}'s epoch {}: part {} of {} came where part {} of {} was due",
                    partial.epoch, partial.part, partial.parts, due.0, due.1
                )));
            }
            if let Some(states) = &partial.states {
                self.refuse_passed_panes(&partial, states)?;
                self.windows.restore(states)?;
            }
            // The watermark's promise holds once every part is in.
            let last = partial.part + 1 >= partial.parts;
            self.upstreams[index].mark = UpstreamMark {
                folded: partial.epoch,
                watermark: if last { mark.watermark.max(partial.watermark) } else { mark.watermark },
                parts: (!last).then_some((partial.part + 1, partial.parts)),
            };
            folded += 1;
        }
        Ok(folded)
    }

    /// A pane every upstream had passed would bring back a window emitted without
    /// it: an upstream that broke its marker's promise is refused, not folded.
    fn refuse_passed_panes(&self, partial: &Partial, states: &RecordBatch) -> Result<()> {
        let passed = self.watermark();
        let starts = states.column(0).as_primitive_opt::<Int64Type>().ok_or_else(|| Error::Internal("a partial's window_start is not Int64".into()))?;
        match arrow::compute::min(starts).filter(|start| start.saturating_add(self.slide) <= passed) {
            Some(first) => Err(Error::Internal(format!(
                "upstream {}'s epoch {} sent a pane starting at {first}, which every upstream had passed \
                 (watermark {passed}): its windows were emitted without it",
                partial.upstream, partial.epoch
            ))),
            None => Ok(()),
        }
    }

    /// The watermark of the merged windows: the least of the upstreams'.
    pub fn watermark(&self) -> i64 {
        self.upstreams.iter().map(|u| u.mark.watermark).min().unwrap_or(i64::MIN)
    }

    /// The rows of every window every upstream's watermark has passed.
    pub fn close(&mut self) -> Result<Option<RecordBatch>> {
        self.windows.close_until(self.watermark())
    }

    pub fn open_windows(&self) -> usize {
        self.windows.open_windows()
    }

    /// The merger's state for a checkpoint: the open windows' state rows, and its
    /// progress.
    pub fn snapshot(&mut self) -> Result<(Option<RecordBatch>, MergeProgress)> {
        let resume_from = self.upstreams.iter().filter_map(|u| u.waiting.front().map(|(offset, _)| *offset)).min().unwrap_or(self.next_offset);
        let upstreams = self.upstreams.iter().map(|u| u.mark).collect();
        Ok((self.windows.snapshot()?, MergeProgress { resume_from, upstreams }))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::checkpoint::Committer;
    use crate::plan::StreamingQuery;
    use crate::repartition::Upstream;
    use crate::window::testing::{aggregate_input, assert_stats, emitted_stats, expected_stats, request, stats_sql, windowed, Request};

    const SECOND: i64 = 1_000_000;
    const MINUTE: i64 = 60 * SECOND;
    const T0: i64 = 1_772_323_200_000_000;
    const UPSTREAMS: usize = 3;
    const PARTITIONS: usize = 2;
    /// How far an upstream's watermark trails the latest time it read. Its
    /// requests come at most 10 s out of order, so none is late.
    const DELAY: i64 = 20 * SECOND;
    /// The plan's fingerprint, as the upstreams and the mergers know it.
    const PLAN: &str = "plan-1";

    /// One upstream: its requests, and where its last committed epoch left it.
    struct Shard {
        requests: Vec<Request>,
        /// Requests before this are in committed epochs.
        read: usize,
        windows: Option<RecordBatch>,
        latest: i64,
        sent: i64,
        /// Its latest manifest, as the merging side reads it.
        manifest: Checkpoint,
        /// The run now running; a new one after each death.
        run: usize,
        /// An epoch sent and not committed yet.
        attempt: Option<Attempt>,
    }

    struct Attempt {
        read: usize,
        windows: Option<RecordBatch>,
        latest: i64,
        sent: i64,
        /// Its partials were held back, to be sent after others took over: it dies.
        zombie: bool,
    }

    /// A merger with its checkpoint, as its pipeline keeps them.
    struct Merging {
        merger: Merger,
        /// How far it read its partition.
        read: usize,
        checkpoint: Option<(Option<RecordBatch>, MergeProgress)>,
        /// The rows committed at its checkpoints, and those emitted since.
        committed: Vec<RecordBatch>,
        pending: Vec<RecordBatch>,
    }

    impl Merging {
        fn step(&mut self, log: &[(i64, Partial)], upstreams: &[Shard], rng: &mut SmallRng) {
            let until = (self.read + rng.random_range(0..8)).min(log.len());
            for (offset, partial) in &log[self.read..until] {
                self.merger.receive(*offset, partial.clone()).unwrap();
            }
            self.read = until;
            let waiting: Vec<u32> = self.merger.waiting().collect();
            for u in waiting {
                self.merger.decide(u, &upstreams[u as usize].manifest).unwrap();
            }
            self.pending.extend(self.merger.close().unwrap());
        }

        fn checkpoint(&mut self) {
            self.checkpoint = Some(self.merger.snapshot().unwrap());
            self.committed.append(&mut self.pending);
        }

        /// A crash: what came after the checkpoint is lost, and read again.
        fn restart(&mut self, spec: &WindowSpec) {
            self.pending.clear();
            (self.merger, self.read) = match &self.checkpoint {
                Some((windows, progress)) => (Merger::resume(spec.clone(), PLAN, progress, windows.as_ref()).unwrap(), progress.resume_from as usize),
                None => (Merger::new(spec.clone(), PLAN, UPSTREAMS as u32), 0),
            };
        }
    }

    /// Runs an epoch of `upstream`: reads on from its last commit, folds, sends the
    /// passed panes to every partition (into `logs`, or held back as a zombie's),
    /// and leaves the epoch to be committed or to die.
    async fn send_epoch(
        index: usize,
        upstream: &mut Shard,
        query: &StreamingQuery,
        spec: &WindowSpec,
        logs: &mut [Vec<(i64, Partial)>],
        held: &mut Vec<(usize, Partial)>,
        rng: &mut SmallRng,
    ) {
        let mut windows = Windows::new(spec.clone());
        if let Some(rows) = &upstream.windows {
            windows.restore(rows).unwrap();
        }
        let until = (upstream.read + rng.random_range(1..200)).min(upstream.requests.len());
        let mut latest = upstream.latest;
        let chunk = &upstream.requests[upstream.read..until];
        for (ts, ..) in chunk {
            assert!(windows.late_from(*ts) > latest - DELAY, "the test's requests must not be late");
            latest = latest.max(*ts);
        }
        for batch in aggregate_input(query, chunk).await {
            windows.update(&batch).unwrap();
        }
        let watermark = if until == upstream.requests.len() { i64::MAX } else { latest - DELAY };
        // Half the epochs send their states in parts of a few rows.
        let part_bytes = if rng.random_bool(0.5) { 2_000 } else { crate::repartition::PART_BYTES };
        let mut sender = Upstream::new(index as u32, PARTITIONS as u32, spec, PLAN, upstream.sent).with_part_bytes(part_bytes);
        let writer = format!("u{index}-run{}", upstream.run);
        let partials = sender.partials(&mut windows, watermark, upstream.manifest.epoch + 1, &writer).unwrap();
        // A zombie's partials are held back; a produce tried again sends them twice.
        let (zombie, copies) = (rng.random_bool(0.15), if rng.random_bool(0.1) { 2 } else { 1 });
        for (p, partial) in partials {
            for _ in 0..copies {
                if zombie {
                    held.push((p as usize, partial.clone()));
                } else {
                    let offset = logs[p as usize].len() as i64;
                    logs[p as usize].push((offset, partial.clone()));
                }
            }
        }
        upstream.attempt = Some(Attempt { read: until, windows: windows.snapshot().unwrap(), latest, sent: sender.sent(), zombie });
    }

    /// Commits the epoch sent, or lets it die: another run then reads it again,
    /// in other batches.
    fn end_epoch(index: usize, upstream: &mut Shard, dies: bool) {
        let Some(Attempt { read, windows, latest, sent, zombie }) = upstream.attempt.take() else { return };
        if dies || zombie {
            upstream.run += 1;
            return;
        }
        let epoch = upstream.manifest.epoch + 1;
        let mut committers = upstream.manifest.committers.clone();
        Committer::record(&mut committers, epoch, &format!("u{index}-run{}", upstream.run));
        upstream.manifest = Checkpoint { epoch, committers, ..Default::default() };
        (upstream.read, upstream.windows, upstream.latest, upstream.sent) = (read, windows, latest, sent);
    }

    /// States of another plan may have the same types and mean something else
    /// (here a `min` for a `max`): the merger refuses them, naming both plans.
    #[tokio::test]
    async fn a_partial_of_another_plan_is_refused_not_folded() {
        let select = |aggregate: &str| {
            format!("SELECT tumble(interval '1 minute') AS window, service, {aggregate}(duration_ms) AS d FROM gateway.requests GROUP BY window, service")
        };
        let ((max, max_spec), (min, min_spec)) = (windowed(&select("max")).await, windowed(&select("min")).await);
        assert_ne!(max.fingerprint, min.fingerprint);
        let mut rng = SmallRng::seed_from_u64(3);
        let requests: Vec<Request> = (0..50).map(|i| request(&mut rng, i, T0 + i as i64 * SECOND)).collect();
        let mut windows = Windows::new(min_spec);
        for batch in aggregate_input(&min, &requests).await {
            windows.update(&batch).unwrap();
        }
        let mut upstream = Upstream::new(0, 1, &max_spec, &min.fingerprint, i64::MIN);
        let (_, partial) = upstream.partials(&mut windows, i64::MAX, 1, "run").unwrap().pop().unwrap();
        assert!(partial.states.is_some());
        let mut merger = Merger::new(max_spec, &max.fingerprint, 1);
        let refused = merger.receive(7, partial).unwrap_err().to_string();
        assert!(refused.contains("offset 7") && refused.contains(&min.fingerprint) && refused.contains(&max.fingerprint), "{refused}");
        assert_eq!(merger.waiting().count(), 0, "nothing of it waits to be folded");
    }

    /// An upstream that sends a pane after its marker passed the pane's end would
    /// have the merger emit the pane's windows twice: refused, named.
    #[tokio::test]
    async fn a_pane_after_its_marker_is_refused() {
        let (query, spec) = windowed("SELECT tumble(interval '1 minute') AS window, count(*) AS n FROM gateway.requests GROUP BY window").await;
        let mut rng = SmallRng::seed_from_u64(4);
        let requests: Vec<Request> = (0..20).map(|i| request(&mut rng, i, T0 + i as i64 * SECOND)).collect();
        let partial = |epoch: i64, watermark: i64| {
            let (spec, query, requests) = (spec.clone(), &query, &requests);
            async move {
                let mut windows = Windows::new(spec.clone());
                for batch in aggregate_input(query, requests).await {
                    windows.update(&batch).unwrap();
                }
                let mut upstream = Upstream::new(0, 1, &spec, PLAN, i64::MIN);
                upstream.partials(&mut windows, watermark, epoch, "run").unwrap().pop().unwrap().1
            }
        };
        let mut committers = Vec::new();
        Committer::record(&mut committers, 1, "run");
        let manifest = Checkpoint { epoch: 2, committers, ..Default::default() };
        let mut merger = Merger::new(spec.clone(), PLAN, 1);
        merger.receive(0, partial(1, T0 + 5 * MINUTE).await).unwrap();
        merger.decide(0, &manifest).unwrap();
        assert_eq!(merger.close().unwrap().map(|rows| rows.num_rows()), Some(1));
        // The same minute again, in the next epoch.
        merger.receive(1, partial(2, T0 + 6 * MINUTE).await).unwrap();
        let refused = merger.decide(0, &manifest).unwrap_err().to_string();
        assert!(refused.contains("epoch 2") && refused.contains(&format!("starting at {T0}")), "{refused}");
        assert_eq!(merger.close().unwrap(), None, "nothing emitted twice");
    }

    /// Issue 20, item 3, short of Kafka: three upstreams read their own requests,
    /// in epochs of random size; some epochs die after sending their partials
    /// (another run then reads them again, in other batches), some are sent by a
    /// zombie after the run that took over, some twice; two mergers read their partitions in
    /// random steps, checkpoint and crash. Every window must come out exactly
    /// once, with the rows computed here from the requests, percentiles and
    /// distinct counts included.
    #[tokio::test]
    async fn partials_through_a_partitioned_log_give_every_window_once_whatever_dies() {
        for (seed, window, width, slide) in [
            (1, "tumble(interval '1 minute')", MINUTE, MINUTE),
            (2, "hop(interval '1 minute', interval '3 minutes')", 3 * MINUTE, MINUTE),
            (3, "tumble(interval '1 minute')", MINUTE, MINUTE),
        ] {
            let (query, spec) = windowed(&stats_sql(window)).await;
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut upstreams: Vec<Shard> = (0..UPSTREAMS)
                .map(|u| {
                    // 2,000 requests over 20 minutes, up to 10 s out of order.
                    let requests = (0..2000)
                        .map(|i| {
                            let ts = T0 + i as i64 * 600_000 + rng.random_range(0..10 * SECOND);
                            request(&mut rng, u * 10_000 + i, ts)
                        })
                        .collect();
                    let manifest = Checkpoint::default();
                    Shard { requests, read: 0, windows: None, latest: i64::MIN + DELAY, sent: i64::MIN, manifest, run: 0, attempt: None }
                })
                .collect();
            let mut logs: Vec<Vec<(i64, Partial)>> = vec![Vec::new(); PARTITIONS];
            let mut held: Vec<(usize, Partial)> = Vec::new();
            let new_merging = || Merging { merger: Merger::new(spec.clone(), PLAN, UPSTREAMS as u32), read: 0, checkpoint: None, committed: Vec::new(), pending: Vec::new() };
            let mut mergers: Vec<Merging> = (0..PARTITIONS).map(|_| new_merging()).collect();
            let (mut deaths, mut zombies_sent) = (0, 0);

            let all_committed = |upstreams: &[Shard]| upstreams.iter().all(|u| u.read == u.requests.len() && u.attempt.is_none());
            while !all_committed(&upstreams) || !held.is_empty() {
                match rng.random_range(0..10) {
                    0..=3 => {
                        let u = rng.random_range(0..UPSTREAMS);
                        let upstream = &mut upstreams[u];
                        if upstream.attempt.is_none() && upstream.read < upstream.requests.len() {
                            send_epoch(u, upstream, &query, &spec, &mut logs, &mut held, &mut rng).await;
                        } else {
                            let dies = rng.random_bool(0.2);
                            deaths += usize::from(upstream.attempt.as_ref().is_some_and(|a| dies || a.zombie));
                            end_epoch(u, upstream, dies);
                        }
                    }
                    4 if !held.is_empty() => {
                        // A zombie wakes up and sends what it held.
                        let (p, partial) = held.remove(0);
                        let offset = logs[p].len() as i64;
                        logs[p].push((offset, partial));
                        zombies_sent += 1;
                    }
                    5 => {
                        let m = &mut mergers[rng.random_range(0..PARTITIONS)];
                        if rng.random_bool(0.5) {
                            m.checkpoint();
                        } else {
                            m.restart(&spec);
                        }
                    }
                    _ => {
                        let p = rng.random_range(0..PARTITIONS);
                        mergers[p].step(&logs[p], &upstreams, &mut rng);
                    }
                }
            }
            for (p, m) in mergers.iter_mut().enumerate() {
                while m.read < logs[p].len() || m.merger.waiting().next().is_some() {
                    m.step(&logs[p], &upstreams, &mut rng);
                }
                m.checkpoint();
                assert_eq!(m.merger.watermark(), i64::MAX, "partition {p}: every upstream's last marker folded");
                assert_eq!(m.merger.open_windows(), 0, "partition {p}");
            }
            assert!(deaths > 3 && zombies_sent > 3, "{window}: the run must exercise deaths ({deaths}) and zombies ({zombies_sent})");
            let parts = logs.iter().flatten().filter(|(_, partial)| partial.parts > 2).count();
            assert!(parts > 20, "{window}: the run must send epochs in parts ({parts} partials of 3 or more parts)");

            let all: Vec<Request> = upstreams.iter().flat_map(|u| u.requests.clone()).collect();
            let committed = emitted_stats(mergers.iter().flat_map(|m| &m.committed));
            assert_stats(&committed, &expected_stats(&all, width, slide), window);
        }
    }
}
