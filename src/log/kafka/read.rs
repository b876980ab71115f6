//! Reading a topic: partition 0 assigned directly (no consumer group, nothing committed), from an offset,
//! up to the high watermark, which with `acks=all` is what the brokers hold durably.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use super::kafka_error;
use crate::log::{Entry, LogError, Position};

/// One topic's reader. Its consumer is created at first use and kept; calls run on blocking threads.
pub(super) struct TopicReader {
    topic: String,
    config: ClientConfig,
    timeout: Duration,
    consumer: Arc<Mutex<Option<BaseConsumer>>>,
}

impl TopicReader {
    pub(super) fn new(topic: String, config: ClientConfig, timeout: Duration) -> TopicReader {
        TopicReader {
            topic,
            config,
            timeout,
            consumer: Arc::default(),
        }
    }

    /// Runs `f` with the consumer on a blocking thread.
    async fn with_consumer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BaseConsumer, &str, Duration) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let (slot, config, topic, timeout) = (
            Arc::clone(&self.consumer),
            self.config.clone(),
            self.topic.clone(),
            self.timeout,
        );
        tokio::task::spawn_blocking(move || {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(
                    config
                        .create()
                        .map_err(|e| kafka_error("cannot create a Kafka reader", &e))?,
                );
            }
            let consumer = slot.as_ref().expect("created above");
            let result = f(consumer, &topic, timeout);
            if result.is_err() {
                // Start afresh next time: a consumer that failed may hold a stale assignment.
                *slot = None;
            }
            result
        })
        .await
        .map_err(|e| LogError::Unavailable {
            detail: e.to_string(),
        })?
    }

    /// The offset after the last record (the high watermark); 0 for a topic that does not exist yet.
    pub(super) async fn high_watermark(&self) -> Result<i64, LogError> {
        self.with_consumer(high_watermark).await
    }

    pub(super) async fn read(&self, from: Position, max: usize) -> Result<Vec<Entry>, LogError> {
        self.with_consumer(move |c, topic, timeout| {
            let high = high_watermark(c, topic, timeout)?;
            let start = from.0.max(1) as i64 - 1;
            if start >= high || max == 0 {
                return Ok(Vec::new());
            }
            let want = (max as i64).min(high - start) as usize;
            let entries = read_run(c, topic, start, want, timeout)?;
            if entries.is_empty() {
                return Err(LogError::Unavailable {
                    detail: format!(
                        "topic {topic}: no record arrived within {} ms from offset {start} (high watermark {high})",
                        timeout.as_millis()
                    ),
                });
            }
            Ok(entries)
        })
        .await
    }

    /// The first position whose timestamp is at or after `timestamp_micros`. The brokers' answer
    /// (ListOffsets by time) is checked against the records on either side of it, because not every
    /// Kafka-protocol broker answers it exactly (tansu 0.6 answers 0 for a time past the last record);
    /// when the check fails, a binary search over the records' timestamps decides.
    pub(super) async fn position_at(
        &self,
        timestamp_micros: i64,
    ) -> Result<Option<Position>, LogError> {
        self.with_consumer(move |c, topic, timeout| {
            let target_ms = timestamp_micros.div_euclid(1000);
            let high = high_watermark(c, topic, timeout)?;
            if high == 0 {
                return Ok(None);
            }
            let mut query = TopicPartitionList::new();
            query
                .add_partition_offset(topic, 0, Offset::Offset(target_ms))
                .map_err(|e| kafka_error("cannot look a time up", &e))?;
            let answer = c
                .offsets_for_times(query, timeout)
                .map_err(|e| kafka_error(format!("cannot look a time up in topic {topic}"), &e))?
                .find_partition(topic, 0)
                .map(|p| p.offset());
            let candidate = match answer {
                Some(Offset::Offset(o)) if (0..high).contains(&o) => o,
                _ => high,
            };
            // The answer is right if the record at it is recent enough and the one before it is not.
            let at_ok =
                candidate == high || timestamp_at(c, topic, candidate, timeout)? >= target_ms;
            let before_ok =
                candidate == 0 || timestamp_at(c, topic, candidate - 1, timeout)? < target_ms;
            let first = if at_ok && before_ok {
                candidate
            } else {
                let (mut lo, mut hi) = (0, high);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if timestamp_at(c, topic, mid, timeout)? >= target_ms {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                lo
            };
            Ok((first < high).then(|| Position(first as u64 + 1)))
        })
        .await
    }
}

/// Points the consumer at `offset` of partition 0, dropping whatever it had fetched for an earlier
/// position.
fn position(c: &BaseConsumer, topic: &str, offset: i64) -> Result<(), LogError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(offset))
        .map_err(|e| kafka_error("cannot assign the partition", &e))?;
    c.unassign()
        .map_err(|e| kafka_error(format!("cannot read topic {topic}"), &e))?;
    c.assign(&assignment)
        .map_err(|e| kafka_error(format!("cannot read topic {topic}"), &e))
}

/// The timestamp (ms) of the record at `offset`.
fn timestamp_at(
    c: &BaseConsumer,
    topic: &str,
    offset: i64,
    timeout: Duration,
) -> Result<i64, LogError> {
    match read_run(c, topic, offset, 1, timeout)?.first() {
        Some(e) => Ok(e.timestamp_micros / 1000),
        None => Err(LogError::Unavailable {
            detail: format!(
                "topic {topic}: the record at offset {offset} did not arrive within {} ms",
                timeout.as_millis()
            ),
        }),
    }
}

/// Up to `want` records from offset `start` on, contiguous, within `timeout` (fewer if it runs out).
///
/// Some Kafka-protocol brokers (tansu 0.6) answer a fetch from an offset inside a record batch with the
/// batches that start after it, so the records of that batch before its end never arrive. When the first
/// record to arrive is past `start`, the fetch starts again further back (16, 256, 4096 ... records), and
/// the records before `start` are dropped.
fn read_run(
    c: &BaseConsumer,
    topic: &str,
    start: i64,
    want: usize,
    timeout: Duration,
) -> Result<Vec<Entry>, LogError> {
    let deadline = Instant::now() + timeout;
    let mut back = 0i64;
    'attempt: loop {
        position(c, topic, (start - back).max(0))?;
        let mut entries: Vec<Entry> = Vec::with_capacity(want.min(4096));
        while entries.len() < want {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(entries);
            };
            match c.poll(left) {
                Some(Ok(m)) => {
                    let expected = start + entries.len() as i64;
                    if m.offset() < expected {
                        continue;
                    }
                    if m.offset() > expected {
                        if entries.is_empty() && back < start {
                            back = if back == 0 { 16 } else { back * 16 };
                            continue 'attempt;
                        }
                        // A gap in the middle of a run: stop here; the next read starts at the gap.
                        return Ok(entries);
                    }
                    entries.push(Entry {
                        position: Position(m.offset() as u64 + 1),
                        timestamp_micros: m.timestamp().to_millis().unwrap_or(0) * 1000,
                        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    });
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => return Err(kafka_error(format!("cannot read topic {topic}"), &e)),
            }
        }
        return Ok(entries);
    }
}

fn high_watermark(c: &BaseConsumer, topic: &str, timeout: Duration) -> Result<i64, LogError> {
    match c.fetch_watermarks(topic, 0, timeout) {
        Ok((_, high)) => Ok(high),
        Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition))
        | Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopic))
        | Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownPartition)) => Ok(0),
        Err(e) => Err(kafka_error(
            format!("cannot read the end of topic {topic}"),
            &e,
        )),
    }
}
