//! Test harness: a real Postgres cluster (shared by every test, each test in its own database) and real
//! `waly serve` processes, talked to over real sockets.
//!
//! The cluster lives in `target/waly-test-pg` on its own port and is started once, under a file lock, by
//! `scripts/pg.sh`. `make test` stops it afterwards.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod backend;
pub mod kafka;
pub mod raw;

pub const PG_PASSWORD: &str = "postgres";

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
}

/// Whether this run's waly processes commit with two-phase commit (`WALY_COMMIT_PROTOCOL=two-phase`,
/// which they read themselves; see the Makefile) instead of the default direct commit.
pub fn two_phase() -> bool {
    std::env::var("WALY_COMMIT_PROTOCOL").is_ok_and(|v| v == "two-phase")
}

/// The shared test cluster.
pub struct Postgres {
    pub port: u16,
}

pub fn postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        let port: u16 = std::env::var("WALY_TEST_PG_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(55_499);
        let data = target_dir().join("waly-test-pg");
        std::fs::create_dir_all(target_dir()).unwrap();
        let lock = File::create(target_dir().join("waly-test-pg.lock")).unwrap();
        lock.lock().expect("lock the test cluster");
        let out = Command::new(project_root().join("scripts/pg.sh"))
            .args(["start", data.to_str().unwrap(), &port.to_string()])
            .env("PGPASSWORD", PG_PASSWORD)
            .output()
            .expect("run scripts/pg.sh");
        assert!(
            out.status.success(),
            "scripts/pg.sh start failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        drop(lock);
        Postgres { port }
    })
}

