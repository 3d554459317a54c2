//! A served lake for tests: `sluice serve` started on free loopback ports over a
//! lake made by `sluice demo`, with the clients that talk to it (psql, the
//! Python clients of `tests/serve/`, plain HTTP) and the tokens they log in with.
#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

use super::common;

pub const SECRET: &str = "serve-test-secret-0123456789";

pub fn sluice() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    command
}

/// A table's row count, read with deltalake's own reader.
pub fn rows(lake: &Path, table: &str) -> usize {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(common::read_table(lake, table)).unwrap().rows.len()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A lake from generated traffic: 200 users over 30 hours, every SQL file.
pub fn demo_lake(dir: &Path) -> PathBuf {
    let lake = dir.join("lake");
    let out = sluice()
        .args(["demo", "--users", "200", "--hours", "30", "--lake"])
        .arg(&lake)
        .arg("--input")
        .arg(dir.join("input"))
        .output()
        .unwrap();
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    lake
}

pub struct Served {
    pub child: Child,
    pub pg: u16,
    pub http: u16,
    pub log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test's log stays for reading; a passing one's is litter.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl Served {
    pub fn start(lake: &Path, extra: &[&str]) -> Served {
        Served::start_on(lake, "127.0.0.1", extra)
    }

    /// With the Postgres listener on `host` (0.0.0.0 to take non-loopback clients too).
    pub fn start_on(lake: &Path, host: &str, extra: &[&str]) -> Served {
        Served::launch(lake.to_str().unwrap(), host, extra, &[])
    }

    /// A lake at any URL, with the environment its store needs.
    pub fn launch(lake: &str, host: &str, extra: &[&str], env: &[(&str, String)]) -> Served {
        let (pg, http) = (free_port(), free_port());
        let log = std::env::temp_dir().join(format!("sluice-serve-{pg}.log"));
        let child = sluice()
            .args(["serve", "--lake", lake])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["--pg-addr", &format!("{host}:{pg}"), "--http-addr", &format!("{host}:{http}")])
            .args(extra)
            .env("SLUICE_JWT_SECRET", SECRET)
            .env("SLUICE_LOG", "warn,sluice=debug")
            // A caught panic's backtrace would be symbolised from the debug info: hundreds of MiB.
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut served = Served { child, pg, http, log };
        served.wait_listening(pg);
        served.wait_listening(http);
        served
    }

    pub fn wait_listening(&mut self, port: u16) {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice serve exited ({status}):\n{}", self.log());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "sluice serve did not listen on {port}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// CPU seconds (user + system) the server has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default())
    }

    /// CPU seconds of the server's threads named `name` (their `comm`).
    pub fn thread_cpu_seconds(&self, name: &str) -> f64 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).into_iter().flatten().flatten();
        tasks
            .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name))
            .map(|task| stat_cpu_seconds(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default()))
            .sum()
    }

    /// Resident memory, MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kib = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok());
        kib.unwrap_or(0.0) / 1024.0
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// psql, unaligned and tuples-only, as `user` with `token` as the password.
    pub fn psql(&self, host: &str, user: &str, token: &str, sslmode: &str, script: &str) -> Output {
        psql_at(host, self.pg, user, token, sslmode, script)
    }
}

pub fn psql_at(host: &str, port: u16, user: &str, token: &str, sslmode: &str, script: &str) -> Output {
    Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", &port.to_string(), "-U", user, "-d", "sluice"])
        .env("PGPASSWORD", token)
        .env("PGSSLMODE", sslmode)
        .env("PGCONNECT_TIMEOUT", "10")
        .arg("-c")
        .arg(script)
        .output()
        .expect("psql (postgresql-client) is installed by .ci/run")
}

pub fn token(sub: &str, role: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + 3600;
    encode(&Header::new(Algorithm::HS256), &serde_json::json!({"sub": sub, "role": role, "exp": exp}), &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn clients(args: &[&str]) -> Output {
    script("clients.py", args)
}

/// One of the Python scripts of `tests/serve/`, with the clients' venv.
pub fn script(name: &str, args: &[&str]) -> Output {
    Command::new(common::python()).arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve").join(name)).args(args).output().unwrap()
}

pub fn assert_clients(args: &[&str], served: &Served) {
    let out = clients(args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "clients.py {}:\n{stdout}\n{stderr}\n--- server log ---\n{}", args.join(" "), served.log());
}

/// A local address that is not loopback (for the plain-TCP refusal), if the machine has one.
pub fn outside_address() -> Option<String> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").or_else(|_| socket.connect("10.255.255.1:9")).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}


/// One plain HTTP/1.1 GET: the status and the body.
pub fn http_get(host: &str, port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect((host, port)).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let body = if head.to_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, body)
}

/// Directories three levels down the lake with a `_delta_log`.
pub fn delta_tables(lake: &Path) -> usize {
    let dirs = |p: &Path| -> Vec<PathBuf> { std::fs::read_dir(p).map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default() };
    dirs(lake).iter().flat_map(|a| dirs(a)).flat_map(|b| dirs(&b)).filter(|t| t.join("_delta_log").is_dir()).count()
}

pub fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}


/// User plus system CPU seconds from a `/proc/.../stat` line (clock ticks of 1/100 s).
fn stat_cpu_seconds(stat: &str) -> f64 {
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
