//! The current-state operator against the contract's rules for
//! `active_connections`, computed here independently: per connection, its events
//! sorted by time (a close after the other events of its instant), the row being
//! what follows the last close.

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use datafusion::physical_plan::collect;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::catalog::TablePath;
use crate::decode::testing::{raw, registry};
use crate::decode::TopicDecoder;
use crate::plan::{plan, Shape, SqlFile, StreamingQuery};

const SECOND: i64 = 1_000_000;
const T0: i64 = 1_772_323_200_000_000;

async fn planned() -> StreamingQuery {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql/real_time/connection_management/active_connections.sql");
    let sql = std::fs::read_to_string(&path).unwrap();
    let file = SqlFile { path, table: TablePath::new("real_time/connection_management/active_connections").unwrap(), sql };
    plan(&file, &crate::runtime::input_tables(&registry()), &Default::default()).await.unwrap()
}

fn operator(query: &StreamingQuery) -> CurrentState {
    let Shape::Current { spec, .. } = &query.shape else { panic!("not a current-state query") };
    CurrentState::new(spec.clone()).unwrap()
}

fn event(connection: u32, ts: i64, action: &str, hub: Option<&str>) -> String {
    let iso = chrono::DateTime::from_timestamp_micros(ts).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let hub = hub.map(|h| format!(r#","hub":"{h}""#)).unwrap_or_default();
    format!(
        r#"{{"event_id":"e","ts":"{iso}","connection_id":"conn-{connection}","user_id":"u-{connection}","session_id":"s-{connection}","transport":"signalr","action":"{action}"{hub}}}"#
    )
}

async fn feed(query: &StreamingQuery, state: &mut CurrentState, lines: &[String]) {
    let Shape::Current { input, .. } = &query.shape else { panic!("not a current-state query") };
    let decoder = TopicDecoder::new(registry().get("realtime.connections").unwrap().clone());
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let decoded = decoder.decode(&raw("realtime.connections", &lines)).unwrap();
    assert!(decoded.dead_letters.is_empty(), "{:?}", decoded.dead_letters);
    query.inputs[0].1.fill(vec![decoded.batch]);
    for b in collect(input.clone(), query.task_ctx.clone()).await.unwrap() {
        state.update(&b).unwrap();
    }
}

/// The table: connection → (opened_at, last_event_at, messages, hub), through the query's own output plan.
async fn table(query: &StreamingQuery, state: &mut CurrentState) -> BTreeMap<String, (Option<i64>, i64, i64, Option<String>)> {
    let Shape::Current { output, output_slot, .. } = &query.shape else { panic!("not a current-state query") };
    let Some(rows) = state.take_rows().unwrap() else { return BTreeMap::new() };
    output_slot.fill(vec![rows]);
    let mut out = BTreeMap::new();
    for b in collect(output.clone(), query.task_ctx.clone()).await.unwrap() {
        let col = |name: &str| b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}")).clone();
        let (ids, opened, last, messages, hubs) = (col("connection_id"), col("opened_at"), col("last_event_at"), col("messages"), col("hub"));
        let ids = arrow::compute::cast(&ids, &arrow::datatypes::DataType::Utf8).unwrap();
        let hubs = arrow::compute::cast(&hubs, &arrow::datatypes::DataType::Utf8).unwrap();
        for r in 0..b.num_rows() {
            let opened = opened.as_primitive::<TimestampMicrosecondType>();
            out.insert(
                ids.as_string::<i32>().value(r).to_string(),
                (
                    opened.is_valid(r).then(|| opened.value(r)),
                    last.as_primitive::<TimestampMicrosecondType>().value(r),
                    messages.as_primitive::<Int64Type>().value(r),
                    hubs.as_string::<i32>().is_valid(r).then(|| hubs.as_string::<i32>().value(r).to_string()),
                ),
            );
        }
    }
    out
}

#[tokio::test]
async fn a_close_removes_the_row_and_a_later_event_starts_it_afresh() {
    let query = planned().await;
    let mut state = operator(&query);
    let at = |s: i64| T0 + s * SECOND;
    feed(&query, &mut state, &[event(1, at(0), "open", Some("chatHub")), event(1, at(5), "message", None), event(1, at(9), "message", None)]).await;
    let rows = table(&query, &mut state).await;
    assert_eq!(rows["conn-1"], (Some(at(0)), at(9), 2, Some("chatHub".into())), "the latest non-null hub");
    assert!(state.take_rows().unwrap().is_none(), "nothing changed, nothing to rewrite");

    // A close at 10, then an event at 7 arriving late (before the close: ignored),
    // and one at 10 (the same instant: the close comes after it).
    feed(&query, &mut state, &[event(1, at(10), "close", None), event(1, at(7), "message", None), event(1, at(10), "message", None)]).await;
    assert!(table(&query, &mut state).await.is_empty(), "closed: no row");
    // A message after the close starts the row afresh: no open seen since, one message.
    feed(&query, &mut state, &[event(1, at(12), "message", None)]).await;
    assert_eq!(table(&query, &mut state).await["conn-1"], (None, at(12), 1, None));
    // Out of order within the allowance: an open at 11 arriving after the message at 12.
    feed(&query, &mut state, &[event(1, at(11), "open", Some("learningHub"))]).await;
    assert_eq!(table(&query, &mut state).await["conn-1"], (Some(at(11)), at(12), 1, Some("learningHub".into())));
    // A close arriving late, at 11.5 s: the open before it goes, the message after it stays.
    feed(&query, &mut state, &[event(1, at(11) + SECOND / 2, "close", None)]).await;
    assert_eq!(table(&query, &mut state).await["conn-1"], (None, at(12), 1, None));
}

#[tokio::test]
async fn the_state_matches_a_sorted_replay_whatever_the_order_batches_and_restarts() {
    let query = planned().await;
    let mut rng = SmallRng::seed_from_u64(11);
    // 200 connections, each a few lives: open, messages, close (the last life maybe not closed).
    let mut events: Vec<(u32, i64, &str)> = Vec::new();
    for connection in 0..200u32 {
        let mut t = T0 + rng.random_range(0..3_600) * SECOND;
        for life in 0..rng.random_range(1..4) {
            if rng.random_bool(0.8) {
                events.push((connection, t, "open"));
            }
            for _ in 0..rng.random_range(0..6) {
                t += rng.random_range(0..30) * SECOND;
                events.push((connection, t, "message"));
            }
            if life < 2 || rng.random_bool(0.5) {
                t += rng.random_range(0..20) * SECOND;
                events.push((connection, t, "close"));
            }
            t += rng.random_range(1..60) * SECOND;
        }
    }
    // Expected, from the rules: per connection, events by time with a close after
    // the others of its instant; the row is what follows the last close.
    let mut expected: BTreeMap<String, (Option<i64>, i64, i64, Option<String>)> = BTreeMap::new();
    let mut by_connection: BTreeMap<u32, Vec<(i64, bool)>> = BTreeMap::new();
    for (c, t, action) in &events {
        by_connection.entry(*c).or_default().push((*t, *action == "close"));
    }
    let actions: BTreeMap<(u32, i64), Vec<&str>> = events.iter().fold(BTreeMap::new(), |mut m, (c, t, a)| {
        m.entry((*c, *t)).or_insert_with(Vec::new).push(*a);
        m
    });
    for (c, mut times) in by_connection {
        times.sort();
        let after = match times.iter().rposition(|(_, close)| *close) {
            Some(i) => times.iter().filter(|(t, close)| !close && *t > times[i].0).copied().collect::<Vec<_>>(),
            None => times,
        };
        if after.is_empty() {
            continue;
        }
        let opened = after.iter().filter(|(t, _)| actions[&(c, *t)].contains(&"open")).map(|(t, _)| *t).min();
        let messages: i64 = after.iter().map(|(t, _)| *t).collect::<std::collections::BTreeSet<_>>().iter().map(|t| actions[&(c, *t)].iter().filter(|a| **a == "message").count() as i64).sum();
        let last = after.iter().map(|(t, _)| *t).max().unwrap();
        expected.insert(format!("conn-{c}"), (opened, last, messages, Some("h".into())));
    }
    // Arrival in random order, random batches, restarts (snapshot and restore) along the way.
    for i in (1..events.len()).rev() {
        events.swap(i, rng.random_range(0..=i));
    }
    let mut state = operator(&query);
    for chunk in events.chunks(rng.random_range(20..120)) {
        let lines: Vec<String> = chunk.iter().map(|(c, t, a)| event(*c, *t, a, Some("h"))).collect();
        feed(&query, &mut state, &lines).await;
        if rng.random_bool(0.3) {
            let saved = state.snapshot().unwrap();
            state = operator(&query);
            if let Some(saved) = saved {
                state.restore(&saved).unwrap();
            }
            state.changed = true;
        }
    }
    state.changed = true;
    let actual = table(&query, &mut state).await;
    assert_eq!(actual.len(), expected.len(), "live connections");
    for (connection, want) in &expected {
        assert_eq!(actual.get(connection), Some(want), "{connection}");
    }
}
