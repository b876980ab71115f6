//! The Kafka backend: each database's records in a topic of its own with exactly one partition (a total
//! order), appended by an idempotent producer with `acks=all`; an append returns once every in-sync
//! replica has the record.
//!
//! Owns topic naming, the shared producer, delivery outcomes and reads. A record's position is its offset
//! plus one, so positions start at 1 as in the file log. Timestamps are the brokers' (milliseconds).
//!
//! A failed append is classified by librdkafka's message status: a record never sent (broker down for
//! the whole append timeout) is `Unavailable`, and its transaction is rolled back; a record sent without
//! an acknowledgement is `InDoubt`, and [`Log::in_doubt_settles_after`] tells the commit protocol when
//! reading the topic decides it. This module must never know what a record contains.

mod producer;
mod read;
mod topic;

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use tokio::sync::OnceCell;

use self::producer::{Persisted, Producer};
use self::read::TopicReader;
use super::{Entry, Log, LogError, LogReader, LogRouter, LogStats, Position};
use crate::config::KafkaSettings;

/// The largest record waly sends to Kafka; topics waly creates accept records this large.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// How long metadata requests and reads may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn kafka_error(context: impl Display, error: &KafkaError) -> LogError {
    LogError::Unavailable {
        detail: format!("{context}: {error}"),
    }
}

/// The topic of `database`'s records: `template` with `{database}` replaced. Characters Kafka does not
/// allow in topic names become `_`, and a name so changed (or cut to Kafka's 249 characters) gets a hash
/// of the database's name, so that two databases never share a topic.
pub fn topic_name(template: &str, database: &str) -> String {
    let clean: String = database
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut name = template.replace("{database}", &clean);
    if clean != database || name.len() > 249 {
        let hash = format!("-{:08x}", crc32c::crc32c(database.as_bytes()));
        name.truncate(249 - hash.len());
        name.push_str(&hash);
    }
    name
}

/// Every database's Kafka log in one process: the shared producer and one [`KafkaLog`] per topic used.
pub struct KafkaLogs {
    settings: KafkaSettings,
    producer: Arc<Producer>,
    logs: Mutex<HashMap<String, Arc<KafkaLog>>>,
}

impl KafkaLogs {
    /// Creates the producer; no broker is contacted until a topic is used.
    pub fn new(settings: KafkaSettings) -> Result<KafkaLogs, LogError> {
        let producer = Arc::new(Producer::new(producer_config(&settings))?);
        Ok(KafkaLogs {
            settings,
            producer,
            logs: Mutex::default(),
        })
    }

    /// The log of `database`, created at its first use (its topic is checked or created at its first
    /// append).
    pub fn log(&self, database: &str) -> Arc<KafkaLog> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = logs.get(database) {
            return Arc::clone(log);
        }
        let log = Arc::new(self.make(database));
        logs.insert(database.to_owned(), Arc::clone(&log));
        // Check or create the topic as soon as the database is used, not at its first write.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let early = Arc::clone(&log);
            runtime.spawn(async move {
                if let Err(e) = early.ensure_topic().await {
                    tracing::error!(target: "waly::log::kafka", topic = %early.topic, error = %e, "the database's topic is not usable yet; its writes fail until it is");
                }
            });
        }
        log
    }

    /// A reader of `database`'s topic, for tools.
    pub fn reader(&self, database: &str) -> KafkaLog {
        self.make(database)
    }

    fn make(&self, database: &str) -> KafkaLog {
        let topic = topic_name(&self.settings.topic, database);
        KafkaLog {
            reader: TopicReader::new(
                topic.clone(),
                reader_config(&self.settings),
                REQUEST_TIMEOUT,
            ),
            topic,
            settings: self.settings.clone(),
            producer: Arc::clone(&self.producer),
            checked: OnceCell::new(),
            end: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    /// The check at start: every existing topic the template names (any database's) must have exactly one
    /// partition. Returns the topics seen.
    pub async fn check_topics(&self) -> Result<Vec<String>, TopicCheckError> {
        let config = admin_config(&self.settings);
        let (prefix, suffix) = self
            .settings
            .topic
            .split_once("{database}")
            .map(|(p, s)| (p.to_owned(), s.to_owned()))
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer as _;
            let client: rdkafka::producer::BaseProducer = config
                .create()
                .map_err(|e| TopicCheckError::Unreachable(kafka_error("cannot create a Kafka client", &e)))?;
            let metadata = client
                .client()
                .fetch_metadata(None, REQUEST_TIMEOUT)
                .map_err(|e| TopicCheckError::Unreachable(kafka_error("the Kafka brokers did not answer", &e)))?;
            let mut seen = Vec::new();
            for t in metadata.topics() {
                let name = t.name();
                if !(name.starts_with(&prefix) && name.ends_with(&suffix) && name.len() > prefix.len() + suffix.len()) {
                    continue;
                }
                if t.partitions().len() > 1 {
                    return Err(TopicCheckError::Partitions(LogError::Unavailable {
                        detail: format!(
                            "topic {name} has {} partitions; waly needs exactly one, which is what gives a database's records their total order. Recreate it with one partition, or point log.kafka.topic elsewhere",
                            t.partitions().len()
                        ),
                    }));
                }
                seen.push(name.to_owned());
            }
            Ok(seen)
        })
        .await
        .map_err(|e| TopicCheckError::Unreachable(LogError::Unavailable { detail: e.to_string() }))?
    }
}

