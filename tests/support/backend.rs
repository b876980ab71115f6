//! Which log backend a test run uses: the file log by default, Kafka when `WALY_TEST_LOG_BACKEND=kafka`
//! (the write-path and crash suites run under both: see the Makefile). Everything a test reads from the
//! log goes through here, so the same test checks either backend.

use std::path::PathBuf;
use std::time::Duration;

use waly::config::KafkaSettings;
use waly::log::{FileLog, KafkaLogs, LogReader, Position};
use waly::record::Record;

/// Whether this run's waly processes log to Kafka.
pub fn kafka_mode() -> bool {
    std::env::var("WALY_TEST_LOG_BACKEND").is_ok_and(|v| v == "kafka")
}

/// Where one waly's records are.
#[derive(Debug, Clone)]
pub enum LogAccess {
    File {
        data_dir: PathBuf,
    },
    /// Topics `<prefix><database>` on the brokers at `bootstrap`.
    Kafka {
        bootstrap: String,
        prefix: String,
    },
}

impl LogAccess {
    /// The `log:` section of waly.yaml for this access (empty for the file log).
    pub fn yaml(&self) -> String {
        match self {
            LogAccess::File { .. } => String::new(),
            LogAccess::Kafka { bootstrap, prefix } => format!(
                "log:\n  backend: kafka\n  kafka:\n    brokers: {bootstrap}\n    topic: \"{prefix}{{database}}\"\n    append_timeout_ms: 5000\n"
            ),
        }
    }

    fn settings(bootstrap: &str, prefix: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: bootstrap.to_owned(),
            topic: format!("{prefix}{{database}}"),
            append_timeout: Duration::from_secs(5),
            replication_factor: 1,
            properties: Default::default(),
        }
    }

    /// The databases that have records (Kafka: a topic), sorted; `None` for the file log, which holds
    /// every database's records in one log.
    pub fn databases(&self) -> Option<Vec<String>> {
        let LogAccess::Kafka { bootstrap, prefix } = self else {
            return None;
        };
        use rdkafka::producer::Producer as _;
        let client: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("a Kafka client");
        let metadata = client
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("Kafka metadata");
        let mut dbs: Vec<String> = metadata
            .topics()
            .iter()
            .filter_map(|t| t.name().strip_prefix(prefix.as_str()).map(str::to_owned))
            .collect();
        dbs.sort();
        Some(dbs)
    }

    /// The databases whose topic holds at least one record (blocking: for synchronous callers).
    pub fn databases_with_records(&self) -> Vec<String> {
        let LogAccess::Kafka { bootstrap, prefix } = self else {
            return Vec::new();
        };
        use rdkafka::consumer::Consumer as _;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "waly-test")
            .create()
            .expect("a Kafka consumer");
        self.databases()
            .unwrap_or_default()
            .into_iter()
            .filter(|db| {
                let topic = format!("{prefix}{db}");
                consumer
                    .fetch_watermarks(&topic, 0, Duration::from_secs(10))
                    .is_ok_and(|(_, high)| high > 0)
            })
            .collect()
    }

    fn readers(&self) -> Vec<Box<dyn LogReader>> {
        match self {
            LogAccess::File { data_dir } => vec![Box::new(
                FileLog::open_read_only(FileLog::dir_in(data_dir)).expect("open the log read-only"),
            )],
            LogAccess::Kafka { bootstrap, prefix } => {
                let logs = KafkaLogs::new(Self::settings(bootstrap, prefix)).expect("Kafka client");
                self.databases()
                    .unwrap_or_default()
                    .iter()
                    .map(|db| Box::new(logs.reader(db)) as Box<dyn LogReader>)
                    .collect()
            }
        }
    }

    /// Every record, with its position, in log order (Kafka: topic after topic).
    pub async fn entries(&self) -> Vec<(Position, Record)> {
        let mut out = Vec::new();
        for reader in self.readers() {
            let end = reader.end().await.expect("the log's end");
            let mut from = Position::FIRST;
            while from <= end {
                let entries = reader.read(from, 4096).await.expect("read the log");
                let Some(last) = entries.last() else { break };
                from = last.position.next();
                for e in entries {
                    let record = Record::from_json(&e.payload)
                        .unwrap_or_else(|err| panic!("record at {}: {err}", e.position));
                    out.push((e.position, record));
                }
            }
        }
        out
    }

    /// How many records the log holds (Kafka: summed over the topics).
    pub async fn end(&self) -> u64 {
        let mut sum = 0;
        for reader in self.readers() {
            sum += reader.end().await.expect("the log's end").0;
        }
        sum
    }

    /// Extra arguments `waly replay` needs to read the records of `database` (Kafka: its topic).
    pub fn replay_args(&self, database: Option<&str>) -> Vec<String> {
        match self {
            LogAccess::File { .. } => Vec::new(),
            LogAccess::Kafka { .. } => {
                let db = database.map(str::to_owned).unwrap_or_else(|| {
                    let dbs = self.databases_with_records();
                    assert_eq!(
                        dbs.len(),
                        1,
                        "name the database to replay: the Kafka log has records for {dbs:?}"
                    );
                    dbs[0].clone()
                });
                vec!["--database".into(), db]
            }
        }
    }
}
