//! The message an upstream sends one repartition partition each epoch: the states
//! of the panes its watermark passed whose keys hash there, and that watermark.
//! State and marker travel together, so a pane and the watermark that made it
//! final are folded together or not at all.
//!
//! On the wire: the states as an Arrow IPC stream in the value (none if no pane
//! passed), the rest in headers, as text that `kcat` shows as it is. Large states
//! go in several messages, the parts of one partial (`sluice-part: i/n`).

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::{Error, Result};

const UPSTREAM: &str = "sluice-upstream";
const EPOCH: &str = "sluice-epoch";
const WRITER: &str = "sluice-writer";
const WATERMARK: &str = "sluice-watermark";
const PLAN: &str = "sluice-plan";
const PART: &str = "sluice-part";

/// A message's headers as sent: name and text.
pub type Headers = Vec<(&'static str, String)>;

/// One upstream's contribution to one repartition partition for one epoch.
#[derive(Debug, Clone)]
pub struct Partial {
    /// The upstream that sent it, `0..upstreams`.
    pub upstream: u32,
    /// The upstream's epoch it belongs to.
    pub epoch: i64,
    /// The fingerprint of the plan that computed the states: states of another
    /// plan may have the same types and mean something else (a `max` for a `min`).
    pub plan: String,
    /// The upstream run that sent it ([`CheckpointStore::writer`](crate::checkpoint::CheckpointStore::writer)).
    pub writer: String,
    /// The upstream's watermark after the epoch: it has sent every pane ending by it.
    pub watermark: i64,
    /// State rows (`window_start`, the keys, each aggregate's state), if any pane passed.
    pub states: Option<RecordBatch>,
    /// Which part of the epoch's states for the partition this is, of how many:
    /// a broker takes messages of a bounded size, and a catch-up epoch's states
    /// can be larger. The watermark counts once the last part is folded.
    pub part: u32,
    pub parts: u32,
}

impl Partial {
    /// The message's headers and value.
    pub fn encode(&self) -> Result<(Headers, Option<Vec<u8>>)> {
        let headers = vec![
            (UPSTREAM, self.upstream.to_string()),
            (EPOCH, self.epoch.to_string()),
            (WRITER, self.writer.clone()),
            (WATERMARK, self.watermark.to_string()),
            (PLAN, self.plan.clone()),
        ];
        let mut headers = headers;
        if self.parts > 1 {
            headers.push((PART, format!("{}/{}", self.part, self.parts)));
        }
        let value = match &self.states {
            Some(states) => {
                let mut bytes = Vec::new();
                let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &states.schema())?;
                writer.write(states)?;
                writer.finish()?;
                drop(writer);
                Some(bytes)
            }
            None => None,
        };
        Ok((headers, value))
    }

    /// Reads a message as [`encode`](Self::encode) wrote it; `at` names it in errors
    /// (topic, partition and offset).
    pub fn decode(headers: &[(&str, Option<&[u8]>)], value: Option<&[u8]>, at: &str) -> Result<Partial> {
        let header = |name: &str| -> Result<&str> {
            let (_, found) = headers
                .iter()
                .find(|(key, _)| *key == name)
                .ok_or_else(|| Error::Input(format!("{at}: not a partial window state: no `{name}` header")))?;
            std::str::from_utf8(found.unwrap_or_default()).map_err(|_| Error::Input(format!("{at}: header `{name}` is not UTF-8")))
        };
        let number = |name: &str| -> Result<i64> {
            let text = header(name)?;
            text.parse().map_err(|_| Error::Input(format!("{at}: header `{name}` is `{text}`, not a number")))
        };
        let upstream = number(UPSTREAM)?;
        let upstream = u32::try_from(upstream).map_err(|_| Error::Input(format!("{at}: upstream {upstream} is out of range")))?;
        let states = match value {
            None | Some([]) => None,
            Some(bytes) => Some(crate::ipc::read_stream(bytes).map_err(|e| Error::Input(format!("{at}: the states are not a whole Arrow IPC stream: {e}")))?),
        };
        // `i/n`; a message without it is the whole.
        let (part, parts) = match headers.iter().find(|(key, _)| *key == PART) {
            None => (0, 1),
            Some(_) => {
                let text = header(PART)?;
                let parsed = text.split_once('/').and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u32>().ok()?)));
                match parsed {
                    Some((part, parts)) if part < parts => (part, parts),
                    _ => return Err(Error::Input(format!("{at}: header `{PART}` is `{text}`, not `<part>/<parts>` with part < parts"))),
                }
            }
        };
        Ok(Partial {
            part,
            parts,
            upstream,
            epoch: number(EPOCH)?,
            plan: header(PLAN)?.to_string(),
            writer: header(WRITER)?.to_string(),
            watermark: number(WATERMARK)?,
            states,
        })
    }
}

