//! A test's own object stores on loopback: moto's S3 server and Azurite's blob
//! service, each on a free port, stopped when dropped; and a lake's tables read
//! back through deltalake's own reader, wherever the lake is.
//!
//! The binaries come from `SLUICE_MOTO` and `SLUICE_AZURITE` (set by
//! `infra/test.sh`, which installs them), else the cache the infra scripts fill.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::util::display::array_value_to_string;

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Server {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn cache() -> String {
    std::env::var("SLUICE_CACHE").unwrap_or_else(|_| format!("{}/.cache/sluice", std::env::var("HOME").unwrap_or_default()))
}

fn binary(var: &str, cached: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| format!("{}/{cached}", cache()));
    assert!(std::path::Path::new(&path).is_file(), "no {path} ({var}): run the suite with infra/test.sh, which installs it");
    path
}

fn wait_listening(port: u16, what: &str, log: &std::path::Path) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            panic!("{what} did not listen on {port} within a minute:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One plain HTTP/1.1 request to loopback; returns the status code.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, String)]) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl Server {
    /// moto's S3 server with an empty bucket `bucket`.
    pub fn moto(bucket: &str) -> Server {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let child = Command::new(binary("SLUICE_MOTO", "moto/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        wait_listening(port, "moto_server", &log);
        let status = http(port, "PUT", &format!("/{bucket}"), &[]);
        assert_eq!(status, 200, "creating bucket {bucket} in moto");
        Server { child, port, _dir: dir }
    }

    /// Azurite's blob service with an empty container `container` (data on disk,
    /// so the server can be restarted).
    pub fn azurite(container: &str) -> Server {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("azurite.log");
        let child = Command::new(binary("SLUICE_AZURITE", "azurite/node_modules/.bin/azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(dir.path())
            // No telemetry: it would call a host off this machine.
            .args(["--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite starts");
        wait_listening(port, "azurite", &log);
        let script = format!("{}/../infra/azurite.sh", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash").args([&script, "container", container, &port.to_string()]).output().expect("azurite.sh runs");
        assert!(out.status.success(), "creating container {container}: {}", String::from_utf8_lossy(&out.stderr));
        Server { child, port, _dir: dir }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a client of this moto server needs (object_store's variables).
    pub fn s3_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing-secret-key".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The environment a client of this Azurite needs: object_store's emulator
    /// mode, which takes the address from `AZURITE_BLOB_STORAGE_URL` alone (so a
    /// test reading the lake itself sets it in its own environment too).
    pub fn azure_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.into()),
            ("AZURITE_BLOB_STORAGE_URL", self.endpoint()),
            ("AZURE_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Azurite addressed as an account endpoint with the given key (not emulator
    /// mode, which would bring the right key itself).
    pub fn azure_env_with_key(&self, key: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY", key.into()),
            ("AZURE_ENDPOINT", format!("{}/{AZURITE_ACCOUNT}", self.endpoint())),
            ("AZURE_ALLOW_HTTP", "true".into()),
        ]
    }
}

/// The same settings as deltalake storage options (lower-case keys), for the test's
/// own reads.
pub fn options(env: &[(&str, String)]) -> HashMap<String, String> {
    env.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect()
}

/// Every row of the table at `url`, as sorted text; columns for which `skip` is
/// true are left out.
pub async fn table_rows(url: &str, options: &HashMap<String, String>, skip: impl Fn(&str) -> bool) -> Vec<String> {
    let url = url::Url::parse(url).expect("a table URL");
    let table = deltalake::open_table_with_storage_options(url.clone(), options.clone())
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let (_, stream) = table.scan_table().await.expect("scan");
    let batches: Vec<RecordBatch> = deltalake::operations::collect_sendable_stream(stream).await.expect("read");
    let mut rows = Vec::new();
    for b in batches {
        let schema = b.schema();
        for r in 0..b.num_rows() {
            let mut text = String::new();
            for (i, f) in schema.fields().iter().enumerate() {
                if !skip(f.name()) {
                    text.push_str(&format!("{}={};", f.name(), array_value_to_string(b.column(i), r).unwrap()));
                }
            }
            rows.push(text);
        }
    }
    rows.sort();
    rows
}

/// The table paths of a local lake (three levels with a `_delta_log`).
pub fn local_tables(lake: &std::path::Path) -> Vec<String> {
    let mut tables = Vec::new();
    let dirs = |p: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(p).map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()).unwrap_or_default()
    };
    for a in dirs(lake) {
        if a.file_name().unwrap().to_string_lossy().starts_with('_') {
            continue;
        }
        for b in dirs(&a) {
            for c in dirs(&b) {
                if c.join("_delta_log").is_dir() {
                    tables.push(c.strip_prefix(lake).unwrap().to_string_lossy().into_owned());
                }
            }
        }
    }
    tables.sort();
    tables
}

/// Every table of two lakes, compared row by row (text), with `skip`ped columns
/// left out; the table paths come from the local `reference` lake.
pub async fn assert_lakes_equal(reference: &std::path::Path, other: &str, options: &HashMap<String, String>, skip: impl Fn(&str) -> bool + Copy) {
    let tables = local_tables(reference);
    assert!(tables.len() > 20, "the reference lake has only {} tables", tables.len());
    let mut differ = BTreeMap::new();
    // `pipeline_throughput` counts by processing time: no two runs share it.
    for table in tables.iter().filter(|t| !t.ends_with("pipeline_throughput")) {
        let local = url::Url::from_directory_path(reference.join(table)).unwrap().to_string();
        let want = table_rows(&local, &HashMap::new(), skip).await;
        let got = table_rows(&format!("{other}/{table}"), options, skip).await;
        if got != want {
            let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).take(2).cloned().collect();
            let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(2).cloned().collect();
            differ.insert(table.clone(), format!("{} rows, want {}; missing e.g. {missing:?}; extra e.g. {extra:?}", got.len(), want.len()));
        }
    }
    assert!(differ.is_empty(), "tables differ from the reference lake: {differ:#?}");
}

/// Columns that say when the pipeline or the broker saw a message, which no two
/// runs share: left out when two lakes are compared.
pub fn by_processing_time(column: &str) -> bool {
    column == "_ingested_at" || column == "_kafka_timestamp" || column.contains("ingest_lag")
}
