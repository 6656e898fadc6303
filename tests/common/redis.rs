//! A real `redis-server` for the Redis tests: its own port, killed on drop.
//!
//! Every test that calls [`RedisServer::start`] is marked
//! `#[ignore = "needs redis-server on PATH; run: cargo test --all-features --tests -- --ignored"]`,
//! so the test command lists it as ignored, with the way to run it, on every machine: a test
//! binary cannot mark itself ignored at run time, and a test that returned early without a
//! server would report a pass that tested nothing. CI installs `redis-server` and runs them
//! with `--ignored` (`.ci/run`); run that way without the binary, [`RedisServer::start`] fails
//! with what to install. No build script is involved, so nothing about Redis reaches the
//! builds of the crate's users.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` child process on its own port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port; `test` names the caller in the failure message.
    ///
    /// # Panics
    /// When `redis-server` is not on `PATH`, saying what to install: only a run that asked
    /// for the ignored Redis tests gets here.
    pub fn start(test: &str) -> RedisServer {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{test}: redis-server is not on PATH: install it (e.g. `apt-get install \
             redis-server`), or run the test command without `--ignored`, which skips the \
             Redis tests"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer { port, child: None };
        server.spawn();
        server
    }

    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
