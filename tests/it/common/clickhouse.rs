//! ClickHouse for integration tests: any server named by `$TOLLGATE_TEST_CLICKHOUSE_URL`
//! (`scripts/test.sh` starts one for the whole suite; a user's Docker one works too), else a
//! real ClickHouse 26.9 run offline from `scripts/clickhouse-server.py` (PyPI `chdb-core`,
//! installed by `scripts/setup-clickhouse.sh`; findings in `scripts/clickhouse-server.md`).
//!
//! Server processes started here never outlive the test process:
//! - each is a direct child (`clickhouse-server.py run`, not `start`, which would put it in a
//!   session of its own), so it stays in the test's process group, which nextest kills on a
//!   timeout or Ctrl-C;
//! - it gets `PR_SET_PDEATHSIG = SIGKILL`, spawned from a thread that lives as long as the
//!   process (the signal follows the spawning *thread*), so it also dies when the test process
//!   aborts or is SIGKILLed alone;
//! - `PrivateServer` kills its server on drop; the shared server is killed, reaped and its data
//!   dir removed by a `libc::atexit` handler when the test process exits normally (a failed
//!   test too). Only an abnormal exit leaves a data dir behind in `$TMPDIR`.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// When set (e.g. `http://127.0.0.1:8123`, may carry `user:password@`), every
/// [`ClickHouse::shared`] uses that server and no server is started.
pub const URL_ENV: &str = "TOLLGATE_TEST_CLICKHOUSE_URL";

/// Bound of every wait: server start, /ping, port release, one query.
const WAIT: Duration = Duration::from_secs(60);

/// A ClickHouse reachable over HTTP.
#[derive(Clone, Debug)]
pub struct ClickHouse {
    /// Base URL without trailing slash, e.g. `http://127.0.0.1:18123`.
    pub url: String,
    http: reqwest::Client,
}

impl ClickHouse {
    /// A client for the server at `url`.
    pub fn new(url: impl Into<String>) -> ClickHouse {
        let url = url.into().trim().trim_end_matches('/').to_string();
        let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
        ClickHouse { url, http }
    }

    /// The shared server: `$TOLLGATE_TEST_CLICKHOUSE_URL` if set, else one private server per
    /// test process, started on first use and killed when the process exits. Under nextest
    /// (one process per test) that is one server per test that calls this: ~1 s each, so the
    /// suite runs with the variable set (`scripts/test.sh`). Isolate tests with
    /// [`ClickHouse::fresh_database`].
    pub async fn shared() -> ClickHouse {
        match std::env::var(URL_ENV) {
            Ok(url) if !url.trim().is_empty() => ClickHouse::new(url),
            _ => ClickHouse::new(blocking(|| shared_server().url()).await),
        }
    }

    /// Runs SQL (one statement, sent as the POST body), returns the body as text (by default
    /// TabSeparated). Panics with ClickHouse's error text on failure. `wait_end_of_query=1`
    /// makes an error in the middle of a result an HTTP error rather than a truncated 200.
    pub async fn exec(&self, sql: &str) -> String {
        let resp = self
            .http
            .post(&self.url)
            .query(&[("wait_end_of_query", "1")])
            .body(sql.to_owned())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("ClickHouse at {} unreachable: {e}\nquery: {sql}", self.url)
            });
        let status = resp.status();
        let failed =
            !status.is_success() || resp.headers().contains_key("x-clickhouse-exception-code");
        let body = resp.text().await.unwrap_or_else(|e| {
            panic!(
                "ClickHouse at {}: reading the answer: {e}\nquery: {sql}",
                self.url
            )
        });
        if failed {
            panic!(
                "ClickHouse query failed (HTTP {status}): {}\nquery: {sql}",
                body.trim_end()
            );
        }
        body
    }

    /// Runs a SELECT with `FORMAT JSONEachRow` appended, returns its rows. Note that UInt64
    /// and Decimal come back as JSON numbers: select `toString(x)` for exact values.
    pub async fn rows(&self, sql: &str) -> Vec<Value> {
        let sql = sql.trim_end().trim_end_matches(';');
        let body = self.exec(&format!("{sql}\nFORMAT JSONEachRow")).await;
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON row ({e}): {l}\nquery: {sql}"))
            })
            .collect()
    }

    /// Tollgate's own client on database `db`, to read rows back the way Tollgate does
    /// ([`tollgate::sink::clickhouse::ClickHouse::fetch_records`]).
    pub fn tollgate_client(&self, db: &str) -> tollgate::sink::clickhouse::ClickHouse {
        // Credentials in the URL go to their own settings, as in a config.
        let mut url = reqwest::Url::parse(&self.url).unwrap();
        let user = Some(url.username())
            .filter(|u| !u.is_empty())
            .unwrap_or("default");
        let (user, password) = (user.to_string(), url.password().map(str::to_string));
        let _ = (url.set_username(""), url.set_password(None));
        tollgate::sink::clickhouse::ClickHouse::new(&tollgate::config::ClickHouseSettings {
            url: url.as_str().trim_end_matches('/').to_string(),
            database: db.to_string(),
            user,
            password,
            ca_pem: None,
            batch_max_rows: 1,
            batch_period: WAIT,
            timeout: WAIT,
            ttl_days: None,
            rollup_ttl_days: None,
            cluster: None,
            migrate_on_start: false,
        })
        .unwrap()
    }

    /// A new, empty database named after the test (sanitized) plus a random suffix, e.g.
    /// `fresh_databases_are_empty_3f9a0c1d2e4b`; returns its name (safe unquoted).
    pub async fn fresh_database(&self, test_name: &str) -> String {
        let name = database_name(test_name);
        self.exec(&format!("CREATE DATABASE {name}")).await;
        name
    }
}