/// State rows split by the repartition partition their GROUP BY key hashes to: one
/// entry per partition, `None` where no key goes. The key columns follow
/// `window_start`; `keys` of them. A query without keys has one group, which goes
/// to partition 0.
///
/// The hash (FNV-1a of each key's text) depends on neither the build nor the Arrow
/// version, so instances of different builds send a key to the same partition.
pub fn split_by_key(states: &RecordBatch, keys: usize, partitions: u32) -> Result<Vec<Option<RecordBatch>>> {
    let partitions = partitions.max(1) as usize;
    if states.num_columns() <= keys {
        return Err(Error::Internal(format!("state rows of {} columns cannot hold {keys} keys after window_start", states.num_columns())));
    }
    let options = FormatOptions::default();
    let formatters = states.columns()[1..=keys]
        .iter()
        .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); partitions];
    let mut text = String::new();
    for row in 0..states.num_rows() {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut add = |bytes: &[u8]| {
            for b in bytes {
                hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (formatter, column) in formatters.iter().zip(&states.columns()[1..=keys]) {
            if column.is_null(row) {
                add(&[0xff]);
            } else {
                text.clear();
                std::fmt::write(&mut text, format_args!("{}", formatter.value(row))).map_err(|e| Error::Internal(e.to_string()))?;
                add(text.as_bytes());
            }
            // A byte no UTF-8 text holds: ("ab", "c") and ("a", "bc") differ.
            add(&[0xfe]);
        }
        rows[(hash % partitions as u64) as usize].push(row as u32);
    }
    rows.into_iter()
        .map(|indices| match indices.len() {
            0 => Ok(None),
            n if n == states.num_rows() => Ok(Some(states.clone())),
            _ => Ok(Some(take_record_batch(states, &UInt32Array::from(indices))?)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn states(services: &[Option<&str>]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("window_start", DataType::Int64, false),
            Field::new("service", DataType::Utf8, true),
            Field::new("count", DataType::Int64, false),
        ]);
        let n = services.len();
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from_value(60, n)),
                Arc::new(StringArray::from(services.to_vec())),
                Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_partial_reads_back_as_it_was_written() {
        let sent = Partial { upstream: 2, epoch: 41, plan: "f00d".into(), writer: "123-456".into(), watermark: -5, states: Some(states(&[Some("auth"), None])), part: 0, parts: 1 };
        let (headers, value) = sent.encode().unwrap();
        let headers: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|(k, v)| (*k, Some(v.as_bytes()))).collect();
        let got = Partial::decode(&headers, value.as_deref(), "t/0@9").unwrap();
        assert_eq!((got.upstream, got.epoch, got.plan.as_str(), got.writer.as_str(), got.watermark), (2, 41, "f00d", "123-456", -5));
        assert_eq!(got.states, sent.states);

        let marker = Partial { states: None, ..sent };
        let (headers, value) = marker.encode().unwrap();
        assert!(value.is_none(), "a marker alone has no value");
        let headers: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|(k, v)| (*k, Some(v.as_bytes()))).collect();
        assert!(Partial::decode(&headers, None, "t/0@9").unwrap().states.is_none());

        let part = Partial { part: 2, parts: 3, ..got };
        let (headers, value) = part.encode().unwrap();
        let headers: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|(k, v)| (*k, Some(v.as_bytes()))).collect();
        let got = Partial::decode(&headers, value.as_deref(), "t/0@9").unwrap();
        assert_eq!((got.part, got.parts, got.states), (2, 3, part.states));
    }

    #[test]
    fn a_message_that_is_not_a_partial_is_refused_with_where_and_why() {
        let good = Partial { upstream: 0, epoch: 1, plan: "p".into(), writer: "w".into(), watermark: 0, states: Some(states(&[Some("a")])), part: 0, parts: 1 };
        let (headers, value) = good.encode().unwrap();
        let value = value.unwrap();
        let all: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|(k, v)| (*k, Some(v.as_bytes()))).collect();
        // Headers, value, what the error must say.
        type Case<'a> = (Vec<(&'a str, Option<&'a [u8]>)>, Option<&'a [u8]>, &'a str);
        let cases: Vec<Case> = vec![
            (all[1..].to_vec(), Some(&value), "no `sluice-upstream` header"),
            (vec![all[0], ("sluice-epoch", Some(b"x1")), all[2], all[3], all[4]], Some(&value), "header `sluice-epoch` is `x1`, not a number"),
            (vec![("sluice-upstream", Some(b"-1")), all[1], all[2], all[3], all[4]], Some(&value), "upstream -1 is out of range"),
            (vec![all[0], all[1], ("sluice-writer", Some(&[0xff, 0xfe])), all[3], all[4]], Some(&value), "header `sluice-writer` is not UTF-8"),
            (all.clone(), Some(b"{\"json\": true}"), "not a whole Arrow IPC stream"),
            ([&all[..], &[("sluice-part", Some(b"3/3"))]].concat(), Some(&value), "header `sluice-part` is `3/3`"),
            ([&all[..], &[("sluice-part", Some(b"1"))]].concat(), Some(&value), "header `sluice-part` is `1`"),
            (all.clone(), Some(&value[..value.len() / 2]), "not a whole Arrow IPC stream"),
            (all.clone(), Some(&value[8..]), "not a whole Arrow IPC stream"),
        ];
        for (headers, value, expected) in cases {
            let e = Partial::decode(&headers, value, "sluice.repartition.g.t/3@17").unwrap_err().to_string();
            assert!(e.contains("sluice.repartition.g.t/3@17") && e.contains(expected), "{expected}: {e}");
        }
    }

    #[test]
    fn every_key_goes_to_one_partition_whatever_the_batch_it_comes_in() {
        let services: Vec<String> = (0..200).map(|i| format!("service-{i}")).collect();
        let mut all: Vec<Option<&str>> = services.iter().map(|s| Some(s.as_str())).collect();
        all.push(None);
        let whole = split_by_key(&states(&all), 1, 4).unwrap();
        let partition_of = |parts: &[Option<RecordBatch>], key: Option<&str>| -> Vec<usize> {
            (0..parts.len())
                .filter(|p| {
                    parts[*p].as_ref().is_some_and(|b| {
                        let column = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                        (0..b.num_rows()).any(|r| (!column.is_null(r)).then(|| column.value(r)) == key)
                    })
                })
                .collect()
        };
        let mut used = [0; 4];
        for key in &all {
            let found = partition_of(&whole, *key);
            assert_eq!(found.len(), 1, "{key:?} in {found:?}");
            used[found[0]] += 1;
            // Alone in a batch, or with others: the same partition.
            assert_eq!(partition_of(&split_by_key(&states(&[*key]), 1, 4).unwrap(), *key), found);
        }
        assert!(used.iter().all(|n| *n > 20), "keys spread over the partitions: {used:?}");
        assert_eq!(whole.iter().flatten().map(RecordBatch::num_rows).sum::<usize>(), all.len());
        // Pinned to FNV-1a of the key's text and a 0xfe separator: a changed hash
        // would send a key's states to two owners while a group is upgraded.
        let fnv = |bytes: &[u8]| bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        for key in ["service-7", "auth", ""] {
            let expected = (fnv(&[key.as_bytes(), &[0xfe]].concat()) % 4) as usize;
            assert_eq!(partition_of(&split_by_key(&states(&[Some(key)]), 1, 4).unwrap(), Some(key)), [expected], "{key:?}");
        }
    }
}
