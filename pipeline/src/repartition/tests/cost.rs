//! What the repartition topic costs, in bytes per event, measured over generated
//! traffic for the platform's own query (README, Several instances). A
//! measurement, not a check: run by hand, it prints its figures.

use std::path::Path;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::TimestampMicrosecondType;

use crate::repartition::{Partial, Upstream};
use crate::generate::{generate, GenerateOptions};
use crate::decode::testing::registry;
use crate::window::testing::{aggregate_input_of, windowed};
use crate::window::Windows;

/// Partitions of the repartition topic (the group's shards).
const PARTITIONS: u32 = 6;
/// An epoch per second of event time: a pipeline keeping up with live traffic.
const EPOCH: i64 = 1_000_000;

#[tokio::test]
#[ignore = "a measurement: cargo nextest run -p sluice --lib bytes_per_event --run-ignored only --no-capture"]
async fn bytes_per_event_of_the_repartition_topic() {
    // The generator's platform, and one ten times as busy.
    for users in [3_000, 30_000] {
        measure(users, 4).await;
    }
}

async fn measure(users: u32, hours: u32) {
    let table = "monitoring/api_performance/request_response_times";
    let sql = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../sql/{table}.sql"))).unwrap();
    let (query, spec) = windowed(&sql).await;
    let registry = registry();
    let topic = registry.get("gateway.requests").unwrap().clone();
    let delay = topic.out_of_orderness.as_micros() as i64;
    // Each of the topic's partitions is an upstream, as with one instance per partition.
    let mut payloads: Vec<Vec<Vec<u8>>> = vec![Vec::new(); topic.partitions as usize];
    let options = GenerateOptions { users, hours, ..Default::default() };
    generate(&registry, &options, &mut |m| {
        if let (true, Some(payload)) = (m.topic == topic.topic, m.payload) {
            payloads[m.partition as usize].push(payload.to_vec());
        }
        Ok(())
    })
    .unwrap();

    let (mut events, mut late, mut input_bytes, mut epochs, mut messages) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let (mut header_bytes, mut state_bytes, mut state_rows, mut state_messages) = (0usize, 0usize, 0usize, 0usize);
    let mut schema_bytes = 0;
    for (upstream, payloads) in payloads.iter().enumerate() {
        input_bytes += payloads.iter().map(Vec::len).sum::<usize>();
        let lines: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
        let (batches, _) = aggregate_input_of(&query, &lines).await;
        let rows = concat_batches(&batches[0].schema(), &batches).unwrap();
        let times = spec.time.evaluate(&rows).unwrap().into_array(rows.num_rows()).unwrap();
        let times = times.as_primitive::<TimestampMicrosecondType>().clone();
        let mut windows = Windows::new(spec.clone());
        let mut sender = Upstream::new(upstream as u32, PARTITIONS, &spec, &query.fingerprint, i64::MIN);
        let (mut latest, mut watermark, mut from, mut epoch) = (i64::MIN, i64::MIN, 0, 0);
        let mut epoch_ends = i64::MIN;
        for row in 0..=rows.num_rows() {
            let last = row == rows.num_rows();
            let ts = if last || times.is_null(row) { None } else { Some(times.value(row)) };
            if !last && ts.is_none_or(|ts| ts < epoch_ends) {
                latest = latest.max(ts.unwrap_or(i64::MIN));
                continue;
            }
            if row > from {
                // The epoch of rows [from, row): late rows left out, as the runtime does.
                let on_time: BooleanArray = (from..row).map(|r| Some(times.is_valid(r) && windows.late_from(times.value(r)) > watermark)).collect();
                late += on_time.false_count();
                let slice = filter_record_batch(&rows.slice(from, row - from), &on_time).unwrap();
                events += slice.num_rows();
                windows.update(&slice).unwrap();
                watermark = if last { i64::MAX } else { latest.saturating_sub(delay) };
                epoch += 1;
                for (_, partial) in sender.partials(&mut windows, watermark, epoch, "12345-1772323200000000").unwrap() {
                    let states = &partial.states;
                    state_rows += states.as_ref().map_or(0, |s| s.num_rows());
                    state_messages += usize::from(states.is_some());
                    if let (0, Some(states)) = (schema_bytes, states) {
                        let empty = Partial { states: Some(states.slice(0, 0)), ..partial.clone() };
                        schema_bytes = empty.encode().unwrap().1.map_or(0, |v| v.len());
                    }
                    let (headers, value) = partial.encode().unwrap();
                    header_bytes += headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                    state_bytes += value.map_or(0, |v| v.len());
                    messages += 1;
                }
            }
            if let Some(ts) = ts {
                latest = latest.max(ts);
                (from, epoch_ends) = (row, ts.saturating_add(EPOCH));
            }
        }
        epochs += epoch as usize;
    }
    let per_event = |bytes: usize| bytes as f64 / events as f64;
    println!("{table}, {users} users: {events} events ({late} late) from {} upstreams over {} h, {epochs} epochs, {messages} messages to {PARTITIONS} partitions", payloads.len(), options.hours);
    println!("  input: {:.0} bytes/event (JSON)", per_event(input_bytes));
    println!("  states: {state_rows} rows in {state_messages} messages, {state_bytes} bytes: {:.1} bytes/event, of which the schema {schema_bytes} bytes per message", per_event(state_bytes));
    println!("  headers: {:.0} bytes/message, {:.1} bytes/event", header_bytes as f64 / messages as f64, per_event(header_bytes));
    println!("  in all: {:.1} bytes/event", per_event(state_bytes + header_bytes));
    assert!(events > 10_000 && state_rows > 0, "the traffic must reach the query");
}
