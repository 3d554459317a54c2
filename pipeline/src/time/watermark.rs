//! Watermarks (contract §2). A partition's watermark is the largest event time it has
//! delivered minus its topic's allowed out-of-orderness; a query's is the minimum over
//! the partitions of the topics it reads that are not idle (nothing delivered for the
//! idle timeout, in processing time): a silent partition must not hold the others'
//! windows forever. Watermarks are µs since the epoch, with `i64::MIN` for "nothing
//! seen yet" and `i64::MAX` for "finished".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::source::PartitionId;

/// Nothing has been seen: no window may close.
pub const UNKNOWN: i64 = i64::MIN;
/// The partition ended: it holds nothing back.
pub const FINISHED: i64 = i64::MAX;

#[derive(Debug, Clone)]
struct Partition {
    max_ts: Option<i64>,
    delay: i64,
    finished: bool,
    /// When the partition last delivered a batch (or was first seen).
    last_active: Instant,
}

impl Partition {
    fn watermark(&self) -> i64 {
        match (self.finished, self.max_ts) {
            (true, _) => FINISHED,
            (false, Some(ts)) => ts.saturating_sub(self.delay),
            (false, None) => UNKNOWN,
        }
    }
}

/// A partition's event-time progress, as a checkpoint keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionMark {
    pub topic: String,
    pub partition: i32,
    pub max_ts: Option<i64>,
    pub finished: bool,
}

/// Event-time progress of every partition the pipeline reads.
#[derive(Debug, Clone)]
pub struct Watermarks {
    partitions: BTreeMap<PartitionId, Partition>,
    idle_timeout: Duration,
}

/// Contract §2's default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Watermarks {
    fn default() -> Self {
        Watermarks::new(DEFAULT_IDLE_TIMEOUT)
    }
}

impl Watermarks {
    pub fn new(idle_timeout: Duration) -> Self {
        Watermarks { partitions: BTreeMap::new(), idle_timeout }
    }

    /// Starts tracking a partition (a no-op if it is known); `delay` is µs.
    pub fn add_partition(&mut self, id: PartitionId, delay: i64) {
        self.partitions.entry(id).or_insert(Partition { max_ts: None, delay, finished: false, last_active: Instant::now() });
    }

    /// Records a batch from a partition: its largest event time, and whether the
    /// partition ended.
    pub fn observe(&mut self, id: &PartitionId, max_ts: Option<i64>, finished: bool) {
        if let Some(p) = self.partitions.get_mut(id) {
            p.max_ts = p.max_ts.max(max_ts);
            p.finished |= finished;
            p.last_active = Instant::now();
        }
    }

    /// The pipeline read nothing for `stalled` (it was committing, or waiting for
    /// the lake's store): that time does not count towards any partition's
    /// silence, or a store outage would make every partition look idle.
    pub fn pause(&mut self, stalled: Duration) {
        for p in self.partitions.values_mut() {
            p.last_active += stalled;
        }
    }

    /// Every partition's progress, for a checkpoint.
    pub fn marks(&self) -> Vec<PartitionMark> {
        self.partitions
            .iter()
            .map(|(id, p)| PartitionMark { topic: id.topic.to_string(), partition: id.partition, max_ts: p.max_ts, finished: p.finished })
            .collect()
    }

    /// Takes up a checkpoint's progress; `delay` gives each topic's allowed
    /// out-of-orderness as configured now.
    pub fn restore(&mut self, marks: &[PartitionMark], delay: impl Fn(&str) -> i64) {
        for m in marks {
            let id = PartitionId { topic: Arc::from(m.topic.as_str()), partition: m.partition };
            let p = self.partitions.entry(id).or_insert(Partition {
                max_ts: None,
                delay: delay(&m.topic),
                finished: false,
                last_active: Instant::now(),
            });
            p.max_ts = p.max_ts.max(m.max_ts);
            p.finished |= m.finished;
        }
    }

    /// Each topic's watermark now: the minimum over its partitions that are not idle.
    pub fn per_topic(&self) -> BTreeMap<Arc<str>, i64> {
        let mut topics = BTreeMap::<Arc<str>, i64>::new();
        let now = Instant::now();
        for (id, p) in self.partitions.iter().filter(|(_, p)| !self.idle(p, now)) {
            let w = topics.entry(id.topic.clone()).or_insert(FINISHED);
            *w = (*w).min(p.watermark());
        }
        topics
    }

    /// End of input: every partition is finished, every window can close.
    pub fn finish_all(&mut self) {
        for p in self.partitions.values_mut() {
            p.finished = true;
        }
    }

    fn partition(&self, id: &PartitionId) -> Option<&Partition> {
        self.partitions.get(id)
    }

    /// The minimum watermark over the partitions of `topics` that are not idle,
    /// leaving out `except`; `None` if there are none.
    fn min_over(&self, topics: &[Arc<str>], except: Option<&PartitionId>) -> Option<i64> {
        let now = Instant::now();
        self.partitions
            .iter()
            .filter(|(id, p)| Some(*id) != except && topics.contains(&id.topic) && !self.idle(p, now))
            .map(|(_, p)| p.watermark())
            .min()
    }

    /// A partition that has delivered nothing for the idle timeout (a finished one
    /// is not idle: it holds nothing back anyway).
    fn idle(&self, p: &Partition, now: Instant) -> bool {
        !p.finished && now.saturating_duration_since(p.last_active) >= self.idle_timeout
    }
}