/// ClickHouse behind TLS: a relay on 127.0.0.1 presenting a fresh self-signed certificate
/// for `localhost` (made with the `openssl` command), forwarding each connection to a plain
/// ClickHouse. It runs on the test's runtime, so tests that block on a subprocess need a
/// multi-threaded one.
pub struct TlsFront {
    /// `https://localhost:PORT`
    pub url: String,
    /// The certificate, which is also its own CA.
    pub ca_pem: Vec<u8>,
}

impl TlsFront {
    pub async fn start(backend: &ClickHouse) -> TlsFront {
        use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl command");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate_chain_file(&cert).unwrap();
        acceptor
            .set_private_key_file(&key, SslFiletype::PEM)
            .unwrap();
        let acceptor = acceptor.build();
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = backend
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let ssl = Ssl::new(acceptor.context()).unwrap();
                let backend = backend.clone();
                tokio::spawn(async move {
                    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                        return; // a client that does not trust the certificate
                    }
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(&backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsFront {
            url: format!("https://localhost:{port}"),
            ca_pem: std::fs::read(&cert).unwrap(),
        }
    }
}

/// `[a-z0-9_]`, at most 40 characters of the test name (its end, where the distinguishing
/// part of `module::test` is), never starting with a digit, then `_` and 48 random bits.
fn database_name(test_name: &str) -> String {
    let mut base: String = test_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    base = base.trim_matches('_').to_string();
    if base.len() > 40 {
        base = base[base.len() - 40..].trim_start_matches('_').to_string();
    }
    if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
        base.insert_str(0, "t_");
    }
    // The low 48 bits of a v7 UUID are random.
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{base}_{}", &id[id.len() - 12..])
}

/// A ClickHouse server owned by one test, which it may kill -9 and restart on the same data.
pub struct PrivateServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    /// Keeps the port ours for the server's whole life, restarts included.
    _hold: PortHold,
}

impl PrivateServer {
    /// Starts a server on a port of its own with an empty temporary data dir.
    pub async fn start() -> PrivateServer {
        blocking(|| {
            let dir = tempfile::Builder::new()
                .prefix("tollgate-ch-")
                .tempdir()
                .unwrap();
            let hold = PortHold::new();
            let child = spawn_and_wait(hold.port, dir.path()).unwrap_or_else(|log| {
                panic!("ClickHouse did not start on port {}:\n{log}", hold.port)
            });
            PrivateServer {
                port: hold.port,
                child: Some(child),
                dir,
                _hold: hold,
            }
        })
        .await
    }

    pub fn url(&self) -> String {
        url(self.port)
    }

    pub fn client(&self) -> ClickHouse {
        ClickHouse::new(self.url())
    }

    /// The server's pid, `None` after [`PrivateServer::kill9`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The data dir (`clickhouse/` holds the tables, `server.log` the log).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log (warnings and errors), across restarts.
    pub fn log(&self) -> String {
        log_tail(self.dir.path(), 0)
    }

    /// SIGKILLs the server and waits until its port no longer accepts connections.
    pub fn kill9(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        kill_and_reap(child);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr(self.port), Duration::from_millis(200)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "port {} still accepts connections {WAIT:?} after SIGKILL\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port (still held, so nothing else took it) and
    /// data dir, killing it first if it still runs, and waits for /ping.
    pub async fn restart(&mut self) {
        self.kill9();
        let (port, dir) = (self.port, self.dir.path().to_path_buf());
        let child = blocking(move || {
            spawn_and_wait(port, &dir)
                .unwrap_or_else(|log| panic!("ClickHouse did not restart on port {port}:\n{log}"))
        })
        .await;
        self.child = Some(child);
    }
}

/// A loopback port held for a server of the test's own: a socket bound with SO_REUSEPORT
/// that never listens. Only a server that sets SO_REUSEPORT as well (ClickHouse, through
/// `listen_reuse_port`, see scripts/clickhouse-server.py) can bind the port while it is held,
/// so nothing else takes it between the pick and the server's bind, or across a restart.
struct PortHold {
    port: u16,
    _socket: socket2::Socket,
}

impl PortHold {
    fn new() -> PortHold {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.bind(&addr(0).into()).unwrap();
        let port = socket
            .local_addr()
            .unwrap()
            .as_socket()
            .expect("an IPv4 address")
            .port();
        PortHold {
            port,
            _socket: socket,
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Process management (blocking; async callers go through `blocking`).

/// Runs blocking work off the async runtime; a panic inside keeps its message.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("{e}"),
    }
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The venv python with chdb-core: `scripts/setup-clickhouse.sh` once per process.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-clickhouse.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed ({}):\n{}{}",
            script.display(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
    })
}

fn server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/clickhouse-server.py")
}

