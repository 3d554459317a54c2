//! Reading ahead of the run loop. A source called only when the loop wants a batch
//! stops reading while the loop commits: a Kafka source's messages then wait in
//! librdkafka's queue for the commit to end, and after it for their batch to linger
//! again. On a task of its own the source keeps reading and batching, and the loop
//! finds lingered batches waiting when it comes back. While they wait, a
//! partition's batches grow into one (up to the batch size), so a loop that falls
//! behind takes fewer, larger batches, as it did when the source waited for it.
//! A partition's batches keep their order (partitions may overtake each other, as
//! in Kafka), and the loop's positions move only as it processes them, so a
//! restart still resumes after the last batch committed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::JoinHandle;

use super::{PartitionId, RawBatch, Source};
use crate::error::{Error, Result};

pub struct ReadAhead {
    /// The source until its first batch is asked for: seeking still applies.
    waiting: Option<Box<dyn Source>>,
    reading: Option<Reading>,
    shared: Arc<Shared>,
    /// Messages a partition's waiting batches may grow to.
    batch_size: usize,
    budget: usize,
    /// The source said it has no more.
    ended: bool,
}

/// Between the reading task and the loop.
struct Shared {
    queue: Mutex<Queue>,
    /// Something was queued, or the task stopped.
    queued: Notify,
    /// The source's partitions as of its last batch.
    partitions: Mutex<Vec<PartitionId>>,
}

#[derive(Default)]
struct Queue {
    /// What the source gave, each with the bytes it holds of the budget.
    read: VecDeque<(usize, Result<Option<RawBatch>>)>,
    /// The task will queue nothing more.
    stopped: bool,
}

struct Reading {
    /// Room for batches read ahead, in bytes: the task takes it, the loop gives it back.
    room: Arc<Semaphore>,
    topics: mpsc::UnboundedSender<MoreTopics>,
    task: JoinHandle<()>,
}

/// Topics to read too, from these starts; answered once the source reads them.
type MoreTopics = (Vec<String>, BTreeMap<PartitionId, i64>, oneshot::Sender<Result<()>>);

/// Marks the queue stopped however the task ends (returning, failing, aborted).
struct Stopped(Arc<Shared>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.queue.lock().unwrap_or_else(PoisonError::into_inner).stopped = true;
        self.0.queued.notify_one();
    }
}

impl Queue {
    /// Queues `read`, into the last waiting batch of its partition if that has room.
    fn push(&mut self, cost: usize, read: Result<Option<RawBatch>>, batch_size: usize) {
        if let Ok(Some(batch)) = &read {
            let last = self.read.iter_mut().rev().find_map(|(cost, r)| match r {
                Ok(Some(b)) if b.partition == batch.partition => Some((cost, b)),
                _ => None,
            });
            if let Some((queued_cost, queued)) = last.filter(|(_, b)| b.messages.len() + batch.messages.len() <= batch_size) {
                append(queued, batch);
                *queued_cost += cost;
                return;
            }
        }
        self.read.push_back((cost, read));
    }
}

/// Appends `next`, read after `batch` from the same partition, to `batch`.
fn append(batch: &mut RawBatch, next: &RawBatch) {
    let shift = batch.data.len();
    batch.data.extend_from_slice(&next.data);
    batch.messages.extend(next.messages.iter().map(|m| super::RawMessage {
        payload: m.payload.as_ref().map(|r| r.start + shift..r.end + shift),
        ..m.clone()
    }));
    batch.next_offset = next.next_offset;
    batch.end_of_partition = next.end_of_partition;
}

impl ReadAhead {
    /// Reads `source` ahead, up to `budget` bytes of batches the loop has not
    /// taken (then the source waits); a partition's waiting batches grow up to
    /// `batch_size` messages.
    pub fn new(source: Box<dyn Source>, batch_size: usize, budget: usize) -> Self {
        let budget = budget.clamp(1, u32::MAX as usize);
        let shared = Shared { queue: Mutex::default(), queued: Notify::new(), partitions: Mutex::new(source.partitions()) };
        ReadAhead { waiting: Some(source), reading: None, shared: Arc::new(shared), batch_size, budget, ended: false }
    }

