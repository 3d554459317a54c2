//! Between the model and the files: turns each generated message into bytes with the
//! noise a real feed has (timestamp spellings, small reordering, very late arrivals,
//! bad messages, unknown fields), routes it to a partition and hands the messages to
//! the sink in arrival order.

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::bad::{Corruption, Faults};
use super::dist::{chance, pick};
use super::json::{write_id, write_uuid, Obj, Ts};
use super::{Message, TopicCounts};
use crate::error::Result;
use crate::schema::{SchemaRegistry, TopicKind, TopicSchema};

/// Index of a topic in registry order.
pub(super) type Tix = usize;

/// Share of event messages that are bad (contract §1.3).
const P_BAD_EVENT: f64 = 0.003;
/// Share of CDC changes preceded by a bad copy: a few in all.
const P_BAD_CDC: f64 = 0.002;
/// Share of event messages that arrive very late.
const P_LATE: f64 = 0.002;
/// How far past its `ts` a very late event's partition has moved when it is written.
const LATE_MIN_MS: i64 = 10 * 60_000;
const LATE_MAX_MS: i64 = 3 * 3_600_000;
/// Share of event messages whose `ts` is a little earlier than the ones before them.
const P_JITTER: f64 = 0.10;
/// Largest such jitter. With a whole-second `ts` (up to 999 ms truncated) and sub-ms
/// digits the message stays strictly within 3 s of its partition's largest `ts`.
const MAX_JITTER_MS: i64 = 1_990;
/// A jittered event goes behind its partition's latest `ts` if that is this recent;
/// a sparse partition's older maximum would move the event too far back in time.
const JITTER_REACH_MS: i64 = 60_000;
/// Share of valid messages that carry a field the schema does not know.
const P_EXTRA: f64 = 0.01;

const EXTRA_FIELDS: [&str; 6] = [
    "\"client\":\"web\"",
    "\"client\":\"ios\"",
    "\"app_version\":\"4.12.0\"",
    "\"region\":\"eu-west-1\"",
    "\"trace\":{\"span_id\":\"a1b2c3d4\",\"sampled\":true}",
    "\"tags\":[\"beta\",\"eu\"]",
];
const CDC_EXTRA_FIELDS: [&str; 2] = ["\"transaction\":null", "\"schema_version\":2"];
/// Numeric offsets a producer may write its times in (minutes east of UTC).
const OFFSETS: [i16; 8] = [60, 120, -300, 330, -180, 540, -480, 0];

/// A message key, written after the payload into the message's buffer.
#[derive(Debug, Clone, Copy)]
pub(super) enum Key<'k> {
    None,
    /// An id like `u-17`.
    Id(&'static str, u64),
    Uuid(u128),
    Text(&'k str),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Valid,
    Bad,
    Tombstone,
}

/// The noise decided for one message.
struct Shape {
    ts: Ts,
    bad: bool,
    /// For CDC: the message has an `after` row a field fault may target.
    has_row: bool,
    /// Very late: held back until its partition is this much past its `ts`.
    late_by: Option<i64>,
    /// Written this much before its partition's latest message (or its own time),
    /// which is known only when it is delivered.
    jitter: i64,
}

/// A message waiting for its turn. `buf` holds the payload then the key.
#[derive(Debug)]
struct Record {
    at: i64,
    seq: u64,
    topic: Tix,
    partition: u32,
    /// The `ts` as written, for the partition's stream time; `None` when it has none.
    ts: Option<i64>,
    /// A jittered event's `ts`: its spelling, where it sits in `buf` and the jitter.
    jittered: Option<(Ts, usize, i64)>,
    kind: Kind,
    payload_len: usize,
    has_key: bool,
    buf: Vec<u8>,
}

/// A very late event, held back until its partition's stream time reaches `release_at`.
#[derive(Debug)]
struct Held {
    release_at: i64,
    ts: i64,
    rec: Record,
}

#[derive(Debug)]
struct Partition {
    /// Largest valid `ts` written so far (ms).
    stream: i64,
    /// Arrival time of the latest message, bad ones included: never below any `ts`
    /// written so far, so jitter measured from it stays within 3 s of all of them.
    latest: i64,
    /// Sorted by `release_at`, latest first, so the next one pops off the end.
    held: Vec<Held>,
}

#[derive(Debug)]
struct TopicOut {
    schema: Arc<TopicSchema>,
    faults: Faults,
    partitions: Vec<Partition>,
    round_robin: u32,
    counts: TopicCounts,
}

/// Where messages go: `(topic index, message)`.
pub(super) type Sink<'s> = dyn FnMut(Tix, Message<'_>) -> Result<()> + 's;

