//! Subcommands and their flags. Every configuration key can be given as a flag or an environment
//! variable; flags win over the environment, which wins over the file.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

use waly::config::{self, Overrides};
use waly::server::Server;

#[derive(Debug, Parser)]
#[command(name = "waly", version, about = "A write-ahead log outside Postgres")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept Postgres connections and relay them to the upstream database.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Configuration file.
    #[arg(long, short, env = "WALY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, host:port.
    #[arg(long, env = "WALY_LISTEN")]
    listen: Option<String>,
    /// Postgres to relay to, as a libpq URL or key=value string (host and port are used).
    #[arg(long, env = "WALY_UPSTREAM")]
    upstream: Option<String>,
    /// Directory for waly's own data.
    #[arg(long, env = "WALY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// human or json.
    #[arg(long, env = "WALY_LOG_FORMAT")]
    log_format: Option<String>,
    /// Seconds sessions get to finish after SIGTERM.
    #[arg(long, env = "WALY_SHUTDOWN_TIMEOUT_SECS")]
    shutdown_timeout_secs: Option<u64>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "WALY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "WALY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Refuse clients that do not use TLS.
    #[arg(long, env = "WALY_TLS_REQUIRED")]
    tls_required: Option<bool>,
    /// Worker threads serving sessions (default: one per CPU).
    #[arg(long, env = "WALY_WORKERS")]
    workers: Option<usize>,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream,
        data_dir: args.data_dir,
        log_format: args.log_format,
        shutdown_timeout_secs: args.shutdown_timeout_secs,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_required: args.tls_required,
        workers: args.workers,
    };
    let config = config::load(args.config.as_deref(), &overrides)?;
    waly::telemetry::init(config.log_format);

    // This runtime only accepts connections and waits for signals; sessions run on the worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        server
            .run(async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            })
            .await;
        anyhow::Ok(())
    })
}
