//! Configuration: `waly.yaml`, overridden key by key by flags and environment variables.
//!
//! This is the only module that knows the file format (serde_yaml stays behind it). Everything is checked
//! at load time and a bad file is refused with the file, line and what is wrong. Secrets never live in the
//! file: a user's password is read from the environment variable the file names. This module must never
//! open sockets or files other than the configuration itself.

mod file;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

pub use file::{AuthMethod, CommitProtocol, LogFormat, parse_yaml, position_of};

/// The resolved configuration waly runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub shutdown_timeout: Duration,
    pub tls: Option<TlsSettings>,
    pub users: Vec<User>,
    /// Threads serving sessions.
    pub workers: usize,
    /// The role waly connects as for its own work: applying its migrations and resolving prepared
    /// transactions at start. It must be a superuser; its password comes from its `users` entry.
    pub admin_user: String,
    /// Where records go.
    pub log: LogBackend,
    /// The operations catalog file, when there is one: waly loads it at start and reloads it on SIGHUP
    /// and when it changes. Relative paths are relative to the working directory.
    pub operations: Option<PathBuf>,
    /// How write transactions commit behind their record.
    pub commit_protocol: CommitProtocol,
}

/// The log backend: where each write transaction's record becomes durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogBackend {
    /// The embedded file log in `data_dir/log`, one log for every database.
    File(FileLogSettings),
    /// Kafka: one single-partition topic per database.
    Kafka(KafkaSettings),
}

/// What the embedded file log is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLogSettings {
    /// The largest record the log takes: one transaction's statements and row images. A transaction
    /// whose record is larger is rolled back with 54000.
    pub max_record_bytes: usize,
}

impl FileLogSettings {
    /// The default limit on a record: 256 MiB.
    pub const DEFAULT_MAX_RECORD_BYTES: usize = 256 << 20;
    /// The file format's limit on a record: 1 GiB.
    pub const LARGEST_MAX_RECORD_BYTES: usize = 1 << 30;
}

impl Default for FileLogSettings {
    fn default() -> Self {
        FileLogSettings {
            max_record_bytes: Self::DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// How waly reaches Kafka and names its topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// bootstrap.servers.
    pub brokers: String,
    /// Topic name template; `{database}` stands for the database's name.
    pub topic: String,
    /// How long an append may wait for the brokers' acknowledgement before the transaction fails.
    pub append_timeout: Duration,
    /// Replication factor of the topics waly creates.
    pub replication_factor: i32,
    /// Extra librdkafka properties, applied last.
    pub properties: std::collections::BTreeMap<String, String>,
}

/// Where Postgres listens. User and database come from each client's startup message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// A host name or address, or (libpq's convention) the directory of a Unix-domain socket when it
    /// starts with `/`.
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// `host:port`, or the path of the socket file.
    pub fn address(&self) -> String {
        crate::wire::socket::display_address(&self.host, self.port)
    }
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Refuse clients that do not negotiate TLS.
    pub required: bool,
}

/// A role that may connect through waly.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub method: AuthMethod,
    /// The role's password: checks the client (unless `trust`) and logs waly into Postgres as the role.
    pub password: Option<Secret>,
}

/// A secret that never appears in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Values given as flags or environment variables; each replaces the file's key of the same name.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub shutdown_timeout_secs: Option<u64>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_required: Option<bool>,
    pub workers: Option<usize>,
    pub admin_user: Option<String>,
    /// `file` or `kafka`.
    pub log_backend: Option<String>,
    /// Kafka bootstrap servers (also selects nothing by itself: see `log_backend`).
    pub kafka_brokers: Option<String>,
    /// The operations catalog file.
    pub operations: Option<PathBuf>,
    /// `direct` or `two-phase`.
    pub commit_protocol: Option<String>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: {message}")]
    Override {
        origin: &'static str,
        message: String,
    },
}

/// Loads `path` (or only the defaults and overrides when there is no file) into a [`Config`].
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let (label, text) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?;
            (p.display().to_string(), text)
        }
        None => ("<defaults>".to_owned(), String::new()),
    };
    let raw = file::parse(&label, &text)?;
    resolve(raw, overrides, &label, &text, |name| {
        std::env::var(name).ok()
    })
}

