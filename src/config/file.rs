//! The YAML file format, parsed with serde_yaml, with errors located by line and column.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_upstream")]
    pub upstream: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub users: Vec<RawUser>,
    /// Threads serving sessions; absent or 0 means one per CPU.
    #[serde(default)]
    pub workers: Option<usize>,
    /// The role waly uses for its own connections (migrations, recovery of prepared transactions).
    #[serde(default = "default_admin_user")]
    pub admin_user: String,
    /// Where records go: the embedded file log (default) or Kafka.
    #[serde(default)]
    pub log: RawLog,
    /// The operations catalog (`operations.yaml`); absent: every write is recorded as raw SQL.
    #[serde(default)]
    pub operations: Option<PathBuf>,
    /// How write transactions commit behind their record: `direct` (default) or `two-phase`.
    #[serde(default)]
    pub commit_protocol: CommitProtocol,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// `file` (default) or `kafka`.
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub file: Option<RawFileLog>,
    #[serde(default)]
    pub kafka: Option<RawKafka>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileLog {
    /// The largest record (one transaction) the file log takes, in bytes.
    pub max_record_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafka {
    /// bootstrap.servers: host:port[,host:port...]
    pub brokers: Option<String>,
    /// The topic of a database's records; `{database}` is replaced by the database's name.
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default = "default_append_timeout_ms")]
    pub append_timeout_ms: u64,
    /// The replication factor of topics waly creates.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Further librdkafka settings for waly's producer and readers (security.protocol, sasl.*, ...).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

pub(super) fn default_topic() -> String {
    "waly.{database}".to_owned()
}

pub(super) fn default_append_timeout_ms() -> u64 {
    10_000
}

fn default_replication_factor() -> i32 {
    1
}

fn default_admin_user() -> String {
    "postgres".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub name: String,
    pub method: AuthMethod,
    #[serde(default)]
    pub password_env: Option<String>,
}

/// How waly checks a client's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    /// Cleartext password: only sensible over TLS.
    #[serde(rename = "password")]
    Password,
    #[serde(rename = "trust")]
    Trust,
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Password => "password",
            AuthMethod::Trust => "trust",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected human or json"
            )),
        }
    }
}

/// How a write transaction commits once its record is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitProtocol {
    /// A plain COMMIT after the append; outcome records in the log decide the rare commit that fails.
    #[default]
    Direct,
    /// PREPARE TRANSACTION before the append, COMMIT PREPARED after it: every record in the log is
    /// final as soon as it is there. Needs `max_prepared_transactions` > 0; transactions that used
    /// temporary objects commit directly.
    TwoPhase,
}

impl FromStr for CommitProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(CommitProtocol::Direct),
            "two-phase" => Ok(CommitProtocol::TwoPhase),
            other => Err(format!(
                "unknown commit protocol {other:?}: expected direct or two-phase"
            )),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6432))
}

fn default_upstream() -> String {
    "postgres://127.0.0.1:5432".to_owned()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".waly/data")
}

fn default_shutdown_timeout() -> u64 {
    30
}

pub(super) fn parse(label: &str, text: &str) -> Result<RawConfig, ConfigError> {
    let source = if text.trim().is_empty() { "{}" } else { text };
    parse_yaml(label, source)
}

/// Parses YAML text into `T`; errors carry the file label, line and column. The one place serde_yaml
/// is called: every YAML file waly reads (this configuration, the operations catalog) goes through it.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    label: &str,
    text: &str,
) -> Result<T, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let message = e.to_string();
        // serde_yaml appends " at line L column C"; the location is already in front.
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_owned(),
            None => message,
        };
        ConfigError::Invalid {
            path: label.to_owned(),
            line,
            column,
            message,
        }
    })
}

/// 1-based line and column of the first occurrence of `needle`, for errors found after parsing.
pub fn position_of(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, line)| line.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap_or((1, 1))
}
