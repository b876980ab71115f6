//! Which log backend a test run uses: the file log by default, Kafka when `WALY_TEST_LOG_BACKEND=kafka`
//! (the write-path and crash suites run under both: see the Makefile). Everything a test reads from the
//! log goes through here, so the same test checks either backend.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use waly::config::KafkaSettings;
use waly::log::Entry;
use waly::log::{FileLog, KafkaLogs, LogReader, Position};
use waly::record::{LogRecord, Record, Settled, Settler};

/// Every entry of one log, in order.
async fn read_all(reader: &dyn LogReader) -> Vec<Entry> {
    let end = reader.end().await.expect("the log's end");
    let mut out = Vec::new();
    let mut from = Position::FIRST;
    while from <= end {
        let entries = reader.read(from, 4096).await.expect("read the log");
        let Some(last) = entries.last() else { break };
        from = last.position.next();
        out.extend(entries);
    }
    out
}

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

    /// Every committed transaction record, with its position, in log order (Kafka: topic after topic),
    /// as a consumer acting on the log sees them: direct commits that did not commit left out. Waits
    /// (up to 30 s) until every direct commit in the log is decided: a running waly decides its own
    /// within moments, a restarted one those its predecessor left.
    pub async fn entries(&self) -> Vec<(Position, Record)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (committed, waiting) = self.settled().await;
            match waiting {
                None => return committed,
                Some(w) if Instant::now() >= deadline => {
                    panic!(
                        "the log's record at {w} stays undecided: no outcome says how its commit ended"
                    )
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The committed records, and the first record whose commit is not decided yet.
    async fn settled(&self) -> (Vec<(Position, Record)>, Option<Position>) {
        let mut out = Vec::new();
        let mut waiting = None;
        for reader in self.readers() {
            let mut settler = Settler::new();
            for e in read_all(reader.as_ref()).await {
                let record = LogRecord::from_json(&e.payload)
                    .unwrap_or_else(|err| panic!("record at {}: {err}", e.position));
                settler.push(e.position.0, record);
                while let Some(s) = settler.next_settled() {
                    if let Settled::Committed(p, r) = s {
                        out.push((Position(p), *r));
                    }
                }
            }
            if let Some((p, _)) = settler.waiting() {
                waiting.get_or_insert(Position(p));
            }
        }
        (out, waiting)
    }

    /// The direct commits outcome records list as not committed: (position, txid), in log order.
    pub async fn aborted(&self) -> Vec<(Position, String)> {
        let mut out = Vec::new();
        for reader in self.readers() {
            for e in read_all(reader.as_ref()).await {
                if let Ok(LogRecord::Outcome(o)) = LogRecord::from_json(&e.payload) {
                    out.extend(
                        o.aborted
                            .into_iter()
                            .map(|a| (Position(a.position), a.txid)),
                    );
                }
            }
        }
        out
    }

    /// How many committed transaction records the log holds (Kafka: summed over the topics).
    pub async fn end(&self) -> u64 {
        self.entries().await.len() as u64
    }

    /// The last position the log holds, outcome records included (the file log).
    pub async fn raw_end(&self) -> Position {
        let mut end = Position(0);
        for reader in self.readers() {
            end = end.max(reader.end().await.expect("the log's end"));
        }
        end
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