/// Why the check at start failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicCheckError {
    /// The brokers did not answer: waly starts anyway (reads work; writes fail until they answer).
    #[error("{0}")]
    Unreachable(LogError),
    /// A topic of waly's has more than one partition: waly refuses to start.
    #[error("{0}")]
    Partitions(LogError),
}

impl LogRouter for KafkaLogs {
    fn log_for(&self, database: &str) -> Arc<dyn Log> {
        self.log(database)
    }

    fn log_key(&self, database: &str) -> String {
        database.to_owned()
    }

    fn settled_since(&self, started: std::time::Instant) -> bool {
        started.elapsed() >= settle_time(self.settings.append_timeout)
    }

    fn stats(&self) -> LogStats {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.values().fold(LogStats::default(), |mut sum, log| {
            let s = log.stats();
            sum.appends += s.appends;
            sum.batches += s.batches;
            sum.bytes += s.bytes;
            sum.failed_appends += s.failed_appends;
            sum
        })
    }
}

/// A client configuration: the brokers, the settings of one kind of client (`own`), then the user's
/// `properties`, which win.
fn client_config(settings: &KafkaSettings, own: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.brokers)
        .set("client.id", "waly")
        .set("socket.keepalive.enable", "true");
    for (k, v) in own {
        c.set(*k, v);
    }
    for (k, v) in &settings.properties {
        c.set(k, v);
    }
    c
}

/// Admin and metadata clients: the brokers and the user's properties.
fn admin_config(settings: &KafkaSettings) -> ClientConfig {
    client_config(settings, &[])
}

fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    client_config(
        settings,
        &[
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            // librdkafka gives up on a record after this long and reports it failed: the append timeout.
            (
                "message.timeout.ms",
                settings.append_timeout.as_millis().to_string(),
            ),
            // Send at once; records queued while a request is in flight still travel together.
            ("linger.ms", "0".into()),
            ("message.max.bytes", MAX_RECORD_BYTES.to_string()),
        ],
    )
}

fn reader_config(settings: &KafkaSettings) -> ClientConfig {
    let mut c = client_config(
        settings,
        &[
            ("group.id", "waly-reader".into()),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("enable.partition.eof", "true".into()),
            ("auto.offset.reset", "earliest".into()),
            ("fetch.wait.max.ms", "50".into()),
            // A fetch must be able to carry the largest record waly writes, whole.
            (
                "max.partition.fetch.bytes",
                (MAX_RECORD_BYTES + 1024 * 1024).to_string(),
            ),
            (
                "fetch.max.bytes",
                (MAX_RECORD_BYTES + 1024 * 1024).to_string(),
            ),
            (
                "receive.message.max.bytes",
                (MAX_RECORD_BYTES + 2 * 1024 * 1024).to_string(),
            ),
        ],
    );
    c.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    c
}

#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    bytes: AtomicU64,
    failed: AtomicU64,
}

/// One database's topic.
pub struct KafkaLog {
    topic: String,
    settings: KafkaSettings,
    producer: Arc<Producer>,
    reader: TopicReader,
    /// Set once the topic was found (or created) with one partition.
    checked: OnceCell<()>,
    /// The highest position known durable: acknowledged appends and high watermarks read.
    end: AtomicU64,
    counters: Counters,
}

impl KafkaLog {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    async fn ensure_topic(&self) -> Result<(), LogError> {
        self.checked
            .get_or_try_init(|| async {
                let config = admin_config(&self.settings);
                topic::ensure(
                    &config,
                    &self.topic,
                    self.settings.replication_factor,
                    MAX_RECORD_BYTES,
                    REQUEST_TIMEOUT.min(self.settings.append_timeout),
                )
                .await
            })
            .await
            .map(|_| ())
    }

    fn saw_end(&self, position: u64) {
        self.end.fetch_max(position, Ordering::Relaxed);
    }
}

