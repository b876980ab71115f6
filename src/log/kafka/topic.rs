//! A database's topic: found, or created with one partition; refused when it has more than one.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use super::kafka_error;
use crate::log::LogError;

/// What the brokers say about a topic.
enum Found {
    Missing,
    Partitions(usize),
}

/// Makes sure `topic` exists with exactly one partition, creating it if it is missing.
pub(super) async fn ensure(
    config: &ClientConfig,
    topic: &str,
    replication_factor: i32,
    max_record_bytes: usize,
    timeout: Duration,
) -> Result<(), LogError> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        config
            .create()
            .map_err(|e| kafka_error("cannot create the Kafka admin client", &e))?,
    );
    match describe(&admin, topic, timeout).await? {
        Found::Partitions(1) => return Ok(()),
        Found::Partitions(n) => return Err(too_many(topic, n)),
        Found::Missing => {}
    }
    let max_bytes = max_record_bytes.to_string();
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replication_factor))
        .set("max.message.bytes", &max_bytes);
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| kafka_error(format!("cannot create topic {topic}"), &e))?;
    for result in results {
        match result {
            Ok(_) => {
                tracing::info!(target: "waly::log::kafka", topic, replication_factor, "created the topic, with one partition")
            }
            // Another waly created it first: check what it made.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(LogError::Unavailable {
                    detail: format!("cannot create topic {topic}: {code}"),
                });
            }
        }
    }
    match describe(&admin, topic, timeout).await? {
        Found::Partitions(1) => Ok(()),
        Found::Partitions(n) => Err(too_many(topic, n)),
        Found::Missing => Err(LogError::Unavailable {
            detail: format!("topic {topic} was created but the brokers do not list it yet"),
        }),
    }
}

async fn describe(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
    timeout: Duration,
) -> Result<Found, LogError> {
    let admin = Arc::clone(admin);
    let name = topic.to_owned();
    let metadata =
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(Some(&name), timeout))
            .await
            .map_err(|e| LogError::Unavailable {
                detail: e.to_string(),
            })?
            .map_err(|e| kafka_error(format!("cannot read the metadata of topic {topic}"), &e))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Found::Missing);
    };
    match t.error() {
        None if !t.partitions().is_empty() => Ok(Found::Partitions(t.partitions().len())),
        None => Ok(Found::Missing),
        Some(code) if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            Ok(Found::Missing)
        }
        Some(code) => Err(LogError::Unavailable {
            detail: format!("topic {topic}: {}", RDKafkaErrorCode::from(code)),
        }),
    }
}

fn too_many(topic: &str, partitions: usize) -> LogError {
    LogError::Unavailable {
        detail: format!(
            "topic {topic} has {partitions} partitions; waly needs exactly one, which is what gives a database's records their total order. Recreate it with one partition, or point log.kafka.topic elsewhere"
        ),
    }
}
