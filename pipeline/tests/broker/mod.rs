//! A test's own Kafka-protocol broker: Tansu with in-memory storage on a free
//! loopback port, stopped when dropped. Tests that change a broker's topics or take
//! it away get their own, so they cannot disturb each other.
//!
//! The binary comes from `SLUICE_TANSU` (set by `infra/test.sh`), else the cache
//! `infra/broker.sh` fills.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Child,
    pub address: String,
}

impl Broker {
    pub fn start() -> Broker {
        let tansu = std::env::var("SLUICE_TANSU").unwrap_or_else(|_| {
            format!("{}/.cache/sluice/bin/tansu", std::env::var("HOME").unwrap_or_default())
        });
        assert!(
            std::path::Path::new(&tansu).is_file(),
            "no Tansu at {tansu}: run the suite with infra/test.sh, which installs it"
        );
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let child = Command::new(&tansu)
            .args(["broker", "--storage-engine", "memory://tansu/", "--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let broker = Broker { child, address };
        let started = Instant::now();
        while TcpStream::connect(&broker.address).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "tansu did not listen on {}", broker.address);
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