#[async_trait]
impl Log for KafkaLog {
    async fn append(&self, payload: Bytes) -> Result<Entry, LogError> {
        let result = self.append_inner(&payload).await;
        match &result {
            Ok(entry) => {
                self.counters.appends.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                self.saw_end(entry.position.0);
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "waly::log::kafka", topic = %self.topic, error = %e, "append failed");
            }
        }
        result
    }

    async fn read(&self, from: Position, max: usize) -> Result<Vec<Entry>, LogError> {
        let entries = self.reader.read(from, max).await?;
        if let Some(last) = entries.last() {
            self.saw_end(last.position.0);
        }
        Ok(entries)
    }

    async fn position_at(&self, timestamp_micros: i64) -> Result<Option<Position>, LogError> {
        self.reader.position_at(timestamp_micros).await
    }

    fn end(&self) -> Position {
        Position(self.end.load(Ordering::Relaxed))
    }

    fn stats(&self) -> LogStats {
        let appends = self.counters.appends.load(Ordering::Relaxed);
        LogStats {
            appends,
            // Every acknowledgement is a durable write as far as waly can see; librdkafka batches below.
            batches: appends,
            bytes: self.counters.bytes.load(Ordering::Relaxed),
            failed_appends: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    fn in_doubt_settles_after(&self) -> Option<Duration> {
        Some(settle_time(self.settings.append_timeout))
    }
}

impl KafkaLog {
    async fn append_inner(&self, payload: &Bytes) -> Result<Entry, LogError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(LogError::TooLarge {
                size: payload.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        self.ensure_topic().await?;
        let sent_at = now_micros();
        let report = self.producer.send(&self.topic, payload)?;
        // librdkafka reports every record by message.timeout.ms; the margin only guards against a lost report.
        let wait = self.settings.append_timeout + Duration::from_secs(5);
        let delivery = match tokio::time::timeout(wait, report).await {
            Ok(Ok(delivery)) => delivery,
            Ok(Err(_)) | Err(_) => {
                return Err(LogError::InDoubt {
                    detail: format!(
                        "no delivery report from Kafka for topic {} within {} ms",
                        self.topic,
                        wait.as_millis()
                    ),
                });
            }
        };
        match delivery {
            Ok((offset, broker_ms)) => Ok(Entry {
                position: Position(offset as u64 + 1),
                timestamp_micros: broker_ms.map_or(sent_at, |ms| ms * 1000),
                payload: payload.clone(),
            }),
            Err((error, Persisted::No)) => {
                self.producer.refused(&error);
                Err(LogError::Unavailable {
                    detail: format!(
                        "Kafka ({}) did not take the record for topic {}: {error}",
                        self.settings.brokers, self.topic
                    ),
                })
            }
            Err((error, Persisted::Possibly)) => Err(LogError::InDoubt {
                detail: format!(
                    "Kafka ({}) did not acknowledge the record for topic {}: {error}",
                    self.settings.brokers, self.topic
                ),
            }),
        }
    }
}

#[async_trait]
impl LogReader for KafkaLog {
    async fn read(&self, from: Position, max: usize) -> Result<Vec<Entry>, LogError> {
        Log::read(self, from, max).await
    }

    async fn position_at(&self, timestamp_micros: i64) -> Result<Option<Position>, LogError> {
        self.reader.position_at(timestamp_micros).await
    }

    async fn end(&self) -> Result<Position, LogError> {
        let high = self.reader.high_watermark().await?;
        self.saw_end(high as u64);
        Ok(Position(high as u64))
    }

    /// With `acks=all`, the high watermark: every record below it is on every in-sync replica.
    async fn settled_end(&self) -> Result<Position, LogError> {
        LogReader::end(self).await
    }

    fn describe(&self) -> String {
        format!("Kafka topic {} at {}", self.topic, self.settings.brokers)
    }
}

/// How long after an append began its outcome is settled: librdkafka stops retrying a record at the
/// append timeout; twice that later, any request still on the wire has been answered or dropped, and the
/// topic says whether the record is in.
fn settle_time(append_timeout: Duration) -> Duration {
    append_timeout * 2 + Duration::from_secs(1)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

#[cfg(test)]
mod tests {
    use super::topic_name;

    #[test]
    fn topic_names_are_valid_and_distinct() {
        assert_eq!(topic_name("waly.{database}", "shop"), "waly.shop");
        let odd = topic_name("waly.{database}", "my shop");
        assert!(odd.starts_with("waly.my_shop-"), "{odd}");
        assert_ne!(odd, topic_name("waly.{database}", "my_shop"));
        assert_ne!(odd, topic_name("waly.{database}", "my/shop"));
        let long = topic_name("waly.{database}", &"x".repeat(400));
        assert!(long.len() <= 249);
    }
}