    /// Moves the source onto a task that reads on, waiting while the budget is
    /// used up, until the source ends or fails (the loop gets that in order) or
    /// this is dropped.
    fn start(&self, mut source: Box<dyn Source>) -> Reading {
        let room = Arc::new(Semaphore::new(self.budget));
        let (topics, mut more_topics) = mpsc::unbounded_channel::<MoreTopics>();
        let (shared, budget, batch_size, task_room) = (self.shared.clone(), self.budget, self.batch_size, room.clone());
        let task = tokio::spawn(async move {
            let _stopped = Stopped(shared.clone());
            loop {
                let read = tokio::select! {
                    biased;
                    Some(more) = more_topics.recv() => {
                        add_topics(source.as_mut(), more, &shared).await;
                        continue;
                    }
                    read = source.next_batch() => read,
                };
                let cost = match &read {
                    // A message's bytes and its place in the batch (~32 bytes); a
                    // batch larger than the whole budget goes alone.
                    Ok(Some(batch)) => (batch.data.len() + 32 * batch.messages.len()).clamp(1, budget),
                    _ => 0,
                };
                // Topics are still added while the batch waits for room.
                loop {
                    tokio::select! {
                        biased;
                        Some(more) = more_topics.recv() => add_topics(source.as_mut(), more, &shared).await,
                        room = task_room.acquire_many(cost as u32) => match room {
                            Ok(permit) => break permit.forget(),
                            Err(_) => return,
                        },
                    }
                }
                let more = matches!(read, Ok(Some(_)));
                *shared.partitions.lock().unwrap_or_else(PoisonError::into_inner) = source.partitions();
                shared.queue.lock().unwrap_or_else(PoisonError::into_inner).push(cost, read, batch_size);
                shared.queued.notify_one();
                if !more {
                    return;
                }
            }
        });
        Reading { room, topics, task }
    }
}

/// Has `source` read more topics, and answers once their partitions are listed.
async fn add_topics(source: &mut dyn Source, (names, starts, done): MoreTopics, shared: &Shared) {
    let added = source.read_topics(&names, &starts).await;
    *shared.partitions.lock().unwrap_or_else(PoisonError::into_inner) = source.partitions();
    let _ = done.send(added);
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some(reading) = &self.reading {
            reading.task.abort();
        }
    }
}

