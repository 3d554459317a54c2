//! Partials through a real broker (Tansu, as `infra/test.sh` starts it): headers and
//! Arrow values come back as they were sent, and the merged windows hold what the
//! requests themselves give, though an epoch died after sending its partials.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::checkpoint::{Checkpoint, Committer};
use crate::repartition::{Merger, Partial, Upstream};
use crate::window::testing::{aggregate_input, assert_stats, emitted_stats, expected_stats, request, stats_sql, windowed, Request};
use crate::window::Windows;

const PARTITIONS: i32 = 6;
const MINUTE: i64 = 60_000_000;
const T0: i64 = 1_772_323_200_000_000;

#[tokio::test]
async fn partials_cross_a_real_broker_and_merge_into_one_process_rows() {
    let brokers = std::env::var("SLUICE_KAFKA_BROKERS").expect("SLUICE_KAFKA_BROKERS is unset: run the suite with infra/test.sh, which starts a broker");
    let topic = format!("sluice.repartition.test-{}-{}.a_b_c", std::process::id(), chrono::Utc::now().timestamp_micros());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    for created in admin.create_topics(&[NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap() {
        created.unwrap();
    }
    let (query, spec) = windowed(&stats_sql("tumble(interval '1 minute')")).await;
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let mut rng = SmallRng::seed_from_u64(5);

    // Three upstreams, 900 requests each over 15 minutes, sent in epochs of 300.
    // Upstream 1's second epoch dies after sending; its next run sends it again
    // from other batches (250 requests, then on).
    let mut all: Vec<Request> = Vec::new();
    let mut manifests = vec![Checkpoint::default(); 3];
    for (u, manifest) in manifests.iter_mut().enumerate() {
        let requests: Vec<Request> = (0..900)
            .map(|i| {
                let ts = T0 + i as i64 * MINUTE / 60 + rng.random_range(0..5_000_000);
                request(&mut rng, u * 1000 + i, ts)
            })
            .collect();
        all.extend(requests.iter().cloned());
        let mut attempts: Vec<(&str, usize, usize, bool)> = vec![("run0", 0, 300, true)];
        if u == 1 {
            attempts.extend([("run0", 300, 600, false), ("run1", 300, 550, true), ("run1", 550, 900, true)]);
        } else {
            attempts.extend([("run0", 300, 600, true), ("run0", 600, 900, true)]);
        }
        let (mut committed, mut sent): (Option<arrow::array::RecordBatch>, i64) = (None, i64::MIN);
        for (run, from, to, commits) in attempts {
            let mut windows = Windows::new(spec.clone());
            if let Some(rows) = &committed {
                windows.restore(rows).unwrap();
            }
            for batch in aggregate_input(&query, &requests[from..to]).await {
                windows.update(&batch).unwrap();
            }
            let watermark = if to == requests.len() { i64::MAX } else { requests[to - 1].0 - 10_000_000 };
            let (epoch, writer) = (manifest.epoch + 1, format!("u{u}-{run}"));
            let mut upstream = Upstream::new(u as u32, PARTITIONS as u32, &spec, &query.fingerprint, sent);
            for (p, partial) in upstream.partials(&mut windows, watermark, epoch, &writer).unwrap() {
                let (headers, value) = partial.encode().unwrap();
                let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(value.as_bytes()) }));
                let mut record = BaseRecord::<(), [u8]>::to(&topic).partition(p as i32).headers(headers);
                if let Some(value) = &value {
                    record = record.payload(value);
                }
                producer.send(record).map_err(|(e, _)| e).unwrap();
            }
            producer.flush(Duration::from_secs(10)).unwrap();
            if commits {
                Committer::record(&mut manifest.committers, epoch, &writer);
                manifest.epoch = epoch;
                (committed, sent) = (windows.snapshot().unwrap(), watermark);
            }
        }
    }

    let mut merged = Vec::new();
    for p in 0..PARTITIONS {
        let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "unused").set("enable.auto.commit", "false").create().unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let (_, end) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)).unwrap();
        let mut merger = Merger::new(spec.clone(), &query.fingerprint, 3);
        let mut next = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while next < end {
            assert!(std::time::Instant::now() < deadline, "partition {p}: read {next} of {end}");
            let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
            let message = message.unwrap();
            let headers: Vec<(&str, Option<&[u8]>)> = message.headers().map(|h| h.iter().map(|h| (h.key, h.value)).collect()).unwrap_or_default();
            let partial = Partial::decode(&headers, message.payload(), &format!("{topic}/{p}@{}", message.offset())).unwrap();
            merger.receive(message.offset(), partial).unwrap();
            next = message.offset() + 1;
        }
        assert_eq!(end, 3 + 4 + 3, "partition {p}: one partial per upstream attempt at an epoch");
        for u in merger.waiting().collect::<Vec<_>>() {
            merger.decide(u, &manifests[u as usize]).unwrap();
        }
        assert_eq!(merger.waiting().count(), 0);
        assert_eq!(merger.watermark(), i64::MAX, "partition {p}: every upstream's last marker");
        merged.extend(merger.close().unwrap());
    }

    assert!(merged.iter().map(|b| b.num_rows()).sum::<usize>() > 40, "windows of 15 minutes and 3 services");
    assert_stats(&emitted_stats(&merged), &expected_stats(&all, MINUTE, MINUTE), "through Tansu");
}
