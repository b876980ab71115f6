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
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// Creates a fresh database for one test and returns its name.
    pub fn create_db(&self, prefix: &str) -> String {
        let name = format!("{prefix}_{}", unique());
        psql(&self.url("postgres"), &format!("CREATE DATABASE {name}"));
        name
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
}

pub struct WalyOptions {
    pub users_yaml: String,
    pub extra_yaml: String,
    pub env: Vec<(String, String)>,
    pub upstream_port: u16,
}

impl Default for WalyOptions {
    fn default() -> Self {
        Self {
            users_yaml:
                "  - name: postgres\n    method: scram-sha-256\n    password_env: WALY_TEST_PW\n"
                    .into(),
            extra_yaml: String::new(),
            env: vec![("WALY_TEST_PW".into(), PG_PASSWORD.into())],
            upstream_port: postgres().port,
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
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nupstream: postgres://127.0.0.1:{}\ndata_dir: {}\nlog_format: json\n{}users:\n{}",
                options.upstream_port,
                dir.path().join("data").display(),
                options.extra_yaml,
                options.users_yaml
            ),
        )
        .unwrap();
        let log = dir.path().join("waly.log");
        let child = Command::new(env!("CARGO_BIN_EXE_waly"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "waly=debug")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn waly");
        let mut waly = Waly {
            port,
            child,
            dir,
            log,
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
    pub direct_db: String,
    pub waly_db: String,
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