impl Postgres {
    /// The directory of the cluster's Unix-domain socket (scripts/pg.sh puts it in the data directory).
    pub fn socket_dir(&self) -> PathBuf {
        target_dir().join("waly-test-pg")
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// Creates a fresh database for one test; it is dropped when the test is done with it.
    pub fn create_db(&self, prefix: &str) -> TestDb {
        TestDb::create(self.url("postgres"), prefix)
    }
}

/// A database made for one test, named `<prefix>_<unique>`. Dropping it drops the database (hundreds of
/// tests share the cluster, and each database costs several MB of disk), unless the test failed: then it
/// is kept for a look at what the test left.
pub struct TestDb {
    name: String,
    admin_url: String,
}

impl TestDb {
    fn create(admin_url: String, prefix: &str) -> TestDb {
        let name = format!("{prefix}_{}", unique());
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        TestDb { name, admin_url }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestDb {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl PartialEq<TestDb> for String {
    fn eq(&self, db: &TestDb) -> bool {
        *self == db.name
    }
}

impl std::fmt::Display for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // Best effort: a prepared transaction a test left behind keeps the database, which is harmless.
        let _ = psql_output(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

/// A process-unique, run-unique suffix.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

/// Runs SQL with psql, failing the test on error; returns stdout (unaligned, tuples only).
pub fn psql(url: &str, sql: &str) -> String {
    let out = psql_output(url, sql);
    assert!(
        out.status.success(),
        "psql failed on {sql:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn psql_output(url: &str, sql: &str) -> Output {
    Command::new("psql")
        .args([url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `waly serve`, killed when dropped.
pub struct Waly {
    pub port: u16,
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    /// Where this waly's records are.
    pub access: backend::LogAccess,
}

pub struct WalyOptions {
    pub users_yaml: String,
    pub extra_yaml: String,
    pub env: Vec<(String, String)>,
    /// Postgres' host, or the directory of its Unix-domain socket.
    pub upstream_host: String,
    pub upstream_port: u16,
    /// The log backend: `None` is the file log in the waly's data directory. Defaults to Kafka (the
    /// shared test broker, topics of a prefix of its own) when `WALY_TEST_LOG_BACKEND=kafka`.
    pub kafka: Option<backend::LogAccess>,
}

impl Default for WalyOptions {
    fn default() -> Self {
        Self {
            users_yaml:
                "  - name: postgres\n    method: scram-sha-256\n    password_env: WALY_TEST_PW\n"
                    .into(),
            extra_yaml: String::new(),
            env: vec![("WALY_TEST_PW".into(), PG_PASSWORD.into())],
            upstream_host: "127.0.0.1".into(),
            upstream_port: postgres().port,
            kafka: backend::kafka_mode().then(|| backend::LogAccess::Kafka {
                bootstrap: kafka::broker().bootstrap(),
                prefix: kafka::unique_topic_prefix(),
            }),
        }
    }
}

impl Waly {
    pub fn start() -> Waly {
        Self::start_with(WalyOptions::default())
    }

    pub fn start_with(options: WalyOptions) -> Waly {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("waly.yaml");
        let access = options.kafka.clone().unwrap_or(backend::LogAccess::File {
            data_dir: dir.path().join("data"),
        });
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nupstream: \"host={} port={}\"\ndata_dir: {}\nlog_format: json\n{}{}users:\n{}",
                options.upstream_host,
                options.upstream_port,
                dir.path().join("data").display(),
                options.extra_yaml,
                access.yaml(),
                options.users_yaml
            ),
        )
        .unwrap();
        let log = dir.path().join("waly.log");
        let child = Command::new(env!("CARGO_BIN_EXE_waly"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("WALY_TEST_LOG").unwrap_or_else(|_| "waly=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn waly");
        let mut waly = Waly {
            port,
            child,
            dir,
            log,
            access,
        };
        waly.wait_ready();
        waly
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("waly exited early ({status}):\n{}", self.logs());
            }
            if TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("waly did not start listening:\n{}", self.logs());
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        let _ = File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    pub fn child_alive(&self) -> bool {
        // `try_wait` needs `&mut`; ask the kernel instead.
        Path::new(&format!("/proc/{}", self.child.id())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Waly {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both ends a test compares: Postgres directly and through waly, each on a fresh database of its own so
/// the same script can run on both.
pub struct Targets {
    pub waly: Waly,
    pub direct_db: TestDb,
    pub waly_db: TestDb,
}

impl Targets {
    pub fn new(prefix: &str) -> Targets {
        let pg = postgres();
        Targets {
            waly: Waly::start(),
            direct_db: pg.create_db(prefix),
            waly_db: pg.create_db(prefix),
        }
    }

    pub fn direct_url(&self) -> String {
        postgres().url(&self.direct_db)
    }

    pub fn waly_url(&self) -> String {
        self.waly.url(&self.waly_db)
    }

    /// (label, url) for each end.
    pub fn both(&self) -> [(&'static str, String); 2] {
        [("direct", self.direct_url()), ("waly", self.waly_url())]
    }
}

/// Runs a program, returning its output; panics with everything it printed if it fails.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts two plain `pg_dump` outputs are equal, ignoring comments and the per-run `\restrict` keys;
/// on a difference, shows the first differing line rather than both dumps.
pub fn assert_same_dump(left: &str, right: &str) {
    let clean = |d: &str| -> Vec<String> {
        d.lines()
            .filter(|l| {
                !l.starts_with("--")
                    && !l.starts_with("\\restrict")
                    && !l.starts_with("\\unrestrict")
            })
            .map(str::to_owned)
            .collect()
    };
    let (l, r) = (clean(left), clean(right));
    if let Some(i) = (0..l.len().max(r.len())).find(|&i| l.get(i) != r.get(i)) {
        panic!(
            "dumps differ at line {i}:\n  left:  {:?}\n  right: {:?}",
            l.get(i),
            r.get(i)
        );
    }
}

/// A plain dump of a database's application schemas, normalised for comparison: waly's own objects (its
/// schemas, the capture triggers, the event triggers) left out, COPY rows sorted (pg_dump writes rows in
/// heap order, which differs between a live database and its replay). Sequence positions are kept.
pub fn dump_app(url: &str) -> String {
    let out = run_ok(
        Command::new("pg_dump").args([
            "--no-owner",
            "--no-privileges",
            "-N",
            "waly",
            "-N",
            "waly_replay",
            "-d",
            url,
        ]),
        "pg_dump",
    );
    let mut blocks = Vec::new();
    for block in out.split("\n\n") {
        if block.contains("waly") {
            continue;
        }
        let mut lines: Vec<&str> = block
            .lines()
            .filter(|l| {
                !l.starts_with("--")
                    && !l.starts_with("\\restrict")
                    && !l.starts_with("\\unrestrict")
                    && !l.is_empty()
            })
            .collect();
        if lines.first().is_some_and(|l| l.starts_with("COPY ")) {
            let end = lines.len() - usize::from(lines.last() == Some(&"\\."));
            lines[1..end].sort_unstable();
        }
        if !lines.is_empty() {
            blocks.push(lines.join("\n"));
        }
    }
    blocks.join("\n\n")
}

impl Waly {
    /// Runs `waly replay` with this waly's configuration into `target`; returns its output.
    pub fn replay_into(&self, target: &str) -> String {
        run_ok(&mut self.replay_command(target, None), "waly replay")
    }

    /// `waly replay` with this waly's configuration into `target`, of `database`'s records (with the
    /// file log, `None` passes no `--database`).
    pub fn replay_command(&self, target: &str, database: Option<&str>) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_waly"));
        command
            .args([
                "replay",
                "--config",
                path_str(&self.dir.path().join("waly.yaml")),
                "--target",
                target,
            ])
            .env("WALY_TEST_PW", PG_PASSWORD);
        match (&self.access, database) {
            (backend::LogAccess::File { .. }, Some(db)) => {
                command.args(["--database", db]);
            }
            (access, database) => {
                command.args(access.replay_args(database));
            }
        }
        command
    }

    /// How many records the log holds now.
    pub async fn log_end(&self) -> u64 {
        self.access.end().await
    }

    /// The direct commits the log's outcome records list as not committed: (position, txid).
    pub async fn aborted(&self) -> Vec<(waly::log::Position, String)> {
        self.access.aborted().await
    }

    /// Every record in the log, in order.
    pub async fn records(&self) -> Vec<waly::record::Record> {
        self.access
            .entries()
            .await
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }
}

// ---- Crash suite helpers (tests/crash.rs): restarting waly on its data directory, private clusters. ----

impl Waly {
    /// The configuration file this process was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("waly.yaml")
    }

    /// The data directory the configuration names (`<tempdir>/data`); an environment override
    /// (`WALY_DATA_DIR`) is not reflected here.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (up to `timeout`) for the process to exit; panics if it does not.
    pub fn stop_gracefully(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.terminate();
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => panic!("waly did not exit after SIGTERM:\n{}", self.logs()),
        }
    }

    /// Starts `waly serve` again with the same configuration file (same port, same data directory), after
    /// the previous process exited or was killed; its output is appended to the same log file. `env` is
    /// what [`WalyOptions::env`] was. Returns once the port accepts connections.
    pub fn respawn(&mut self, env: &[(String, String)]) {
        if self.child_alive() {
            self.kill9();
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .unwrap();
        self.child = Command::new(env!("CARGO_BIN_EXE_waly"))
            .args(["serve", "--config", self.config_path().to_str().unwrap()])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("WALY_TEST_LOG").unwrap_or_else(|_| "waly=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn waly");
        self.wait_ready();
    }
}

/// A private Postgres cluster (for tests that must not disturb the shared one: restarting Postgres, or
/// leaving prepared transactions that another waly's start-up recovery would resolve), stopped and deleted
/// when dropped.
pub struct PrivatePostgres {
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl PrivatePostgres {
    pub fn start(prefix: &str) -> PrivatePostgres {
        std::fs::create_dir_all(target_dir()).unwrap();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(target_dir())
            .unwrap();
        let pg = PrivatePostgres {
            port: free_port(),
            dir,
        };
        pg.pg_sh("start");
        pg
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("pg")
    }

    /// Runs `scripts/pg.sh start|stop` on this cluster; panics with its output on failure.
    pub fn pg_sh(&self, cmd: &str) {
        let data = self.data();
        let mut c = Command::new(project_root().join("scripts/pg.sh"));
        c.arg(cmd).arg(&data).env("PGPASSWORD", PG_PASSWORD);
        if cmd == "start" {
            c.arg(self.port.to_string());
        }
        run_ok(&mut c, &format!("scripts/pg.sh {cmd} {}", data.display()));
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    pub fn create_db(&self, prefix: &str) -> TestDb {
        TestDb::create(self.url("postgres"), prefix)
    }

    /// Options for a waly in front of this cluster.
    pub fn waly_options(&self) -> WalyOptions {
        WalyOptions {
            upstream_port: self.port,
            ..WalyOptions::default()
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(project_root().join("scripts/pg.sh"))
            .arg("stop")
            .arg(self.data())
            .output();
    }
}
