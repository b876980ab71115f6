//! Subcommands and their flags. Every configuration key can be given as a flag or an environment
//! variable; flags win over the environment, which wins over the file.

mod log;
mod migrate;
mod ops;
mod replay;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use waly::config::{self, Config, Overrides};

#[derive(Debug, Parser)]
#[command(name = "waly", version, about = "A write-ahead log outside Postgres")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept Postgres connections and relay them to the upstream database.
    Serve(ConfigArgs),
    /// Install or upgrade waly's schema (capture table and triggers) in a database.
    Migrate(migrate::MigrateArgs),
    /// Read the embedded log.
    Log(log::LogArgs),
    /// Rebuild a database from the log, exactly (row images), resumable.
    Replay(replay::ReplayArgs),
    /// Check the operations catalog, list its operations, write its reference documentation.
    Ops(ops::OpsArgs),
}

/// The configuration file and the flags that override its keys.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// Configuration file.
    #[arg(long, short, env = "WALY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, host:port.
    #[arg(long, env = "WALY_LISTEN", global = true)]
    listen: Option<String>,
    /// Postgres to relay to, as a libpq URL or key=value string (host and port are used).
    #[arg(long, env = "WALY_UPSTREAM", global = true)]
    upstream: Option<String>,
    /// Directory for waly's own data.
    #[arg(long, env = "WALY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// human or json.
    #[arg(long, env = "WALY_LOG_FORMAT", global = true)]
    log_format: Option<String>,
    /// Seconds sessions get to finish after SIGTERM.
    #[arg(long, env = "WALY_SHUTDOWN_TIMEOUT_SECS", global = true)]
    shutdown_timeout_secs: Option<u64>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "WALY_TLS_CERT", global = true)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "WALY_TLS_KEY", global = true)]
    tls_key: Option<PathBuf>,
    /// Refuse clients that do not use TLS.
    #[arg(long, env = "WALY_TLS_REQUIRED", global = true)]
    tls_required: Option<bool>,
    /// Worker threads serving sessions (default: half the CPUs).
    #[arg(long, env = "WALY_WORKERS", global = true)]
    workers: Option<usize>,
    /// The superuser role waly connects as for migrations and recovery (default: postgres).
    #[arg(long, env = "WALY_ADMIN_USER", global = true)]
    admin_user: Option<String>,
    /// Where records go: file (default) or kafka.
    #[arg(long, env = "WALY_LOG_BACKEND", global = true)]
    log_backend: Option<String>,
    /// Kafka bootstrap servers, host:port[,host:port...].
    #[arg(long, env = "WALY_KAFKA_BROKERS", global = true)]
    kafka_brokers: Option<String>,
    /// The operations catalog (operations.yaml).
    #[arg(long, env = "WALY_OPERATIONS", global = true)]
    operations: Option<PathBuf>,
    /// How write transactions commit behind their record: direct (default) or two-phase.
    #[arg(long, env = "WALY_COMMIT_PROTOCOL", global = true)]
    commit_protocol: Option<String>,
}

impl ConfigArgs {
    /// Loads the file and applies the flags, then starts logging in the configured format.
    fn load(self) -> anyhow::Result<Config> {
        let overrides = Overrides {
            listen: self.listen,
            upstream: self.upstream,
            data_dir: self.data_dir,
            log_format: self.log_format,
            shutdown_timeout_secs: self.shutdown_timeout_secs,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_required: self.tls_required,
            workers: self.workers,
            admin_user: self.admin_user,
            log_backend: self.log_backend,
            kafka_brokers: self.kafka_brokers,
            operations: self.operations,
            commit_protocol: self.commit_protocol,
        };
        let config = config::load(self.config.as_deref(), &overrides)?;
        waly::telemetry::init(config.log_format);
        Ok(config)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args.load()?),
        Command::Migrate(args) => migrate::run(args),
        Command::Log(args) => log::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Ops(args) => ops::run(args),
    }
}

/// A runtime for commands that are not `serve`.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
