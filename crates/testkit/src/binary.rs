//! Running the real `skygate` binary: `serve` as a child process whose address is read from its
//! stdout, and one-shot CLI commands against the same data dir.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `skygate serve` child process. Killed on drop.
pub struct BinaryServer {
    child: Child,
    pub addr: SocketAddr,
    pub ca_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl BinaryServer {
    /// Starts `bin serve --data-dir DIR --listen 127.0.0.1:0 EXTRA…` and waits (≤ 60 s) for the
    /// "listening on https://…" and "CA certificate: …" lines. stderr goes to `DIR/../server.stderr`.
    pub fn start(bin: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<BinaryServer> {
        let stderr_path = data_dir.with_extension("stderr");
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("SKYGATE_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut addr, mut ca) = (None, None);
        while addr.is_none() || ca.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    anyhow::bail!("server did not start; stderr:\n{err}");
                }
            };
            if let Some(rest) = line.split("listening on https://").nth(1) {
                addr = Some(rest.trim().parse()?);
            } else if let Some(rest) = line.strip_prefix("CA certificate: ") {
                ca = Some(PathBuf::from(rest.trim()));
            }
        }
        let (Some(addr), Some(ca_path)) = (addr, ca) else {
            anyhow::bail!("unreachable")
        };
        Ok(BinaryServer {
            child,
            addr,
            ca_path,
            stderr_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (≤ `within`) for exit.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                anyhow::bail!("server did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bin --data-dir DIR ARGS…` to completion.
pub fn cli(bin: &Path, data_dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(bin)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

/// The last non-empty line of a command's stdout.
pub fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The `skygate` binary of this build, for in-process servers whose sandbox re-executes it as its
/// helper. Test binaries live in `<target>/<profile>/deps/`; the binary is `<target>/<profile>/skygate`.
/// It is (re)built once per test process with the same cargo, so it is never stale (a no-op when
/// `cargo test --workspace` or `cargo build --workspace --all-targets` already built it).
pub fn skygate_binary() -> anyhow::Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_skygate().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_skygate() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("test binary has no directory"))?;
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent()
            .ok_or_else(|| anyhow::anyhow!("no profile directory"))?
    } else {
        deps
    };
    let bin = profile_dir.join("skygate");
    let target = profile_dir
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no target directory"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--package",
        "skygate",
        "--bin",
        "skygate",
        "--target-dir",
    ])
    .arg(target);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        // Without cargo (a test binary run by hand), an existing binary will do.
        if bin.is_file() {
            return Ok(bin);
        }
        anyhow::bail!(
            "could not build the skygate binary: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bin)
}