#[async_trait::async_trait]
impl Source for ReadAhead {
    fn partitions(&self) -> Vec<PartitionId> {
        match &self.waiting {
            Some(source) => source.partitions(),
            None => self.shared.partitions.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    fn seek(&mut self, positions: &BTreeMap<PartitionId, i64>) -> Result<()> {
        match &mut self.waiting {
            Some(source) => source.seek(positions),
            None => Err(Error::Internal("source: seek after reading began".into())),
        }
    }

    /// Once reading, the topics are added between two batches.
    async fn read_topics(&mut self, topics: &[String], starts: &BTreeMap<PartitionId, i64>) -> Result<()> {
        if let Some(source) = &mut self.waiting {
            return source.read_topics(topics, starts).await;
        }
        let ended = || Error::Internal("source: reading has ended".into());
        let reading = self.reading.as_ref().ok_or_else(ended)?;
        let (done, added) = oneshot::channel();
        reading.topics.send((topics.to_vec(), starts.clone(), done)).map_err(|_| ended())?;
        added.await.map_err(|_| ended())?
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>> {
        if let Some(source) = self.waiting.take() {
            self.reading = Some(self.start(source));
        }
        let Some(reading) = &self.reading else { return Err(Error::Internal("source: no source".into())) };
        loop {
            if self.ended {
                return Ok(None);
            }
            let queued = self.shared.queued.notified();
            {
                let mut queue = self.shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((cost, read)) = queue.read.pop_front() {
                    reading.room.add_permits(cost);
                    self.ended = matches!(read, Ok(None));
                    return read;
                }
                if queue.stopped {
                    return Err(Error::Internal("source: the reading task stopped".into()));
                }
            }
            queued.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::source::RawMessage;

    /// Batches of `size` bytes, one message each, offsets 0, 1, 2... round the
    /// `partitions`, the nth of bytes `b'a' + n % 26`; fails at `fail_at`.
    struct Numbered {
        read: Arc<AtomicUsize>,
        partitions: usize,
        total: usize,
        size: usize,
        fail_at: Option<usize>,
        topics: Vec<String>,
        dropped: Arc<AtomicBool>,
    }

    impl Numbered {
        fn new(total: usize, size: usize) -> (Self, Arc<AtomicUsize>) {
            let read = Arc::new(AtomicUsize::new(0));
            let source = Numbered { read: read.clone(), partitions: 1, total, size, fail_at: None, topics: vec!["t".into()], dropped: Arc::default() };
            (source, read)
        }
    }

    impl Drop for Numbered {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl Source for Numbered {
        fn partitions(&self) -> Vec<PartitionId> {
            self.topics.iter().map(|t| PartitionId { topic: Arc::from(t.as_str()), partition: 0 }).collect()
        }

        fn seek(&mut self, positions: &BTreeMap<PartitionId, i64>) -> Result<()> {
            self.read.store(positions.values().next().copied().unwrap_or(0) as usize, Ordering::SeqCst);
            Ok(())
        }

        async fn read_topics(&mut self, topics: &[String], _: &BTreeMap<PartitionId, i64>) -> Result<()> {
            self.topics.extend(topics.iter().cloned());
            Ok(())
        }

        async fn next_batch(&mut self) -> Result<Option<RawBatch>> {
            tokio::task::yield_now().await;
            let n = self.read.load(Ordering::SeqCst);
            if self.fail_at == Some(n) {
                return Err(Error::Input(format!("broken at {n}")));
            }
            if n == self.total {
                return Ok(None);
            }
            self.read.store(n + 1, Ordering::SeqCst);
            Ok(Some(RawBatch {
                partition: PartitionId { topic: Arc::from("t"), partition: (n % self.partitions) as i32 },
                ingested_at: 0,
                data: vec![b'a' + (n % 26) as u8; self.size],
                messages: vec![RawMessage { offset: n as i64, payload: Some(0..self.size), timestamp: None }],
                next_offset: n as i64 + 1,
                end_of_partition: false,
            }))
        }
    }

    async fn offset(source: &mut ReadAhead) -> Option<i64> {
        source.next_batch().await.unwrap().map(|b| b.messages[0].offset)
    }

    /// Waits until `read` reaches `n` (or 5 s pass) and returns it.
    async fn settle(read: &AtomicUsize, n: usize) -> usize {
        for _ in 0..500 {
            if read.load(Ordering::SeqCst) >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Anything more the task would read comes right after.
        tokio::time::sleep(Duration::from_millis(50)).await;
        read.load(Ordering::SeqCst)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn it_reads_on_while_the_loop_is_away_and_keeps_the_order() {
        let (source, read) = Numbered::new(10, 100);
        let mut ahead = ReadAhead::new(Box::new(source), 1, 32 << 20);
        ahead.seek(&BTreeMap::from([(PartitionId { topic: Arc::from("t"), partition: 0 }, 2)])).unwrap();
        assert_eq!(offset(&mut ahead).await, Some(2));
        assert_eq!(settle(&read, 10).await, 10, "the whole source read without being asked");
        for expected in 3..10 {
            assert_eq!(offset(&mut ahead).await, Some(expected));
        }
        assert_eq!(offset(&mut ahead).await, None);
        assert_eq!(offset(&mut ahead).await, None, "an ended source stays ended");
        let refused = ahead.seek(&BTreeMap::new()).unwrap_err();
        assert!(refused.to_string().contains("seek after reading began"), "{refused}");
    }

    /// While the loop is away, a partition's batches grow into one, in order;
    /// partitions may overtake each other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_batches_of_a_partition_grow_into_one_up_to_the_batch_size() {
        let (mut source, read) = Numbered::new(13, 3);
        source.partitions = 2;
        let mut ahead = ReadAhead::new(Box::new(source), 4, 32 << 20);
        // Reading without taking anything, as during a long commit.
        let source = ahead.waiting.take().unwrap();
        ahead.reading = Some(ahead.start(source));
        settle(&read, 13).await;
        let mut taken = Vec::new();
        while let Some(batch) = ahead.next_batch().await.unwrap() {
            let offsets: Vec<i64> = batch.messages.iter().map(|m| m.offset).collect();
            for m in &batch.messages {
                assert_eq!(batch.payload(m), Some(&[b'a' + m.offset as u8; 3][..]), "message {}", m.offset);
            }
            assert_eq!(batch.next_offset, offsets.last().unwrap() + 1);
            taken.push((batch.partition.partition, offsets));
        }
        let expected = [(0, vec![0, 2, 4, 6]), (1, vec![1, 3, 5, 7]), (0, vec![8, 10, 12]), (1, vec![9, 11])];
        assert_eq!(taken, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn it_stops_reading_at_its_budget_and_a_larger_batch_goes_alone() {
        // Each batch costs 1,000 bytes and 32 for its message: three fit in 3,500.
        let (source, read) = Numbered::new(100, 1000);
        let mut ahead = ReadAhead::new(Box::new(source), 1, 3500);
        assert_eq!(offset(&mut ahead).await, Some(0));
        // The first taken, three waiting, and the fifth read, waiting for room.
        assert_eq!(settle(&read, 5).await, 5);
        assert_eq!(offset(&mut ahead).await, Some(1));
        assert_eq!(settle(&read, 6).await, 6);

        let (source, read) = Numbered::new(3, 10_000);
        let mut ahead = ReadAhead::new(Box::new(source), 1, 3500);
        for expected in 0..3 {
            assert_eq!(offset(&mut ahead).await, Some(expected));
        }
        assert_eq!(offset(&mut ahead).await, None);
        assert_eq!(read.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_error_comes_after_the_batches_before_it_and_ends_reading() {
        let (mut source, _) = Numbered::new(10, 10);
        source.fail_at = Some(3);
        let mut ahead = ReadAhead::new(Box::new(source), 1, 32 << 20);
        for expected in 0..3 {
            assert_eq!(offset(&mut ahead).await, Some(expected));
        }
        let e = ahead.next_batch().await.unwrap_err();
        assert!(e.to_string().contains("broken at 3"), "{e}");
        let e = ahead.next_batch().await.unwrap_err();
        assert!(e.to_string().contains("reading task stopped"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topics_added_while_reading_reach_the_source_and_dropping_stops_it() {
        let (source, read) = Numbered::new(1_000_000, 10);
        let dropped = source.dropped.clone();
        let mut ahead = ReadAhead::new(Box::new(source), 1, 1000);
        assert_eq!(ahead.partitions().len(), 1);
        offset(&mut ahead).await;
        // The budget (~23 batches) is used up: the task waits for room, and still
        // takes the topics, listed as soon as the call returns.
        settle(&read, 24).await;
        ahead.read_topics(&["u".into()], &BTreeMap::new()).await.unwrap();
        let names: Vec<_> = ahead.partitions().iter().map(|p| p.topic.to_string()).collect();
        assert_eq!(names, ["t", "u"]);
        assert_eq!(offset(&mut ahead).await, Some(1), "batches go on in order");
        drop(ahead);
        for _ in 0..500 {
            if dropped.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(dropped.load(Ordering::SeqCst), "the source outlived its reader");
        assert!(read.load(Ordering::SeqCst) < 1_000_000);
    }
}
