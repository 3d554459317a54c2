//! Generated platform traffic: a deterministic stand-in for the learning platform's
//! Kafka topics (contract §1), for tests, demos and benchmarks.
//!
//! A seeded model of users in organisations opens sessions over a diurnal day; their
//! sessions make gateway requests, service calls and domain events, while the services'
//! change feeds snapshot and then evolve the entities the events refer to. On the way
//! out each message picks up the noise of a real feed: varied timestamp spellings, a
//! little reordering, a few very late arrivals, bad messages of every kind (§1.3),
//! unknown extra fields, CDC tombstones and stale re-sends.
//!
//! ```no_run
//! # use std::path::Path;
//! # use sluice::{schema::SchemaRegistry, generate::{generate_to_dir, GenerateOptions}};
//! let registry = SchemaRegistry::load(Path::new("schemas"))?;
//! let summary = generate_to_dir(&registry, &GenerateOptions::default(), Path::new("data/input"))?;
//! println!("{} messages", summary.total_messages());
//! # Ok::<(), sluice::error::Error>(())
//! ```

mod bad;
mod bus;
mod cdc;
mod checks;
mod dist;
mod external;
mod json;
mod out;
mod realtime;
mod traffic;
mod world;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeZone, Utc};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::error::{Error, Result};
use crate::schema::SchemaRegistry;
use out::{Out, Sink};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub seed: u64,
    /// Users of the platform (about one organisation per 80 users).
    pub users: u32,
    /// Length of the generated period.
    pub hours: u32,
    /// Start of the period; CDC snapshots are taken at this instant.
    pub start: DateTime<Utc>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            seed: 42,
            users: 3000,
            hours: 36,
            start: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).single().unwrap_or_default(),
        }
    }
}

/// One generated message: where it goes and its bytes. `payload` None = a Kafka
/// tombstone (written as the line `null`).
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub key: Option<&'a str>,
    pub payload: Option<&'a [u8]>,
}

/// What was generated for one topic. `messages` counts every message, the bad, late
/// and tombstone ones included.
#[derive(Default, Debug, Clone)]
pub struct TopicCounts {
    pub messages: u64,
    /// Messages that break the contract (§1.3).
    pub bad: u64,
    /// Events written well after their `ts`: 10 minutes to 3 hours past it in the
    /// partition's stream time.
    pub late: u64,
    pub tombstones: u64,
}

#[derive(Debug, Clone)]
pub struct GenerateSummary {
    /// Every topic of the registry, generated into or not.
    pub topics: BTreeMap<String, TopicCounts>,
}

impl GenerateSummary {
    pub fn total_messages(&self) -> u64 {
        self.topics.values().map(|c| c.messages).sum()
    }
}