pub(super) struct Out {
    topics: Vec<TopicOut>,
    pending: Vec<Record>,
    pool: Vec<Vec<u8>>,
    seq: u64,
    noise: SmallRng,
    /// Events are made very late only if they can come back before this time.
    end_ms: i64,
}

impl Out {
    pub(super) fn new(registry: &SchemaRegistry, seed: u64, end_ms: i64) -> Self {
        let topics = registry
            .topics()
            .map(|schema| TopicOut {
                schema: Arc::clone(schema),
                faults: Faults::for_topic(schema),
                partitions: (0..schema.partitions).map(|_| Partition { stream: i64::MIN, latest: i64::MIN, held: vec![] }).collect(),
                round_robin: 0,
                counts: TopicCounts::default(),
            })
            .collect();
        Out {
            topics,
            pending: Vec::new(),
            pool: Vec::new(),
            seq: 0,
            noise: SmallRng::seed_from_u64(seed ^ 0x6e6f_6973_6520_2020),
            end_ms,
        }
    }

    /// The index of a topic, if the registry has it.
    pub(super) fn topic(&self, name: &str) -> Option<Tix> {
        self.topics.iter().position(|t| t.schema.topic == name)
    }

    pub(super) fn schemas(&self) -> impl Iterator<Item = (Tix, &Arc<TopicSchema>)> {
        self.topics.iter().enumerate().map(|(i, t)| (i, &t.schema))
    }

    /// Message counts per topic, in registry order.
    pub(super) fn counts(&self) -> impl Iterator<Item = (&str, &TopicCounts)> {
        self.topics.iter().map(|t| (t.schema.topic.as_str(), &t.counts))
    }