fn resolve(
    raw: file::RawConfig,
    o: &Overrides,
    label: &str,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let at = |needle: &str, message: String| {
        let (line, column) = file::position_of(text, needle);
        ConfigError::Invalid {
            path: label.to_owned(),
            line,
            column,
            message,
        }
    };

    let listen = match &o.listen {
        Some(v) => SocketAddr::from_str(v).map_err(|e| ConfigError::Override {
            origin: "--listen / WALY_LISTEN",
            message: format!(
                "invalid address {v:?}: {e} (expected host:port, for example 127.0.0.1:6432)"
            ),
        })?,
        None => raw.listen,
    };
    let upstream = match &o.upstream {
        Some(v) => parse_upstream(v).map_err(|message| ConfigError::Override {
            origin: "--upstream / WALY_UPSTREAM",
            message,
        })?,
        None => parse_upstream(&raw.upstream).map_err(|m| at("upstream:", m))?,
    };
    let log_format = match &o.log_format {
        Some(v) => LogFormat::from_str(v).map_err(|message| ConfigError::Override {
            origin: "--log-format / WALY_LOG_FORMAT",
            message,
        })?,
        None => raw.log_format,
    };
    let commit_protocol = match &o.commit_protocol {
        Some(v) => CommitProtocol::from_str(v).map_err(|message| ConfigError::Override {
            origin: "--commit-protocol / WALY_COMMIT_PROTOCOL",
            message,
        })?,
        None => raw.commit_protocol,
    };

    let tls = match (
        o.tls_cert
            .clone()
            .or(raw.tls.as_ref().map(|t| t.cert.clone())),
        o.tls_key
            .clone()
            .or(raw.tls.as_ref().map(|t| t.key.clone())),
    ) {
        (Some(cert), Some(key)) => Some(TlsSettings {
            cert,
            key,
            required: o
                .tls_required
                .or(raw.tls.as_ref().map(|t| t.required))
                .unwrap_or(false),
        }),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Override {
                origin: "tls",
                message: "a TLS certificate needs its key and a key its certificate: set both tls.cert and tls.key".into(),
            });
        }
    };

    let mut users = Vec::with_capacity(raw.users.len());
    for u in raw.users {
        if users.iter().any(|seen: &User| seen.name == u.name) {
            return Err(at(
                &format!("name: {}", u.name),
                format!("user {:?} is listed twice", u.name),
            ));
        }
        let password = match &u.password_env {
            Some(var) => Some(Secret::new(env(var).ok_or_else(|| {
                at(
                    &format!("password_env: {var}"),
                    format!("user {:?}: environment variable {var} is not set (it must hold the role's password)", u.name),
                )
            })?)),
            None if u.method != AuthMethod::Trust => {
                return Err(at(
                    &format!("name: {}", u.name),
                    format!("user {:?}: method {} needs password_env, the environment variable holding the password", u.name, u.method),
                ));
            }
            None => None,
        };
        users.push(User {
            name: u.name,
            method: u.method,
            password,
        });
    }

    let log = resolve_log(raw.log, o, &at)?;

    Ok(Config {
        log,
        listen,
        upstream,
        data_dir: o.data_dir.clone().unwrap_or(raw.data_dir),
        log_format,
        shutdown_timeout: Duration::from_secs(
            o.shutdown_timeout_secs.unwrap_or(raw.shutdown_timeout_secs),
        ),
        tls,
        users,
        workers: o
            .workers
            .or(raw.workers)
            .filter(|&n| n > 0)
            .unwrap_or_else(default_workers),
        admin_user: o.admin_user.clone().unwrap_or(raw.admin_user),
        operations: o.operations.clone().or(raw.operations),
        commit_protocol,
    })
}

