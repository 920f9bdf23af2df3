//! moto's S3 server as a real S3-compatible peer: started per test on a free loopback port from the
//! executable named by `SKYGATE_TEST_MOTO_SERVER` (the test venv's `moto_server`, exported by
//! `scripts/test.sh`), stopped when dropped. Tests skip loudly without it, or fail under
//! `SKYGATE_TEST_REQUIRE_ALL`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MotoServer {
    child: Child,
    pub addr: SocketAddr,
}

impl MotoServer {
    /// Starts moto, or returns `None` after skipping `test` when it is not available.
    pub fn start(test: &str) -> anyhow::Result<Option<MotoServer>> {
        let Some(exe) = crate::env_or_skip("SKYGATE_TEST_MOTO_SERVER", test) else {
            return Ok(None);
        };
        // A free loopback port: bind, read, release. moto binds it right after.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {exe}: {e}"))?;
        let mut server = MotoServer { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                anyhow::bail!("moto_server exited at start ({status})");
            }
            if Instant::now() > deadline {
                anyhow::bail!("moto_server did not listen on {addr} within 30s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Some(server))
    }

    /// The endpoint URL for an S3 client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
