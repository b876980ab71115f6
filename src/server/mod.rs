//! The listener: accepts connections, hands each to a session, routes cancel requests, and stops
//! gracefully.
//!
//! On shutdown it stops accepting at once, lets every session finish (each closes at its first idle
//! moment outside a transaction), and after the configured timeout closes the rest. It must never read or
//! write protocol messages itself; that is the session's job.

pub mod cancel;
mod databases;
mod reload;
pub mod tls;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::AuthCatalog;
use crate::classify::ClassStats;
use crate::commit::direct_recovery::{DirectReport, decide_dead_writers};
use crate::commit::{DecidedFile, LogDecisions, Resolver, recover_at_start};
use crate::config::Config;
use crate::config::LogBackend;
use crate::log::kafka::TopicCheckError;
use crate::log::{FileLog, FileLogConfig, KafkaLogs, LogError, LogRouter, SharedLog};
use crate::operations::{CatalogErrors, Operations};
use cancel::CancelRegistry;
pub use databases::Databases;

/// Everything sessions share.
pub struct ServerContext {
    pub config: Config,
    pub auth: AuthCatalog,
    pub tls: Option<tls::Tls>,
    pub cancels: Arc<CancelRegistry>,
    pub stats: Arc<ClassStats>,
    /// Cancelled when waly begins to shut down: sessions close once idle.
    pub draining: CancellationToken,
    /// Cancelled when the shutdown timeout has passed: sessions close now.
    pub terminating: CancellationToken,
    /// The write-ahead log each database's write transactions' records go to.
    pub logs: Arc<dyn LogRouter>,
    /// This process's token in the gids it prepares (see [`crate::commit::gid`]).
    pub boot: String,
    /// Finishes prepared transactions of sessions that lost their backend mid-commit, and decides their
    /// direct commits.
    pub resolver: Resolver,
    /// Each log's direct commits by this process.
    pub decisions: Arc<LogDecisions>,
    /// Databases whose waly schema this process has checked.
    pub databases: Databases,
    /// The operations catalog, reloaded on SIGHUP and when its file changes.
    pub operations: Arc<Operations>,
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot prepare SCRAM authentication: {0}")]
    Auth(String),
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
    #[error("cannot open the log: {0}")]
    Log(#[from] LogError),
    #[error("the operations file is invalid:\n{0}")]
    Operations(#[from] CatalogErrors),
}

pub struct Server {
    ctx: Arc<ServerContext>,
    listener: TcpListener,
    workers: workers::Workers,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let tls = config.tls.as_ref().map(tls::load).transpose()?;
        let auth = AuthCatalog::new(&config, tls.as_ref().map(|t| t.cert_pem.as_slice()))
            .map_err(|e| ServerError::Auth(e.to_string()))?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    address: config.listen,
                    source,
                })?;
        let operations = match &config.operations {
            Some(path) => Operations::load(path)?,
            None => Operations::none(),
        };
        if let Some(path) = operations.path() {
            tracing::info!(
                file = %path.display(),
                operations = operations.current().operations.len(),
                "operations catalog loaded"
            );
        }
        let logs = open_logs(&config).await?;
        let boot = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros()
        );
        let log_id = log_id(&config.data_dir).map_err(|e| LogError::from_io("the log id", &e))?;
        let boot = crate::commit::owner_token(&log_id, &boot);
        let resolver = Resolver::start(config.clone());
        let decided = Arc::new(DecidedFile::load(&config.data_dir));
        let decisions = Arc::new(LogDecisions::new(
            Arc::clone(&logs),
            &boot,
            resolver.clone(),
            Arc::clone(&decided),
        ));
        start_recovery(&config, &logs, &boot, decided, Arc::clone(&decisions)).await;
        let workers = workers::Workers::start(config.workers).map_err(ServerError::Workers)?;
        let ctx = Arc::new(ServerContext {
            config,
            auth,
            tls,
            cancels: Arc::default(),
            stats: Arc::default(),
            draining: CancellationToken::new(),
            terminating: CancellationToken::new(),
            logs,
            boot,
            resolver,
            decisions,
            databases: Databases::default(),
            operations,
        });
        Ok(Self {
            ctx,
            listener,
            workers,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` resolves, then shuts down gracefully.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let Server {
            ctx,
            listener,
            workers,
        } = self;
        let sessions = TaskTracker::new();
        let ids = AtomicU64::new(1);
        let stop_watching = CancellationToken::new();
        tokio::spawn(reload::watch(
            Arc::clone(&ctx.operations),
            stop_watching.clone(),
        ));
        tokio::pin!(stop);
        tracing::info!(
            listen = %ctx.config.listen,
            upstream = %ctx.config.upstream.address(),
            tls = ctx.tls.is_some(),
            workers = workers.len(),
            "waly is ready"
        );
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let id = ids.fetch_add(1, Ordering::Relaxed);
                        let span = tracing::info_span!("session", id, peer = %peer);
                        // The socket moves to its worker's runtime and registers there.
                        let Ok(stream) = stream.into_std() else { continue };
                        let ctx = Arc::clone(&ctx);
                        let session = sessions.track_future(async move {
                            match tokio::net::TcpStream::from_std(stream) {
                                Ok(stream) => crate::session::serve(stream, peer, ctx, span).await,
                                Err(e) => tracing::warn!(error = %e, "cannot register an accepted connection"),
                            }
                        });
                        workers.next().spawn(session);
                    }
                    Err(e) => {
                        // Usually EMFILE: out of file descriptors. Back off instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = &mut stop => break,
            }
        }
        drop(listener);
        stop_watching.cancel();
        sessions.close();
        tracing::info!(
            sessions = sessions.len(),
            timeout_secs = ctx.config.shutdown_timeout.as_secs(),
            "shutting down: no new connections; waiting for sessions to finish"
        );
        ctx.draining.cancel();
        if tokio::time::timeout(ctx.config.shutdown_timeout, sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = sessions.len(),
                "shutdown timeout reached: closing the remaining sessions"
            );
            ctx.terminating.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), sessions.wait()).await;
        }
        ctx.decisions.flush().await;
        workers.stop();
        let l = ctx.logs.stats();
        let latency = crate::log::latency::snapshot();
        tracing::info!(
            appends = l.appends,
            batches = l.batches,
            appends_per_batch = format!("{:.2}", l.appends_per_batch()),
            failed_appends = l.failed_appends,
            append_p50_us = latency.p50_us,
            append_p99_us = latency.p99_us,
            append_max_us = latency.max_us,
            "log statistics"
        );
        let s = ctx.stats.snapshot();
        tracing::info!(
            read = s.read,
            write = s.write,
            ddl = s.ddl,
            transaction = s.transaction,
            session = s.session,
            unknown = s.unknown,
            parses = s.parses,
            cache_hits = s.cache_hits,
            "waly stopped"
        );
    }
}

/// The log backend the configuration names: the file log in `data_dir` (opened now, so a damaged or
/// locked log stops the start), or Kafka (its producer created now; each database's topic is checked or
/// created when the database is first used).
async fn open_logs(config: &Config) -> Result<Arc<dyn LogRouter>, ServerError> {
    match &config.log {
        LogBackend::File(settings) => {
            let dir = FileLog::dir_in(&config.data_dir);
            let file_config = FileLogConfig {
                max_record_bytes: settings.max_record_bytes,
                ..FileLogConfig::default()
            };
            let log = tokio::task::spawn_blocking(move || FileLog::open(dir, file_config))
                .await
                .map_err(|e| LogError::Unavailable {
                    detail: e.to_string(),
                })??;
            Ok(Arc::new(SharedLog(Arc::new(log))))
        }
        LogBackend::Kafka(settings) => {
            tracing::info!(brokers = %settings.brokers, topic = %settings.topic, append_timeout_ms = settings.append_timeout.as_millis() as u64, "log backend: Kafka");
            let logs = KafkaLogs::new(settings.clone())?;
            match logs.check_topics().await {
                Ok(topics) => tracing::info!(
                    topics = topics.len(),
                    "Kafka brokers answered; existing topics have one partition each"
                ),
                // A topic with several partitions has no total order: refuse to start.
                Err(TopicCheckError::Partitions(e)) => return Err(e.into()),
                Err(TopicCheckError::Unreachable(e)) => {
                    tracing::warn!(error = %e, "Kafka is not reachable at start; reads work, writes fail until it is")
                }
            }
            Ok(Arc::new(logs))
        }
    }
}

/// The id of the log in `data_dir`, created at its first use: it names the log in the gids waly prepares,
/// so that recovery resolves only transactions recorded for this log.
fn log_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("log_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        ^ (u128::from(std::process::id()) << 64);
    let id = format!(
        "{:x}",
        crc32c::crc32c(&seed.to_le_bytes()) as u64 | (u64::from(std::process::id()) << 32)
    );
    let tmp = data_dir.join("log_id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// Resolves what an earlier process left prepared, and decides the direct commits it left undecided.
/// Waits briefly for Postgres; if it is not there yet, keeps trying in the background (gids and
/// direct commits this process still holds are never touched, so that is safe). Later passes, every
/// 10 s for as long as waly runs, catch a PREPARE that Postgres finished after the session that sent it
/// was gone (a commit query waiting on a lock runs on to its PREPARE whenever the lock comes free,
/// although waly died or lost that connection meanwhile), decide what the first pass deferred until the
/// log had settled (Kafka), and a record a dead process sent that reached the log late. A pass is one
/// query on `pg_prepared_xacts` and a read of each log after its decided position.
async fn start_recovery(
    config: &Config,
    logs: &Arc<dyn LogRouter>,
    owner: &str,
    decided: Arc<DecidedFile>,
    decisions: Arc<LogDecisions>,
) {
    let started = std::time::Instant::now();
    let (config, logs, owner) = (config.clone(), Arc::clone(logs), owner.to_owned());
    let pass = move || {
        let (config, logs, owner, decided, decisions) = (
            config.clone(),
            Arc::clone(&logs),
            owner.clone(),
            Arc::clone(&decided),
            Arc::clone(&decisions),
        );
        async move {
            let prepared = recover_at_start(&config, logs.as_ref(), &owner, started).await;
            let settled = logs.settled_since(started);
            let direct = decide_dead_writers(
                &config,
                logs.as_ref(),
                &decided,
                &decisions,
                &owner,
                settled,
            )
            .await;
            (prepared, direct, settled)
        }
    };
    let mut pending = report_pass(pass().await, true);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(if pending { 2 } else { 10 })).await;
            pending = report_pass(pass().await, false);
        }
    });
}

/// Logs a recovery pass; true when a pass should follow soon (something deferred, or an error).
fn report_pass(
    (prepared, direct, settled): (
        Result<crate::commit::recovery::RecoveryReport, crate::commit::recovery::RecoveryError>,
        Result<DirectReport, crate::commit::recovery::RecoveryError>,
        bool,
    ),
    first: bool,
) -> bool {
    let mut pending = !settled;
    match &prepared {
        Ok(report) => {
            report_recovery(report);
            pending |= !report.deferred.is_empty();
        }
        Err(e) if first => {
            tracing::warn!(error = %e, "recovery of prepared transactions postponed; retrying in the background")
        }
        Err(e) => tracing::debug!(error = %e, "recovery still postponed"),
    }
    match &direct {
        Ok(report) => {
            if report.committed + report.aborted + report.waiting > 0 {
                tracing::info!(
                    committed = report.committed,
                    not_committed = report.aborted,
                    waiting = report.waiting,
                    "recovery decided the direct commits an earlier run left undecided"
                );
            }
            pending |= report.waiting > 0;
        }
        Err(e) if first => {
            tracing::warn!(error = %e, "recovery of direct commits postponed; retrying in the background")
        }
        Err(e) => tracing::debug!(error = %e, "recovery of direct commits still postponed"),
    }
    pending | prepared.is_err() | direct.is_err()
}

fn report_recovery(report: &crate::commit::recovery::RecoveryReport) {
    if report.committed.is_empty() && report.rolled_back.is_empty() && report.deferred.is_empty() {
        tracing::debug!("recovery: no prepared transaction left in doubt");
    } else {
        tracing::info!(
            committed = report.committed.len(),
            rolled_back = report.rolled_back.len(),
            deferred = report.deferred.len(),
            "recovery resolved the prepared transactions an earlier run left"
        );
    }
}