/// The watermark of one query: the minimum over the partitions of its topics, never
/// moving backwards.
#[derive(Debug, Clone)]
pub struct QueryClock {
    topics: Vec<Arc<str>>,
    watermark: i64,
}

impl QueryClock {
    pub fn new(topics: Vec<Arc<str>>) -> Self {
        QueryClock { topics, watermark: UNKNOWN }
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Takes up a checkpoint's watermark (it never moves backwards).
    pub fn restore(&mut self, watermark: i64) {
        self.watermark = self.watermark.max(watermark);
    }

    pub fn reads(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| &**t == topic)
    }

    /// The watermark each event of a batch from `id` is judged by: the query's
    /// watermark just before that event, counting the batch's earlier events. So
    /// lateness does not depend on where batches happen to be cut.
    pub fn row_watermarks(&self, marks: &Watermarks, id: &PartitionId, ts: impl Iterator<Item = i64>, out: &mut Vec<i64>) {
        out.clear();
        let others = marks.min_over(&self.topics, Some(id)).unwrap_or(FINISHED);
        let Some(p) = marks.partition(id) else {
            out.extend(ts.map(|_| self.watermark));
            return;
        };
        let mut max_ts = p.max_ts;
        for t in ts {
            let own = match max_ts {
                Some(m) => m.saturating_sub(p.delay),
                None => UNKNOWN,
            };
            out.push(self.watermark.max(others.min(own)));
            max_ts = max_ts.max(Some(t));
        }
    }

    /// Moves the watermark to where the partitions are now; returns it. With every
    /// partition idle (or none known yet) it stays where it is.
    pub fn advance(&mut self, marks: &Watermarks) -> i64 {
        if let Some(min) = marks.min_over(&self.topics, None) {
            self.watermark = self.watermark.max(min);
        }
        self.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(topic: &str, partition: i32) -> PartitionId {
        PartitionId { topic: topic.into(), partition }
    }

    #[test]
    fn a_query_waits_for_its_slowest_partition_and_ignores_finished_ones() {
        let mut marks = Watermarks::default();
        marks.add_partition(pid("a", 0), 5);
        marks.add_partition(pid("a", 1), 5);
        marks.add_partition(pid("b", 0), 0);
        let mut clock = QueryClock::new(vec!["a".into()]);
        marks.observe(&pid("a", 0), Some(100), false);
        assert_eq!(clock.advance(&marks), UNKNOWN, "a/1 has not spoken yet");
        marks.observe(&pid("a", 1), Some(50), false);
        assert_eq!(clock.advance(&marks), 45);
        marks.observe(&pid("a", 1), Some(40), true);
        assert_eq!(clock.advance(&marks), 95, "a finished partition holds nothing back");
        marks.finish_all();
        assert_eq!(clock.advance(&marks), FINISHED);
    }

    #[test]
    fn an_idle_partition_holds_nothing_back_and_all_idle_holds_still() {
        let mut marks = Watermarks::new(Duration::from_millis(50));
        marks.add_partition(pid("a", 0), 0);
        marks.add_partition(pid("a", 1), 0);
        let mut clock = QueryClock::new(vec!["a".into()]);
        marks.observe(&pid("a", 0), Some(100), false);
        assert_eq!(clock.advance(&marks), UNKNOWN, "a/1 is silent, not idle yet");
        std::thread::sleep(Duration::from_millis(60));
        marks.observe(&pid("a", 0), Some(200), false);
        assert_eq!(clock.advance(&marks), 200, "a/1 is idle: a/0 alone sets the pace");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(clock.advance(&marks), 200, "all idle: the watermark stays");
        marks.observe(&pid("a", 1), Some(150), false);
        assert_eq!(clock.advance(&marks), 200, "a/1 is back, behind: the watermark never moves back");
        marks.observe(&pid("a", 0), Some(300), false);
        assert_eq!(clock.advance(&marks), 200, "a/1 at 150 holds it again");
        marks.observe(&pid("a", 1), Some(400), false);
        assert_eq!(clock.advance(&marks), 300);
    }

    #[test]
    fn time_the_pipeline_stalled_is_not_silence() {
        let mut marks = Watermarks::new(Duration::from_millis(50));
        marks.add_partition(pid("a", 0), 0);
        marks.add_partition(pid("a", 1), 0);
        marks.observe(&pid("a", 0), Some(200), false);
        marks.observe(&pid("a", 1), Some(100), false);
        std::thread::sleep(Duration::from_millis(60));
        marks.pause(Duration::from_millis(60));
        assert_eq!(marks.per_topic()[&Arc::from("a")], 100, "a/1 was not silent: the pipeline was not reading");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!marks.per_topic().contains_key(&Arc::<str>::from("a")), "both silent since: idle");
    }

    #[test]
    fn a_query_over_a_topic_without_partitions_waits() {
        let marks = Watermarks::default();
        let mut clock = QueryClock::new(vec!["not-yet".into()]);
        assert_eq!(clock.advance(&marks), UNKNOWN, "a topic that appears later must not find its windows closed");
    }

    #[test]
    fn rows_see_the_watermark_before_them() {
        let mut marks = Watermarks::default();
        marks.add_partition(pid("a", 0), 5);
        marks.add_partition(pid("a", 1), 5);
        marks.observe(&pid("a", 1), Some(1000), false);
        let clock = QueryClock::new(vec!["a".into()]);
        let mut out = Vec::new();
        clock.row_watermarks(&marks, &pid("a", 0), [10, 30, 20, 100].into_iter(), &mut out);
        assert_eq!(out, vec![UNKNOWN, 5, 25, 25]);
    }
}
