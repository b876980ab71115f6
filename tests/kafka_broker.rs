//! Self-test of the Kafka test harness (tests/support/kafka.rs): the tansu broker started by
//! `scripts/kafka.sh` does what waly's Kafka log needs, with rdkafka as the client. Topic creation
//! with one partition, idempotent acks=all produce with dense offsets, watermarks, offsets by time,
//! reading back with `assign`, and (durable) everything surviving a broker restart and a SIGKILL.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use support::kafka::{PrivateBroker, broker, unique_topic_prefix};

const TIMEOUT: Duration = Duration::from_secs(10);

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// A consumer for `assign` only: it never joins a group nor commits (librdkafka wants a group.id
/// for some calls anyway).
fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "waly-kafka-broker-test")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

async fn create_topic(bootstrap: &str, topic: &str) {
    let results = admin(bootstrap)
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .expect("create_topics request");
    assert_eq!(results.len(), 1);
    if let Err((name, code)) = &results[0] {
        panic!("create_topics {name}: {code:?}");
    }
}

/// The partition count the broker's metadata reports for `topic`.
fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let c = consumer(bootstrap);
    let md = c.fetch_metadata(Some(topic), TIMEOUT).expect("metadata");
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic in metadata");
    assert!(
        t.error().is_none(),
        "metadata error for {topic}: {:?}",
        t.error()
    );
    t.partitions().len()
}

/// Produces `payload` with timestamp `ts` to partition 0; returns its offset and how long the acked
/// produce took.
async fn produce(p: &FutureProducer, topic: &str, payload: &str, ts: i64) -> (i64, Duration) {
    let started = Instant::now();
    let delivery = p
        .send(
            FutureRecord::<(), _>::to(topic)
                .partition(0)
                .payload(payload)
                .timestamp(ts),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce {payload}: {e}"));
    assert_eq!(delivery.partition, 0);
    (delivery.offset, started.elapsed())
}

/// Reads `n` messages of partition 0 from the beginning: (offset, payload, timestamp).
fn read_all(bootstrap: &str, topic: &str, n: usize) -> Vec<(i64, String, Option<i64>)> {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => got.push((
                m.offset(),
                String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap(),
                m.timestamp().to_millis(),
            )),
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    got
}

/// The offset of the first record at or after `ts` (ms), as the broker answers ListOffsets by time.
fn offset_for_time(bootstrap: &str, topic: &str, ts: i64) -> Offset {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(ts))
        .unwrap();
    let res = c
        .offsets_for_times(tpl, TIMEOUT)
        .expect("offsets_for_times");
    let elem = res.find_partition(topic, 0).expect("partition in answer");
    elem.error().expect("no per-partition error");
    elem.offset()
}

fn watermarks(bootstrap: &str, topic: &str) -> (i64, i64) {
    consumer(bootstrap)
        .fetch_watermarks(topic, 0, TIMEOUT)
        .expect("fetch_watermarks")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The shared broker: create, produce idempotently with acks=all, offsets dense from 0.
#[tokio::test(flavor = "multi_thread")]
async fn shared_broker_produces_dense_offsets() {
    let b = broker();
    let topic = format!("{}mem", unique_topic_prefix());
    create_topic(&b.bootstrap(), &topic).await;
    assert_eq!(partition_count(&b.bootstrap(), &topic), 1);

    let p = producer(&b.bootstrap());
    let base = now_ms();
    let mut offsets = Vec::new();
    for i in 0..5 {
        let (offset, took) = produce(&p, &topic, &format!("m{i}"), base + i).await;
        eprintln!("shared broker: produce m{i} -> offset {offset} in {took:?}");
        offsets.push(offset);
    }
    assert_eq!(offsets, vec![0, 1, 2, 3, 4], "offsets are dense from 0");
    assert_eq!(watermarks(&b.bootstrap(), &topic), (0, 5));
    let read: Vec<_> = read_all(&b.bootstrap(), &topic, 5)
        .into_iter()
        .map(|(o, p, _)| (o, p))
        .collect();
    assert_eq!(
        read,
        (0..5).map(|i| (i, format!("m{i}"))).collect::<Vec<_>>()
    );
}

/// A durable private broker: what was acked survives a graceful restart and a SIGKILL, the same
/// producer goes on after the restart, and offsets stay dense.
#[tokio::test(flavor = "multi_thread")]
async fn durable_broker_keeps_records_across_restart_and_kill() {
    let b = PrivateBroker::start(true);
    let bootstrap = b.bootstrap();
    let topic = format!("{}durable", unique_topic_prefix());
    create_topic(&bootstrap, &topic).await;
    assert_eq!(partition_count(&bootstrap, &topic), 1);

    let p = producer(&bootstrap);
    let base = now_ms() - 60_000;
    for i in 0..3 {
        let (offset, took) = produce(&p, &topic, &format!("m{i}"), base + 1000 * i).await;
        eprintln!("durable broker: produce m{i} -> offset {offset} in {took:?}");
        assert_eq!(offset, i, "offsets are dense from 0");
    }
    assert_eq!(watermarks(&bootstrap, &topic), (0, 3));

    b.restart();
    assert_eq!(
        partition_count(&bootstrap, &topic),
        1,
        "the topic survives a restart"
    );
    // Creating it again is refused the Kafka way, which lets a client create its topics idempotently.
    let again = admin(&bootstrap)
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .expect("create_topics request");
    assert!(
        matches!(&again[..], [Err((_, RDKafkaErrorCode::TopicAlreadyExists))]),
        "create an existing topic: {again:?}"
    );
    assert_eq!(watermarks(&bootstrap, &topic), (0, 3), "after restart");
    let read = read_all(&bootstrap, &topic, 3);
    assert_eq!(
        read,
        (0..3)
            .map(|i| (i, format!("m{i}"), Some(base + 1000 * i)))
            .collect::<Vec<_>>(),
        "the records, in order, with their timestamps"
    );

    // ListOffsets by time: the first record at or after the time; past the last one, the end.
    assert_eq!(offset_for_time(&bootstrap, &topic, base), Offset::Offset(0));
    assert_eq!(
        offset_for_time(&bootstrap, &topic, base + 500),
        Offset::Offset(1)
    );
    assert_eq!(
        offset_for_time(&bootstrap, &topic, base + 2000),
        Offset::Offset(2)
    );
    // Past the last record Kafka answers -1 (Offset::End); tansu 0.6.0 answers offset 0 instead, so
    // nothing may rely on this case: compare with the high watermark first.
    let past_end = offset_for_time(&bootstrap, &topic, base + 10_000);
    eprintln!("durable broker: offsets_for_times past the end -> {past_end:?}");

    // The producer created before the restart reconnects by itself and goes on, densely.
    let (offset, took) = produce(&p, &topic, "m3", base + 3000).await;
    eprintln!("durable broker: produce m3 after restart -> offset {offset} in {took:?}");
    assert_eq!(offset, 3);

    // SIGKILL: what was acked is still there.
    b.kill9();
    assert!(!b.is_running());
    b.start_again();
    assert_eq!(watermarks(&bootstrap, &topic), (0, 4), "after SIGKILL");
    let (offset, _) = produce(&p, &topic, "m4", base + 4000).await;
    assert_eq!(offset, 4);
    let read: Vec<_> = read_all(&bootstrap, &topic, 5)
        .into_iter()
        .map(|(o, p, _)| (o, p))
        .collect();
    assert_eq!(
        read,
        (0..5).map(|i| (i, format!("m{i}"))).collect::<Vec<_>>()
    );
}
