//! Redis for tests: the shared server from `SKYGATE_TEST_REDIS_URL` (loopback only), unique key
//! prefixes, and a throwaway `redis-server` of a test's own that it may kill and restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::skip;

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// The shared Redis from `SKYGATE_TEST_REDIS_URL`, which must be on a loopback address.
pub fn redis_url(test: &str) -> Option<String> {
    let url = match std::env::var("SKYGATE_TEST_REDIS_URL") {
        Ok(v) if !v.is_empty() => v,
        _ => {
            skip(test, "SKYGATE_TEST_REDIS_URL is not set");
            return None;
        }
    };
    if !is_loopback_url(&url) {
        skip(
            test,
            "SKYGATE_TEST_REDIS_URL is not a loopback address; tests only talk to this machine",
        );
        return None;
    }
    Some(url)
}

/// Whether a `redis://` URL names a loopback host.
pub fn is_loopback_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("redis://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A key prefix no other test or run shares.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("skygate:test:{test}:{}:{nanos}:", std::process::id())
}

/// A `redis-server` of the test's own on a free loopback port, with no persistence; killed on drop.
pub struct ThrowawayRedis {
    pub port: u16,
    child: Option<Child>,
}

impl ThrowawayRedis {
    /// Starts one, or skips `test` (fails under `SKYGATE_TEST_REQUIRE_ALL`) when the binary is absent.
    pub fn start(test: &str) -> Option<ThrowawayRedis> {
        if !std::path::Path::new(REDIS_SERVER).is_file() {
            skip(test, &format!("{REDIS_SERVER} is not installed"));
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = ThrowawayRedis { port, child: None };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pings() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not come up on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
