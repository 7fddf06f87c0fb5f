//! A real `nats-server -js` for the tests and the broker benchmark: on a
//! free loopback port, its store in a directory of the caller's (or its
//! own temporary one), ready once it says so (JetStream included), killed
//! on drop. Included with `#[path]` by `tests/nats_log.rs`,
//! `tests/reliability.rs` and `benches/broker.rs`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

/// A `nats-server -js` on a free loopback port, killed on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
    store: PathBuf,
    /// The store, when the server made its own.
    own_store: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// A server on a free port with a store of its own, removed with it.
    pub fn start_temp() -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir");
        let mut server = NatsServer::start(store.path());
        server.own_store = Some(store);
        server
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A server on a free port storing in `store`.
    pub fn start(store: &Path) -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        NatsServer::start_on(store, port)
    }

    /// A server on `port` storing in `store` (to restart one).
    pub fn start_on(store: &Path, port: u16) -> NatsServer {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`nats-server` is not on PATH: these tests need a real NATS server with \
                 JetStream (Debian: `apt-get install nats-server`)"
            ),
            Err(e) => panic!("cannot start nats-server: {e}"),
        };
        // Its log goes to stderr: keep draining it (and show it on failure).
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().expect("lock");
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let server = NatsServer {
            child,
            port,
            store: store.to_path_buf(),
            own_store: None,
        };
        server.wait_ready(&log);
        server
    }

    /// Waits until the server accepts connections and says so.
    fn wait_ready(&self, log: &Mutex<String>) {
        let start = Instant::now();
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut hello = [0u8; 4];
                if stream.read_exact(&mut hello).is_ok() && &hello == b"INFO" {
                    let ready = log.lock().expect("lock").contains("Server is ready");
                    if ready {
                        return;
                    }
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "nats-server did not start on port {}:\n{}",
                self.port,
                log.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    pub fn stop(mut self) -> (PathBuf, u16) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(start.elapsed() < DEADLINE, "nats-server does not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        (self.store.clone(), self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