/// Independent random streams per part of the model, so that changing one part
/// leaves the others' data as it was.
fn stream(seed: u64, part: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ part.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Streams every message in arrival order (per topic-partition order is the order a
/// consumer reads). Deterministic for a seed.
pub fn generate(
    registry: &SchemaRegistry,
    opts: &GenerateOptions,
    emit: &mut dyn FnMut(Message<'_>) -> Result<()>,
) -> Result<GenerateSummary> {
    run(registry, opts, &mut |_, message| emit(message))
}

/// Writes DIR/<topic>/<partition>.jsonl for every topic of the registry (every topic
/// gets its directory and all its partition files, even if empty), one message per line.
pub fn generate_to_dir(registry: &SchemaRegistry, opts: &GenerateOptions, out: &Path) -> Result<GenerateSummary> {
    let mut files: Vec<Vec<(PathBuf, BufWriter<File>)>> = Vec::new();
    for schema in registry.topics() {
        let dir = out.join(&schema.topic);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut partitions = Vec::with_capacity(schema.partitions as usize);
        for p in 0..schema.partitions {
            let path = dir.join(format!("{p}.jsonl"));
            let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
            partitions.push((path, BufWriter::with_capacity(1 << 16, file)));
        }
        files.push(partitions);
    }
    let summary = run(registry, opts, &mut |topic, message| {
        let Some((path, writer)) = files.get_mut(topic).and_then(|p| p.get_mut(message.partition as usize)) else {
            return Err(Error::Internal(format!("no file for {} partition {}", message.topic, message.partition)));
        };
        match message.payload {
            Some(payload) => writer.write_all(payload).and_then(|()| writer.write_all(b"\n")),
            None => writer.write_all(b"null\n"),
        }
        .map_err(|e| Error::io(&*path, e))
    })?;
    for (path, writer) in files.iter_mut().flatten() {
        writer.flush().map_err(|e| Error::io(&*path, e))?;
    }
    Ok(summary)
}

fn run(registry: &SchemaRegistry, opts: &GenerateOptions, sink: &mut Sink<'_>) -> Result<GenerateSummary> {
    let start = opts.start.timestamp_millis();
    let minutes = u64::from(opts.hours) * 60;
    let end = start + minutes as i64 * 60_000;
    let mut out = Out::new(registry, opts.seed, end);
    let mut world = world::World::build(&mut stream(opts.seed, 1), opts.users, start);
    let mut cdc = cdc::Cdc::new(&out, &world, stream(opts.seed, 2), start, end);
    cdc.snapshot(&mut out, &world, start);
    out.flush_until(start + 1, sink)?;
    let mut traffic = traffic::Traffic::new(&out, &world, opts.seed, start, end);
    for minute in 0..minutes {
        let t0 = start + minute as i64 * 60_000;
        cdc.minute(&mut out, &mut world, t0);
        traffic.minute(&mut out, &mut world, t0);
        out.flush_until(t0 + 60_000, sink)?;
    }
    out.finish(sink)?;
    let topics = out.counts().map(|(topic, counts)| (topic.to_owned(), counts.clone())).collect();
    Ok(GenerateSummary { topics })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use serde_json::Value;

    use super::*;
    use crate::schema::{FieldType, TopicKind, TopicSchema};

    fn registry() -> SchemaRegistry {
        SchemaRegistry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")).unwrap()
    }

    /// A small afternoon: busy enough that every topic gets messages.
    fn small(seed: u64) -> GenerateOptions {
        let start = Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap();
        GenerateOptions { seed, users: 50, hours: 3, start }
    }

    fn read_dir_bytes(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        for topic in std::fs::read_dir(dir).unwrap() {
            for file in std::fs::read_dir(topic.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
        files
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_data() {
        let registry = registry();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        generate_to_dir(&registry, &small(7), dirs[0].path()).unwrap();
        generate_to_dir(&registry, &small(7), dirs[1].path()).unwrap();
        generate_to_dir(&registry, &small(8), dirs[2].path()).unwrap();
        let [a, b, c] = [0, 1, 2].map(|i| read_dir_bytes(dirs[i].path()));
        assert!(a.values().map(Vec::len).sum::<usize>() > 10_000);
        assert_eq!(a, b);
        assert_ne!(a.get(Path::new("gateway.requests/0.jsonl")), c.get(Path::new("gateway.requests/0.jsonl")));
    }

    #[test]
    fn files_for_every_topic_and_partition_match_the_summary() {
        let registry = registry();
        let dir = tempfile::tempdir().unwrap();
        let summary = generate_to_dir(&registry, &small(1), dir.path()).unwrap();
        for schema in registry.topics() {
            let mut lines = 0;
            for p in 0..schema.partitions {
                let bytes = std::fs::read(dir.path().join(&schema.topic).join(format!("{p}.jsonl"))).unwrap();
                lines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            }
            let counts = &summary.topics[&schema.topic];
            assert_eq!(lines, counts.messages, "{}", schema.topic);
            assert!(counts.messages > 0, "{} is empty", schema.topic);
        }
        assert_eq!(summary.topics.len(), registry.topics().count());
    }

    /// Why a message breaks the contract, by kind; `None` when it is valid.
    fn check(schema: &TopicSchema, payload: &[u8]) -> Option<&'static str> {
        let Ok(value) = serde_json::from_slice::<Value>(payload) else { return Some("invalid json") };
        let Value::Object(obj) = value else { return Some("not an object") };
        match schema.kind {
            TopicKind::Event => check_fields(schema, &obj),
            TopicKind::Cdc => {
                let op = match obj.get("op") {
                    None => return Some("missing field"),
                    Some(Value::String(op)) if ["c", "u", "d", "r"].contains(&op.as_str()) => op.as_str(),
                    Some(Value::String(_)) => return Some("enum outside"),
                    Some(_) => return Some("wrong type"),
                };
                match obj.get("ts_ms") {
                    None => return Some("missing field"),
                    Some(Value::String(_)) => return Some("bad timestamp"),
                    Some(v) if !v.is_i64() => return Some("wrong type"),
                    _ => {}
                }
                match obj.get("source") {
                    None => return Some("missing field"),
                    Some(Value::Object(s)) => assert!(s["lsn"].is_u64() && s["service"].is_string()),
                    Some(_) => return Some("wrong type"),
                }
                let row = if op == "d" { &obj["before"] } else { &obj["after"] };
                assert_eq!(op == "d", obj["after"].is_null(), "{op}");
                match row {
                    Value::Object(row) => check_fields(schema, row),
                    _ => panic!("a {op} change without its row"),
                }
            }
        }
    }

    fn check_fields(schema: &TopicSchema, obj: &serde_json::Map<String, Value>) -> Option<&'static str> {
        for field in &schema.fields {
            let v = match obj.get(&field.name) {
                None | Some(Value::Null) if field.nullable => continue,
                None => return Some("missing field"),
                Some(Value::Null) => return Some("wrong type"),
                Some(v) => v,
            };
            let ok = match &field.ty {
                FieldType::String => v.is_string(),
                FieldType::Int => v.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
                FieldType::Int64 => v.is_i64(),
                FieldType::Double => v.is_number(),
                FieldType::Bool => v.is_boolean(),
                FieldType::Timestamp => match v.as_str() {
                    Some(text) if DateTime::parse_from_rfc3339(text).is_ok() => true,
                    Some(_) => return Some("bad timestamp"),
                    None => false,
                },
                FieldType::Enum(values) => match v.as_str() {
                    Some(text) if values.iter().any(|x| x == text) => true,
                    Some(_) => return Some("enum outside"),
                    None => false,
                },
            };
            if !ok {
                return Some("wrong type");
            }
        }
        None
    }

    #[test]
    fn messages_follow_the_schemas_with_the_promised_noise() {
        let registry = registry();
        let opts = GenerateOptions { seed: 3, users: 400, hours: 8, ..GenerateOptions::default() };
        let mut seen: BTreeMap<String, TopicCounts> = BTreeMap::new();
        let mut kinds = BTreeSet::new();
        let mut stream: HashMap<(String, u32), i64> = HashMap::new();
        let mut lines_with_offsets = 0;
        let mut cdc_lsn: HashMap<(String, String), u64> = HashMap::new();
        let mut stale = 0;
        let start_ms = opts.start.timestamp_millis();
        let summary = generate(&registry, &opts, &mut |m| {
            let schema = registry.get(m.topic).unwrap();
            assert!(m.partition < schema.partitions);
            let counts = seen.entry(m.topic.to_owned()).or_default();
            counts.messages += 1;
            let Some(payload) = m.payload else {
                assert_eq!(schema.kind, TopicKind::Cdc, "tombstone in {}", m.topic);
                counts.tombstones += 1;
                return Ok(());
            };
            assert!(!payload.contains(&b'\n'));
            assert_ne!(payload, b"null");
            if let Some(kind) = check(schema, payload) {
                counts.bad += 1;
                kinds.insert(kind);
                return Ok(());
            }
            let value: Value = serde_json::from_slice(payload).unwrap();
            if schema.kind == TopicKind::Cdc {
                let row = if value["op"] == "d" { &value["before"] } else { &value["after"] };
                let key = row[schema.primary_key.as_deref().unwrap()].as_str().unwrap();
                assert_eq!(m.key, Some(key));
                if value["op"] == "r" {
                    assert_eq!(value["ts_ms"], start_ms);
                }
                let lsn = value["source"]["lsn"].as_u64().unwrap();
                let max = cdc_lsn.entry((m.topic.to_owned(), key.to_owned())).or_insert(0);
                stale += usize::from(lsn < *max);
                *max = (*max).max(lsn);
            } else {
                let text = value["ts"].as_str().unwrap();
                lines_with_offsets += usize::from(!text.ends_with('Z'));
                let ts = DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis();
                let max = stream.entry((m.topic.to_owned(), m.partition)).or_insert(i64::MIN);
                if ts < max.saturating_sub(3_000) {
                    let behind = *max - ts;
                    assert!((600_000..=10_800_000).contains(&behind), "{} late by {behind} ms", m.topic);
                    counts.late += 1;
                }
                *max = (*max).max(ts);
            }
            Ok(())
        })
        .unwrap();

        assert_eq!(kinds.len(), 6, "{kinds:?}");
        assert!(stale > 0, "no stale change");
        assert!(lines_with_offsets > 0);
        let (mut events, mut bad, mut late) = (0, 0, 0);
        for (topic, counts) in &summary.topics {
            let got = &seen[topic];
            assert_eq!(
                (got.messages, got.bad, got.late, got.tombstones),
                (counts.messages, counts.bad, counts.late, counts.tombstones),
                "{topic}"
            );
            if registry.get(topic).unwrap().kind == TopicKind::Event {
                events += counts.messages;
                bad += counts.bad;
                late += counts.late;
            } else {
                assert!(counts.tombstones > 0, "{topic} has no tombstone");
            }
        }
        let (bad_share, late_share) = (bad as f64 / events as f64, late as f64 / events as f64);
        assert!((0.0015..0.005).contains(&bad_share), "bad share {bad_share}");
        // Events of the last three hours cannot come back late within the period.
        assert!((0.0005..0.003).contains(&late_share), "late share {late_share}");
        // The gateway carries the bulk of what users do; the bus, the probes, the
        // providers and the realtime topics carry most of the rest.
        let gateway = summary.topics["gateway.requests"].messages as f64;
        let share = gateway / summary.total_messages() as f64;
        assert!((0.3..0.6).contains(&share), "gateway share {share}");
    }

    /// The valid events of the topics §3.5's tables read, as JSON objects per topic.
    fn valid_events(opts: &GenerateOptions) -> HashMap<String, Vec<serde_json::Map<String, Value>>> {
        let registry = registry();
        let mut events: HashMap<String, Vec<_>> = HashMap::new();
        generate(&registry, opts, &mut |m| {
            let schema = registry.get(m.topic).unwrap();
            if let Some(payload) = m.payload.filter(|p| schema.kind == TopicKind::Event && check(schema, p).is_none()) {
                if let Ok(Value::Object(obj)) = serde_json::from_slice(payload) {
                    events.entry(m.topic.to_owned()).or_default().push(obj);
                }
            }
            Ok(())
        })
        .unwrap();
        events
    }

    fn text<'a>(e: &'a serde_json::Map<String, Value>, field: &str) -> &'a str {
        e.get(field).and_then(Value::as_str).unwrap_or("")
    }

    fn millis(e: &serde_json::Map<String, Value>) -> i64 {
        DateTime::parse_from_rfc3339(text(e, "ts")).unwrap().timestamp_millis()
    }

    /// What the new tables group, order and count must occur in the data, or their
    /// tests would pass over nothing: failed sagas that compensate, steps that tie on
    /// `ts`, collaboration that pauses past the session gap, deliveries of both kinds in
    /// every status, priced AI calls and failures, probes in every state.
    #[test]
    fn the_new_topics_have_the_shapes_their_tables_need() {
        let opts = GenerateOptions { seed: 5, users: 400, hours: 30, ..GenerateOptions::default() };
        let events = valid_events(&opts);
        let topic = |name: &str| events.get(name).map(Vec::as_slice).unwrap_or_default();

        let calls = topic("integration.external_calls");
        for provider in ["azure_openai", "azure_speech", "phonetic_analysis", "third_party"] {
            let of: Vec<_> = calls.iter().filter(|c| text(c, "provider") == provider).collect();
            assert!(of.iter().any(|c| c["success"] == true), "{provider} never succeeds");
            assert!(of.iter().any(|c| c["success"] == false), "{provider} never fails");
        }
        let ai = calls.iter().filter(|c| text(c, "provider") == "azure_openai");
        assert!(ai.clone().all(|c| !text(c, "model").is_empty()), "an AI call without its model");
        assert!(ai.clone().any(|c| c.get("cost_usd").and_then(Value::as_f64).is_some_and(|x| x > 0.0)));
        assert!(ai.clone().any(|c| c.get("prompt_tokens").and_then(Value::as_i64).is_some_and(|x| x > 0)));
        assert!(ai.map(|c| text(c, "model")).collect::<BTreeSet<_>>().len() > 1, "one model only");

        let mut sagas: HashMap<&str, Vec<&serde_json::Map<String, Value>>> = HashMap::new();
        for step in topic("eventbus.saga_steps") {
            sagas.entry(text(step, "saga_id")).or_default().push(step);
        }
        let compensated = sagas.values().filter(|steps| {
            steps.iter().any(|s| text(s, "status") == "failed") && steps.iter().any(|s| text(s, "status") == "compensated")
        });
        assert!(compensated.count() > 0, "no saga failed and compensated");
        assert!(sagas.values().any(|steps| steps.len() >= 6), "no saga of several steps");
        let ties = sagas.values().filter(|steps| {
            let times: BTreeSet<i64> = steps.iter().map(|s| millis(s)).collect();
            times.len() < steps.len()
        });
        assert!(ties.count() > 0, "no saga whose steps tie on ts");

        let checks = topic("monitoring.health_checks");
        let states: BTreeSet<&str> = checks.iter().map(|c| text(c, "status")).collect();
        assert_eq!(states.len(), 3, "{states:?}");
        let probed: BTreeSet<(&str, &str)> = checks.iter().map(|c| (text(c, "service"), text(c, "dependency"))).collect();
        assert!(probed.len() >= 18, "{} service-dependency pairs", probed.len());

        let mut collab: HashMap<&str, Vec<i64>> = HashMap::new();
        for e in topic("realtime.collaboration") {
            collab.entry(text(e, "collab_session_id")).or_default().push(millis(e));
        }
        collab.values_mut().for_each(|times| times.sort_unstable());
        let paused = collab.values().filter(|times| times.windows(2).any(|w| w[1] - w[0] > 30 * 60_000));
        assert!(paused.count() > 0, "no collaboration pauses past the 30-minute gap");
        let kinds: BTreeSet<&str> = topic("realtime.collaboration").iter().map(|e| text(e, "kind")).collect();
        assert_eq!(kinds.len(), 5, "{kinds:?}");

        let deliveries: BTreeSet<(&str, &str)> =
            topic("realtime.deliveries").iter().map(|d| (text(d, "kind"), text(d, "status"))).collect();
        assert_eq!(deliveries.len(), 8, "{deliveries:?}");

        assert!(!topic("eventbus.replays").is_empty(), "no replay");
        let hubs = topic("realtime.connections").iter().filter(|c| !text(c, "hub").is_empty()).count();
        assert!(hubs > 0, "no connection names its hub");
    }
}