fn resolve_log(
    raw: file::RawLog,
    o: &Overrides,
    at: &dyn Fn(&str, String) -> ConfigError,
) -> Result<LogBackend, ConfigError> {
    let backend = match (&o.log_backend, &raw.backend) {
        (Some(v), _) => v.clone(),
        (None, Some(v)) => v.clone(),
        (None, None) => "file".to_owned(),
    };
    match backend.as_str() {
        "file" => {
            let max = raw
                .file
                .and_then(|f| f.max_record_bytes)
                .map_or(Ok(FileLogSettings::DEFAULT_MAX_RECORD_BYTES), |n| {
                    usize::try_from(n)
                        .ok()
                        .filter(|&n| (1024..=FileLogSettings::LARGEST_MAX_RECORD_BYTES).contains(&n))
                        .ok_or_else(|| {
                            at(
                                "max_record_bytes",
                                format!(
                                    "log.file.max_record_bytes {n} is out of range: it must be from 1024 to {} (1 GiB, the file format's limit)",
                                    FileLogSettings::LARGEST_MAX_RECORD_BYTES
                                ),
                            )
                        })
                })?;
            Ok(LogBackend::File(FileLogSettings {
                max_record_bytes: max,
            }))
        }
        "kafka" => {
            let kafka = raw.kafka.unwrap_or(file::RawKafka {
                brokers: None,
                topic: file::default_topic(),
                append_timeout_ms: file::default_append_timeout_ms(),
                replication_factor: 1,
                properties: Default::default(),
            });
            let brokers = o.kafka_brokers.clone().or(kafka.brokers).ok_or_else(|| {
                at(
                    "backend:",
                    "log backend kafka needs log.kafka.brokers (or --kafka-brokers / WALY_KAFKA_BROKERS), for example 127.0.0.1:9092".into(),
                )
            })?;
            if !kafka.topic.contains("{database}") {
                return Err(at(
                    "topic:",
                    format!(
                        "log.kafka.topic {:?} must contain {{database}}: each database has its own topic",
                        kafka.topic
                    ),
                ));
            }
            if kafka.append_timeout_ms == 0 {
                return Err(at(
                    "append_timeout_ms:",
                    "log.kafka.append_timeout_ms must be above 0".into(),
                ));
            }
            Ok(LogBackend::Kafka(KafkaSettings {
                brokers,
                topic: kafka.topic,
                append_timeout: Duration::from_millis(kafka.append_timeout_ms),
                replication_factor: kafka.replication_factor,
                properties: kafka.properties,
            }))
        }
        other => {
            let message = format!("unknown log backend {other:?}: expected file or kafka");
            Err(match &o.log_backend {
                Some(_) => ConfigError::Override {
                    origin: "--log-backend / WALY_LOG_BACKEND",
                    message,
                },
                None => at("backend:", message),
            })
        }
    }
}

/// Half the CPUs, at least one: waly usually shares its machine with Postgres or the application, and on
/// small machines fewer, busier threads relay with less overhead per message than many idle ones.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (usize::from(n) / 2).max(1))
}

/// Accepts a libpq URL or key=value string; only host and port are used. A host that is a directory
/// (`host=/var/run/postgresql`, `postgresql://%2Fvar%2Frun%2Fpostgresql`) is a Unix-domain socket's.
fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let cfg =
        tokio_postgres::Config::from_str(s).map_err(|e| format!("invalid upstream {s:?}: {e}"))?;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(dir)) => match dir.to_str() {
            Some(dir) if crate::wire::socket::is_socket_directory(dir) => dir.to_owned(),
            _ => {
                return Err(format!(
                    "upstream {s:?}: a Unix-domain socket directory must be an absolute path in UTF-8"
                ));
            }
        },
        None => "127.0.0.1".to_owned(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    Ok(Upstream { host, port })
}