/// Spawns `clickhouse-server.py run` on `port` and `dir` and waits until /ping answers.
/// On failure, returns the log of that attempt.
fn spawn_and_wait(port: u16, dir: &Path) -> Result<Child, String> {
    let log_path = dir.join("server.log");
    let log_from = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(server_script())
        .args(["run", "--reuse-port", "--port", &port.to_string(), "--data"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut child = spawn_tied_to_process(cmd)
        .unwrap_or_else(|e| panic!("spawning {}: {e}", server_script().display()));
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!(
                "(exited with {status})\n{}",
                log_tail(dir, log_from)
            ));
        }
        if ping(port) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            kill_and_reap(child);
            let log = log_tail(dir, log_from);
            return Err(format!(
                "no answer on {}/ping within {WAIT:?}\n{log}",
                url(port)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /ping` answered `Ok.` (plain std, so it works outside any runtime).
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr(port), Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    // HTTP/1.0: the server closes the connection after the answer and does not chunk it.
    let mut answer = Vec::new();
    if s.write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
        || s.read_to_end(&mut answer).is_err()
    {
        return false;
    }
    let answer = String::from_utf8_lossy(&answer);
    answer.split(' ').nth(1) == Some("200")
        && answer
            .split_once("\r\n\r\n")
            .is_some_and(|(_, body)| body.trim() == "Ok.")
}

/// The server log from byte `from` on, at most its last 8000 bytes.
fn log_tail(dir: &Path, from: u64) -> String {
    let text = std::fs::read(dir.join("server.log")).unwrap_or_default();
    let start = (from as usize)
        .min(text.len())
        .max(text.len().saturating_sub(8000));
    let tail = String::from_utf8_lossy(&text[start..]).into_owned();
    if tail.trim().is_empty() {
        "(server log is empty)".into()
    } else {
        tail
    }
}

fn kill_and_reap(mut child: Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

/// Spawns `cmd` with `PR_SET_PDEATHSIG = SIGKILL`. That signal fires when the spawning
/// *thread* ends, not the process, and test threads end with their test: spawn from one
/// thread that lives as long as the process.
fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    type Job = Box<dyn FnOnce() + Send>;
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("clickhouse-spawner".into())
            .spawn(move || rx.into_iter().for_each(|job| job()))
            .unwrap();
        Mutex::new(tx)
    });
    let parent = std::process::id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The test process died before the prctl: do not run orphaned.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let _ = tx.send(cmd.spawn());
    });
    spawner
        .lock()
        .unwrap()
        .send(job)
        .expect("spawner thread is gone");
    rx.recv().expect("spawner thread is gone")
}

/// The per-process server behind [`ClickHouse::shared`] when no URL is configured.
struct SharedServer {
    port: u16,
}

impl SharedServer {
    fn url(&self) -> String {
        url(self.port)
    }
}

static SHARED_PID: AtomicI32 = AtomicI32::new(0);
static SHARED_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

fn shared_server() -> &'static SharedServer {
    static SHARED: OnceLock<SharedServer> = OnceLock::new();
    SHARED.get_or_init(|| {
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        // SAFETY: registers a plain `extern "C" fn`.
        AT_EXIT.call_once(|| assert_eq!(unsafe { libc::atexit(stop_shared_at_exit) }, 0));
        // Statics are never dropped: the data dir is removed by the exit hook.
        let dir = tempfile::Builder::new()
            .prefix("tollgate-ch-shared-")
            .tempdir()
            .unwrap()
            .keep();
        *SHARED_DIR.lock().unwrap() = Some(dir.clone());
        // The port is held until the process exits, like the server.
        let hold = Box::leak(Box::new(PortHold::new()));
        let port = hold.port;
        let started = std::panic::catch_unwind(|| {
            spawn_and_wait(port, &dir)
                .unwrap_or_else(|log| panic!("ClickHouse did not start on port {port}:\n{log}"))
        });
        let child = match started {
            Ok(child) => child,
            Err(panic) => {
                SHARED_DIR.lock().unwrap().take();
                let _ = std::fs::remove_dir_all(&dir);
                std::panic::resume_unwind(panic)
            }
        };
        SHARED_PID.store(child.id() as i32, Ordering::SeqCst);
        // Reaped by the exit hook.
        std::mem::forget(child);
        SharedServer { port }
    })
}

extern "C" fn stop_shared_at_exit() {
    let pid = SHARED_PID.swap(0, Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: our own child, never reaped before, so the pid cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    if let Some(dir) = SHARED_DIR.lock().ok().and_then(|mut d| d.take()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The config section that ships to database `db` at `ch_url`, in batches of 50 ms, with
/// `extra` settings of that section appended.
pub fn telemetry(ch_url: &str, db: &str, extra: &str) -> String {
    format!(
        "telemetry:\n  clickhouse:\n    url: {ch_url}\n    database: {db}\n    batch_period_ms: 50\n{extra}"
    )
}