    /// An interaction or domain event happening at `at` (ms); `write` fills in its fields.
    pub(super) fn event(&mut self, topic: Tix, at: i64, key: Key<'_>, write: impl FnOnce(&mut Obj<'_>)) {
        let noise = &mut self.noise;
        let bad = chance(noise, P_BAD_EVENT);
        let late_by = (!bad && chance(noise, P_LATE))
            .then(|| noise.random_range(LATE_MIN_MS + 30_000..LATE_MAX_MS - 15 * 60_000))
            .filter(|delay| at + delay + 5 * 60_000 < self.end_ms);
        let jitter = if late_by.is_none() && chance(noise, P_JITTER) { noise.random_range(1..=MAX_JITTER_MS) } else { 0 };
        let ts = spelling(noise, at);
        self.push(topic, at, key, Shape { ts, bad, has_row: true, late_by, jitter }, write);
    }

    /// A change envelope at `at`; `has_row` says whether it has an `after` row. A bad
    /// CDC message is a garbled copy sent just before the change itself, so the
    /// mirrors stay complete.
    pub(super) fn change(&mut self, topic: Tix, at: i64, key: &str, has_row: bool, write: impl Fn(&mut Obj<'_>)) {
        let ts = Ts::utc_ms(at);
        if chance(&mut self.noise, P_BAD_CDC) {
            self.push(topic, at, Key::Text(key), Shape { ts, bad: true, has_row, late_by: None, jitter: 0 }, &write);
        }
        self.push(topic, at, Key::Text(key), Shape { ts, bad: false, has_row, late_by: None, jitter: 0 }, write);
    }

    /// A tombstone: a key with a null value.
    pub(super) fn tombstone(&mut self, topic: Tix, at: i64, key: &str) {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.extend_from_slice(key.as_bytes());
        let partition = self.partition(topic, Some(buf.as_slice()));
        self.enqueue(Record {
            at,
            seq: 0,
            topic,
            partition,
            ts: None,
            jittered: None,
            kind: Kind::Tombstone,
            payload_len: 0,
            has_key: true,
            buf,
        });
    }

    fn push(&mut self, topic: Tix, at: i64, key: Key<'_>, shape: Shape, write: impl FnOnce(&mut Obj<'_>)) {
        let Shape { ts, bad, has_row, late_by, jitter } = shape;
        let mut buf = self.pool.pop().unwrap_or_default();
        let corruption = bad.then(|| self.topics[topic].faults.pick(&mut self.noise, has_row, at));
        let field_fault = match &corruption {
            Some(Corruption::Field(fault)) => Some(fault),
            _ => None,
        };
        let extra = (!bad && chance(&mut self.noise, P_EXTRA)).then(|| match self.topics[topic].schema.kind {
            TopicKind::Cdc => *pick(&mut self.noise, &CDC_EXTRA_FIELDS),
            TopicKind::Event => *pick(&mut self.noise, &EXTRA_FIELDS),
        });
        let mut obj = Obj::new(&mut buf, field_fault, ts);
        write(&mut obj);
        let written = obj.finish(extra);
        match corruption {
            None => {}
            Some(Corruption::Field(_)) if written.fault_applied => {}
            // A fault whose field this message lacks falls back to cutting it short.
            Some(Corruption::Field(_) | Corruption::Truncate) => truncate(&mut self.noise, &mut buf),
            Some(Corruption::Garbage(text)) => {
                buf.clear();
                buf.extend_from_slice(text);
            }
            Some(Corruption::NotObject(text)) => {
                buf.clear();
                buf.extend_from_slice(text.as_bytes());
            }
        }
        let payload_len = buf.len();
        match key {
            Key::None => {}
            Key::Id(prefix, n) => write_id(&mut buf, prefix, n),
            Key::Uuid(id) => write_uuid(&mut buf, id),
            Key::Text(text) => buf.extend_from_slice(text.as_bytes()),
        }
        let has_key = !matches!(key, Key::None);
        let partition = self.partition(topic, has_key.then(|| &buf[payload_len..]));
        let rec = Record {
            at,
            seq: 0,
            topic,
            partition,
            ts: (!bad).then(|| ts.written_ms()),
            jittered: written.ts_at.filter(|_| jitter > 0 && !bad).map(|at| (ts, at, jitter)),
            kind: if bad { Kind::Bad } else { Kind::Valid },
            payload_len,
            has_key,
            buf,
        };
        match late_by {
            Some(delay) => {
                let ts = ts.written_ms();
                let held = &mut self.topics[topic].partitions[partition as usize].held;
                let release_at = ts + delay;
                let i = held.partition_point(|h| h.release_at > release_at);
                held.insert(i, Held { release_at, ts, rec });
            }
            None => self.enqueue(rec),
        }
    }

    fn enqueue(&mut self, mut rec: Record) {
        rec.seq = self.seq;
        self.seq += 1;
        self.pending.push(rec);
    }

    /// Stable FNV-1a hash of the key, or round-robin without one.
    fn partition(&mut self, topic: Tix, key: Option<&[u8]>) -> u32 {
        let t = &mut self.topics[topic];
        let n = t.partitions.len() as u32;
        match key {
            Some(key) => {
                let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
                (hash % u64::from(n)) as u32
            }
            None => {
                t.round_robin = t.round_robin.wrapping_add(1);
                t.round_robin % n
            }
        }
    }

    /// Hands over, in arrival order, every waiting message that arrives before `until`.
    pub(super) fn flush_until(&mut self, until: i64, sink: &mut Sink<'_>) -> Result<()> {
        // Steps run in time order, so the pending messages come in long sorted runs.
        self.pending.sort_by_key(|r| (r.at, r.seq));
        let split = self.pending.partition_point(|r| r.at < until);
        let rest = self.pending.split_off(split);
        let ready = std::mem::replace(&mut self.pending, rest);
        for rec in ready {
            self.deliver(rec, sink)?;
        }
        Ok(())
    }

    /// Hands over everything left. Very late events whose partition never moved 10
    /// minutes past them are dropped: written now they would be neither on time nor late.
    pub(super) fn finish(&mut self, sink: &mut Sink<'_>) -> Result<()> {
        self.flush_until(i64::MAX, sink)?;
        for topic in 0..self.topics.len() {
            for partition in 0..self.topics[topic].partitions.len() {
                let part = &mut self.topics[topic].partitions[partition];
                let stream = part.stream;
                let held = std::mem::take(&mut part.held);
                for h in held.into_iter().rev() {
                    if stream.saturating_sub(h.ts) >= LATE_MIN_MS {
                        self.write(h.rec, true, sink)?;
                    } else {
                        self.pool.push(h.rec.buf);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes one message to its partition, and the very late events its stream time
    /// releases: after it normally, before it when it jumps past their 3-hour limit.
    fn deliver(&mut self, mut rec: Record, sink: &mut Sink<'_>) -> Result<()> {
        let (topic, partition) = (rec.topic, rec.partition as usize);
        let part = &mut self.topics[topic].partitions[partition];
        let before = part.stream;
        if let Some((ts, at, jitter)) = rec.jittered {
            // Behind the partition's latest message, re-spelt in place (same width).
            let base = if part.latest > ts.ms - JITTER_REACH_MS { part.latest.min(ts.ms) } else { ts.ms };
            let moved = Ts { ms: base - jitter, ..ts };
            let mut text = Vec::with_capacity(40);
            moved.write(&mut text);
            rec.buf[at..at + text.len()].copy_from_slice(&text);
            rec.ts = Some(moved.written_ms());
        }
        part.latest = part.latest.max(rec.at);
        let stream = rec.ts.map_or(before, |ts| before.max(ts));
        while let Some(h) = self.topics[topic].partitions[partition].held.last() {
            if h.release_at > stream || stream - h.ts <= LATE_MAX_MS {
                break;
            }
            if let Some(h) = self.topics[topic].partitions[partition].held.pop() {
                self.write(h.rec, true, sink)?;
            }
        }
        self.write(rec, false, sink)?;
        self.topics[topic].partitions[partition].stream = stream;
        while let Some(h) = self.topics[topic].partitions[partition].held.last() {
            if h.release_at > stream {
                break;
            }
            if let Some(h) = self.topics[topic].partitions[partition].held.pop() {
                self.write(h.rec, true, sink)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, rec: Record, late: bool, sink: &mut Sink<'_>) -> Result<()> {
        let t = &mut self.topics[rec.topic];
        t.counts.messages += 1;
        match rec.kind {
            Kind::Valid => {}
            Kind::Bad => t.counts.bad += 1,
            Kind::Tombstone => t.counts.tombstones += 1,
        }
        if late {
            t.counts.late += 1;
        }
        let key = rec.has_key.then(|| std::str::from_utf8(&rec.buf[rec.payload_len..]).ok()).flatten();
        let payload = (rec.kind != Kind::Tombstone).then(|| &rec.buf[..rec.payload_len]);
        sink(rec.topic, Message { topic: &t.schema.topic, partition: rec.partition, key, payload })?;
        let mut buf = rec.buf;
        buf.clear();
        self.pool.push(buf);
        Ok(())
    }
}

/// How a time is spelled: mostly milliseconds with `Z`, sometimes other precisions or
/// the same instant in a numeric offset.
fn spelling(rng: &mut SmallRng, ms: i64) -> Ts {
    let roll = rng.random::<f64>();
    let (digits, offset_min) = match roll {
        r if r < 0.80 => (3, None),
        r if r < 0.84 => (0, None),
        r if r < 0.88 => (6, None),
        r if r < 0.91 => (9, None),
        r if r < 0.92 => (*pick(rng, &[1u8, 2, 5]), None),
        _ => (*pick(rng, &[3u8, 3, 0, 6]), Some(*pick(rng, &OFFSETS))),
    };
    let sub_ms_ns = if digits > 3 { rng.random_range(0..1_000_000) } else { 0 };
    Ts { ms, sub_ms_ns, digits, offset_min }
}

/// Cuts a message short, on a character boundary and before its last byte.
fn truncate(rng: &mut SmallRng, buf: &mut Vec<u8>) {
    if buf.len() < 3 {
        buf.truncate(1);
        return;
    }
    let mut cut = rng.random_range(1..buf.len() - 1);
    while cut > 1 && (buf[cut] & 0xc0) == 0x80 {
        cut -= 1;
    }
    buf.truncate(cut);
}