impl Config {
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Connection settings for waly's own connections to `database`, as [`Config::admin_user`].
    pub fn admin_connection(&self, database: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.upstream.host)
            .port(self.upstream.port)
            .user(&self.admin_user)
            .dbname(database)
            .application_name("waly")
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = self
            .user(&self.admin_user)
            .and_then(|u| u.password.as_ref())
        {
            c.password(password.expose());
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "listen: 127.0.0.1:7000\nupstream: postgres://db.local:5433/app\nusers:\n  - name: app\n    method: scram-sha-256\n    password_env: APP_PW\n";

    fn env(name: &str) -> Option<String> {
        (name == "APP_PW").then(|| "s3cret".to_owned())
    }

    fn load_text(text: &str, o: &Overrides) -> Result<Config, ConfigError> {
        resolve(file::parse("waly.yaml", text)?, o, "waly.yaml", text, env)
    }

    #[test]
    fn loads_file_and_applies_overrides() {
        let c = load_text(GOOD, &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(
            c.upstream,
            Upstream {
                host: "db.local".into(),
                port: 5433
            }
        );
        assert_eq!(
            c.user("app").unwrap().password.as_ref().unwrap().expose(),
            "s3cret"
        );
        let o = Overrides {
            listen: Some("127.0.0.1:7001".into()),
            ..Default::default()
        };
        assert_eq!(load_text(GOOD, &o).unwrap().listen.port(), 7001);
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let bad = GOOD.replace("scram-sha-256", "scram");
        let e = load_text(&bad, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("waly.yaml:5:"), "{e}");
        assert!(e.contains("scram"), "{e}");

        let unset = GOOD.replace("APP_PW", "NOPE_PW");
        let e = load_text(&unset, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("waly.yaml:6:") && e.contains("NOPE_PW is not set"),
            "{e}"
        );

        let typo = GOOD.replace("listen:", "lisen:");
        let e = load_text(&typo, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("waly.yaml:1:") && e.contains("lisen"), "{e}");

        let e = load_text("listen: nowhere\n", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("waly.yaml:1:"), "{e}");
    }

    #[test]
    fn the_log_backend_is_the_file_log_unless_kafka_is_chosen() {
        assert_eq!(
            load_text(GOOD, &Overrides::default()).unwrap().log,
            LogBackend::File(FileLogSettings::default())
        );
        let small = format!("{GOOD}log:\n  file:\n    max_record_bytes: 65536\n");
        assert_eq!(
            load_text(&small, &Overrides::default()).unwrap().log,
            LogBackend::File(FileLogSettings {
                max_record_bytes: 65536
            })
        );
        let e = load_text(
            &format!("{GOOD}log:\n  file:\n    max_record_bytes: 2000000000\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("max_record_bytes 2000000000 is out of range"),
            "{e}"
        );
        let kafka = format!(
            "{GOOD}log:\n  backend: kafka\n  kafka:\n    brokers: k1:9092,k2:9092\n    append_timeout_ms: 2500\n"
        );
        let LogBackend::Kafka(k) = load_text(&kafka, &Overrides::default()).unwrap().log else {
            panic!("kafka expected");
        };
        assert_eq!(k.brokers, "k1:9092,k2:9092");
        assert_eq!(k.topic, "waly.{database}");
        assert_eq!(k.append_timeout, Duration::from_millis(2500));
        // Flags win: the backend and the brokers can be chosen without touching the file.
        let o = Overrides {
            log_backend: Some("kafka".into()),
            kafka_brokers: Some("b:9092".into()),
            ..Overrides::default()
        };
        let LogBackend::Kafka(k) = load_text(GOOD, &o).unwrap().log else {
            panic!("kafka expected");
        };
        assert_eq!(k.brokers, "b:9092");
    }

    #[test]
    fn a_kafka_log_without_brokers_or_a_per_database_topic_is_refused_with_its_line() {
        let e = load_text(
            &format!("{GOOD}log:\n  backend: kafka\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("waly.yaml:8:") && e.contains("log.kafka.brokers"),
            "{e}"
        );
        let e = load_text(
            &format!(
                "{GOOD}log:\n  backend: kafka\n  kafka:\n    brokers: k:9092\n    topic: waly\n"
            ),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("waly.yaml:11:") && e.contains("{database}"),
            "{e}"
        );
        let e = load_text(
            &format!("{GOOD}log:\n  backend: s3\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown log backend \"s3\""), "{e}");
    }

    #[test]
    fn an_upstream_may_name_a_unix_socket_directory() {
        for (text, host, port) in [
            ("host=/var/run/postgresql", "/var/run/postgresql", 5432),
            ("postgresql:///app?host=/tmp&port=5433", "/tmp", 5433),
            ("postgresql://%2Frun%2Fpg:6000/app", "/run/pg", 6000),
            ("postgres://db.local", "db.local", 5432),
        ] {
            let u = parse_upstream(text).unwrap();
            assert_eq!((u.host.as_str(), u.port), (host, port), "{text}");
        }
        assert_eq!(
            parse_upstream("host=/tmp port=5433").unwrap().address(),
            "/tmp/.s.PGSQL.5433"
        );
    }

    #[test]
    fn the_example_files_load() {
        for file in ["config/waly.yaml", "config/waly.kafka.yaml"] {
            let text = std::fs::read_to_string(file).unwrap();
            let env = |_: &str| Some("pw".to_owned());
            resolve(
                file::parse(file, &text).unwrap(),
                &Overrides::default(),
                file,
                &text,
                env,
            )
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
}
