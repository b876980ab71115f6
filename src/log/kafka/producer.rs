//! The producer every topic of a waly process shares: idempotent, `acks=all`, one delivery report per
//! record, which says whether a failed record may have reached the brokers.

use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use tokio::sync::oneshot;

use super::kafka_error;
use crate::log::LogError;

/// Whether a record whose delivery failed may be in the topic anyway (librdkafka's message status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Persisted {
    /// Never sent, or refused by the broker: not in the topic.
    No,
    /// Sent, but no acknowledgement came back: it may be in the topic.
    Possibly,
}

/// A delivery report: the record's offset and broker timestamp (ms), or why it failed.
pub(super) type Delivery = Result<(i64, Option<i64>), (KafkaError, Persisted)>;

/// Routes librdkafka's logs into tracing and turns delivery reports into [`Delivery`] values.
pub(super) struct Reports;

impl ClientContext for Reports {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "waly::log::kafka", facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "waly::log::kafka", facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "waly::log::kafka", facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "waly::log::kafka", facility, "librdkafka: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "waly::log::kafka", error = %error, "Kafka: {reason}");
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<Delivery>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let delivery = match result {
            Ok(message) => Ok((message.offset(), message.timestamp().to_millis())),
            Err((error, message)) => {
                // SAFETY: `message.ptr()` is the live rd_kafka_message_t of this delivery report, valid for
                // the duration of this callback; rd_kafka_message_status only reads it.
                let status = unsafe { rdkafka::bindings::rd_kafka_message_status(message.ptr()) };
                let persisted = match status {
                    rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED => {
                        Persisted::No
                    }
                    _ => Persisted::Possibly,
                };
                Err((error.clone(), persisted))
            }
        };
        let _ = reply.send(delivery);
    }
}

/// The shared producer. Replaced by a new one when librdkafka declares it unusable (a fatal error), or
/// when the brokers refuse its records ([`Producer::refused`]): an idempotent producer whose records
/// failed carries sequence numbers the brokers no longer expect (after a broker restart, a failed
/// batch), and some brokers keep refusing it with a generic error instead of letting it recover. A new
/// producer gets a new producer id and starts its sequence afresh.
pub(super) struct Producer {
    config: ClientConfig,
    current: Mutex<Current>,
}

struct Current {
    producer: Arc<ThreadedProducer<Reports>>,
    /// Set when the brokers refused a record of `producer`: replace it before the next send.
    refused: bool,
    since: std::time::Instant,
}

impl Producer {
    pub(super) fn new(config: ClientConfig) -> Result<Producer, LogError> {
        let producer = Self::create(&config)?;
        Ok(Producer {
            config,
            current: Mutex::new(Current {
                producer: Arc::new(producer),
                refused: false,
                since: std::time::Instant::now(),
            }),
        })
    }

    fn create(config: &ClientConfig) -> Result<ThreadedProducer<Reports>, LogError> {
        config
            .create_with_context(Reports)
            .map_err(|e| kafka_error("cannot create the Kafka producer", &e))
    }

    /// Queues `payload` for partition 0 of `topic`; the receiver gets its delivery report.
    pub(super) fn send(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<oneshot::Receiver<Delivery>, LogError> {
        let producer = self.producer()?;
        let (tx, rx) = oneshot::channel();
        let record: BaseRecord<'_, (), [u8], Box<oneshot::Sender<Delivery>>> =
            BaseRecord::with_opaque_to(topic, Box::new(tx))
                .partition(0)
                .payload(payload);
        producer.send(record).map_err(|(e, _)| {
            kafka_error(format!("cannot queue the record for topic {topic}"), &e)
        })?;
        Ok(rx)
    }

    /// Notes that the brokers refused a record of the current producer: it is replaced before the next
    /// send (at most once a second).
    pub(super) fn refused(&self, error: &KafkaError) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let local = matches!(
            error,
            KafkaError::MessageProduction(
                Code::MessageTimedOut | Code::QueueFull | Code::PurgeQueue | Code::PurgeInflight
            )
        );
        if !local {
            self.current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .refused = true;
        }
    }

    /// The producer to use now, after replacing one that a fatal error made unusable or whose records
    /// the brokers refused.
    fn producer(&self) -> Result<Arc<ThreadedProducer<Reports>>, LogError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let fatal = current.producer.client().fatal_error();
        let refused =
            current.refused && current.since.elapsed() >= std::time::Duration::from_secs(1);
        if fatal.is_some() || refused {
            tracing::warn!(target: "waly::log::kafka", ?fatal, refused, "replacing the Kafka producer");
            let old =
                std::mem::replace(&mut current.producer, Arc::new(Self::create(&self.config)?));
            current.refused = false;
            current.since = std::time::Instant::now();
            // Records still in flight on the old producer get their reports; let it finish them.
            let linger = self
                .config
                .get("message.timeout.ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(30_000u64);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(linger + 1000));
                drop(old);
            });
        }
        Ok(Arc::clone(&current.producer))
    }
}
