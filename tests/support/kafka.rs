//! Kafka-protocol brokers for tests: tansu (a single-node, Kafka-compatible broker), run by
//! `scripts/kafka.sh`.
//!
//! - [`broker()`]: one broker shared by every test of a test binary (in memory, or durable with
//!   `WALY_TEST_KAFKA_DURABLE=1`), started on first use on a
//!   free port in `target/waly-test-kafka/shared-<pid>`. Tests share it, so each should use topics of its
//!   own ([`unique_topic_prefix`]).
//! - [`PrivateBroker`]: a broker of one test's own, in memory or durable (SQLite in its directory), which
//!   the test can stop, SIGKILL and restart on the same port and storage; killed and deleted when dropped.
//!
//! Every broker is started with this process as its owner: a watchdog left by `scripts/kafka.sh` stops it
//! once the test binary has exited, and `make test` stops whatever is left in `target/waly-test-kafka`.
//!
//! The tansu binary is `$WALY_TANSU`, else `$WALY_TANSU_ROOT/bin/tansu` (default root
//! `~/.cache/waly-test/tansu-0.6.0`); `scripts/kafka.sh install` (run by `make test`) builds it there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{free_port, project_root, run_ok, target_dir};

/// The tansu binary the tests use; panics with how to get it when it is missing.
pub fn tansu_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = match std::env::var_os("WALY_TANSU") {
            Some(path) => PathBuf::from(path),
            None => {
                let root = std::env::var_os("WALY_TANSU_ROOT")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                            .join(".cache/waly-test/tansu-0.6.0")
                    });
                root.join("bin/tansu")
            }
        };
        assert!(
            bin.is_file(),
            "the tansu Kafka broker is not installed at {}.\n\
             Install it with `scripts/kafka.sh install` (cargo builds it once, about 15 minutes; \
             `make test` does this), or point WALY_TANSU at a tansu 0.6.0 binary.",
            bin.display()
        );
        bin
    })
    .clone()
}

/// Where the harness keeps its brokers' directories (`make test` stops them and deletes it).
fn kafka_dir() -> PathBuf {
    target_dir().join("waly-test-kafka")
}

/// Runs `scripts/kafka.sh ARGS...` for a broker; panics with its output on failure.
fn kafka_sh(args: &[&str]) -> String {
    run_ok(
        Command::new(project_root().join("scripts/kafka.sh"))
            .args(args)
            .env("WALY_TANSU", tansu_binary())
            .env("WALY_KAFKA_OWNER", std::process::id().to_string()),
        &format!("scripts/kafka.sh {}", args.join(" ")),
    )
}

fn start_broker(dir: &Path, port: u16, durable: bool) {
    let mode = if durable { "durable" } else { "memory" };
    kafka_sh(&["start", dir.to_str().unwrap(), &port.to_string(), mode]);
}

/// The broker shared by the tests of this binary (see [`broker`] for its engine).
pub struct Broker {
    pub port: u16,
    pub dir: PathBuf,
}

pub fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let dir = kafka_dir().join(format!("shared-{}", std::process::id()));
        // A directory left by an earlier process with the same pid holds nothing we want.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        // In memory, unless WALY_TEST_KAFKA_DURABLE=1 (SQLite). Each of tansu's engines has a defect the
        // other lacks (README, "The Kafka backend"): the memory engine shows records a killed producer had
        // in flight seconds late, which the crash suite catches; the durable one does not return records
        // of tens of megabytes, which the write-path suite writes.
        start_broker(
            &dir,
            port,
            std::env::var("WALY_TEST_KAFKA_DURABLE").is_ok_and(|v| v == "1"),
        );
        Broker { port, dir }
    })
}

impl Broker {
    /// `bootstrap.servers` for a client: `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's output so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }
}

/// A broker of one test's own, on its own port and directory; SIGKILLed and deleted when dropped.
pub struct PrivateBroker {
    pub port: u16,
    pub dir: PathBuf,
    pub durable: bool,
}

impl PrivateBroker {
    /// Starts a broker; `durable` keeps its topics and records (in SQLite) across stop/kill and restart,
    /// otherwise they are in memory and lost when it stops.
    pub fn start(durable: bool) -> PrivateBroker {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = kafka_dir().join(format!(
            "private-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let broker = PrivateBroker {
            port: free_port(),
            dir,
            durable,
        };
        broker.start_again();
        broker
    }

    /// `bootstrap.servers` for a client: `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker gracefully (SIGTERM, SIGKILL after 10 s); fine if it is not running.
    pub fn stop(&self) {
        kafka_sh(&["stop", self.dir.to_str().unwrap()]);
    }

    /// Kills the broker with SIGKILL, at once.
    pub fn kill9(&self) {
        kafka_sh(&["kill", self.dir.to_str().unwrap()]);
    }

    /// Starts the broker again on the same port and storage, after [`stop`](Self::stop) or
    /// [`kill9`](Self::kill9); returns once it answers a metadata request.
    pub fn start_again(&self) {
        start_broker(&self.dir, self.port, self.durable);
    }

    /// Stops the broker gracefully, then starts it again on the same port and storage.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// True if the broker process is running.
    pub fn is_running(&self) -> bool {
        Command::new(project_root().join("scripts/kafka.sh"))
            .args(["status", self.dir.to_str().unwrap()])
            .env("WALY_TANSU", tansu_binary())
            .output()
            .is_ok_and(|out| out.status.success())
    }

    /// The broker's output so far (appended across restarts).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new(project_root().join("scripts/kafka.sh"))
            .args(["kill", self.dir.to_str().unwrap()])
            .env("WALY_TANSU", tansu_binary())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh prefix for topic names, unique within this run and across runs of the test binary:
/// `t<pid>_<counter>_<nanos>_` (letters, digits and `_` only, valid in Kafka topic names).
pub fn unique_topic_prefix() -> String {
    format!("t{}_", super::unique())
}
