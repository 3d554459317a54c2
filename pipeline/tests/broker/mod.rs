//! A test's own Kafka-protocol broker: Tansu with in-memory storage on a free
//! loopback port, stopped when dropped. Tests that change a broker's topics or take
//! it away get their own, so they cannot disturb each other.
//!
//! [`Broker::start_behind_proxy`] puts a TCP [`Proxy`] in front of it and makes the
//! broker advertise the proxy, so every client connection goes through it and a test
//! can take the broker away (and bring it back, data intact) by taking the proxy down.
//!
//! The binary comes from `SLUICE_TANSU` (set by `infra/test.sh`), else the cache
//! `infra/broker.sh` fills.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Broker {
    child: Child,
    /// Where clients connect: the broker's own listener, or the proxy in front of it.
    pub address: String,
    proxy: Option<Proxy>,
}

impl Broker {
    pub fn start() -> Broker {
        let address = format!("127.0.0.1:{}", free_port());
        let child = spawn_tansu(&address, &address);
        wait_listening(&address);
        Broker { child, address, proxy: None }
    }

    /// A broker whose every connection goes through a [`Proxy`]: it listens on a
    /// port of its own and advertises the proxy's; `address` is the proxy's.
    pub fn start_behind_proxy() -> Broker {
        let own = format!("127.0.0.1:{}", free_port());
        let proxy = Proxy::start(&own);
        let child = spawn_tansu(&own, &proxy.address);
        wait_listening(&own);
        Broker { child, address: proxy.address.clone(), proxy: Some(proxy) }
    }

    /// The proxy of a broker started with [`Broker::start_behind_proxy`].
    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("a broker started behind a proxy")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn spawn_tansu(listen: &str, advertise: &str) -> Child {
    let tansu = std::env::var("SLUICE_TANSU").unwrap_or_else(|_| {
        format!("{}/.cache/sluice/bin/tansu", std::env::var("HOME").unwrap_or_default())
    });
    assert!(
        std::path::Path::new(&tansu).is_file(),
        "no Tansu at {tansu}: run the suite with infra/test.sh, which installs it"
    );
    let (listen, advertise) = (format!("tcp://{listen}"), format!("tcp://{advertise}"));
    Command::new(&tansu)
        .args(["broker", "--storage-engine", "memory://tansu/", "--listener-url", &listen])
        .args(["--advertised-listener-url", &advertise])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu starts")
}

fn wait_listening(address: &str) {
    let started = Instant::now();
    while TcpStream::connect(address).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "tansu did not listen on {address}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP proxy on a loopback port of its own, relaying every connection to
/// `upstream`. [`Proxy::down`] closes the listener and every open connection (new
/// ones are refused); [`Proxy::up`] listens on the same port again.
pub struct Proxy {
    pub address: String,
    upstream: String,
    shared: Arc<Shared>,
    /// The accepting thread while up, and the flag that stops it.
    acceptor: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

#[derive(Default)]
struct Shared {
    /// Both sockets of every open connection, by connection.
    open: Mutex<HashMap<u64, [TcpStream; 2]>>,
    next_id: AtomicU64,
    /// Bytes relayed from the upstream to clients, ever.
    to_clients: AtomicU64,
    connections: AtomicU64,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds");
        let address = listener.local_addr().expect("the proxy's address").to_string();
        let proxy = Proxy { address, upstream: upstream.to_string(), shared: Arc::default(), acceptor: Mutex::new(None) };
        proxy.accept_on(listener);
        proxy
    }

    /// Bytes relayed from the broker to clients so far.
    pub fn bytes_to_clients(&self) -> u64 {
        self.shared.to_clients.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn is_up(&self) -> bool {
        self.acceptor.lock().unwrap().is_some()
    }

    /// Stops listening (connecting is refused) and closes every open connection.
    pub fn down(&self) {
        if let Some((stop, thread)) = self.acceptor.lock().unwrap().take() {
            stop.store(true, Ordering::SeqCst);
            thread.join().expect("the proxy's acceptor");
        }
        // The acceptor has ended: no connection is added any more.
        for (_, sockets) in self.shared.open.lock().unwrap().drain() {
            for s in sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Listens on the same port again.
    pub fn up(&self) {
        assert!(!self.is_up(), "the proxy is up already");
        let started = Instant::now();
        let listener = loop {
            match TcpListener::bind(&self.address) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(started.elapsed() < Duration::from_secs(10), "the proxy cannot listen on {} again: {e}", self.address);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        self.accept_on(listener);
    }

    fn accept_on(&self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, upstream, flag) = (self.shared.clone(), self.upstream.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => relay(&shared, client, &upstream),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            // The listener is dropped here: the port refuses connections.
        });
        *self.acceptor.lock().unwrap() = Some((stop, thread));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

fn relay(shared: &Arc<Shared>, client: TcpStream, upstream: &str) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = upstream.parse::<SocketAddr>().map_err(|_| ()).and_then(|a| TcpStream::connect(a).map_err(|_| ())) else {
        return; // the client sees its connection closed
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else { return };
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    shared.open.lock().unwrap().insert(id, [c, s]);
    shared.connections.fetch_add(1, Ordering::SeqCst);
    for (from, to, to_client) in [(client.try_clone(), server.try_clone(), false), (server.try_clone(), client.try_clone(), true)] {
        let (Ok(mut from), Ok(mut to)) = (from, to) else { continue };
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
                if to_client {
                    shared.to_clients.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
            // One direction ended: the connection ends, both ways, both sides.
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            shared.open.lock().unwrap().remove(&id);
        });
    }
}
