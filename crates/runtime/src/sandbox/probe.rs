//! Escape probes: a hostile model (`skygate __probe`, run as an ordinary command model with the
//! binary bound at `/model/skygate`) that tries to get out of its sandbox and reports each attempt.
//! Used by `skygate sandbox check` and by the escape test suite.
//!
//! Every probe is harmless even if the sandbox failed open: it connects only to loopback addresses,
//! mounts only onto a directory it made itself (and unmounts it), removes whatever a write managed
//! to create, and bounds every bomb (processes, memory, disk, CPU, time).

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The probes of one report run, in order (the fatal ones — `cpu`, `sleep` — run on their own).
pub const REPORT_PROBES: &[&str] = &[
    "net_postgres",
    "net_redis",
    "net_interfaces",
    "read_shadow",
    "read_root_home",
    "read_data_dir",
    "read_other_job",
    "write_outside",
    "host_pids",
    "capabilities",
    "ptrace",
    "unshare",
    "mount",
    "fork_bomb",
    "memory_bomb",
    "disk_bomb",
];

/// One probe's result.
fn result(probe: &str, blocked: bool, detail: impl Into<String>) -> Value {
    let detail = detail.into();
    let line = format!(
        "{probe}: {} ({detail})",
        if blocked { "blocked" } else { "ESCAPED" }
    );
    emit(&json!({ "log": line }));
    json!({ "probe": probe, "blocked": blocked, "detail": detail })
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Runs the probes the request names (`input.probes`; default [`REPORT_PROBES`]) and writes the
/// report as the output. `input.data_dir`, `input.other_job` and `input.host_pid` name host things
/// that must stay out of sight.
pub fn probe_main() -> ExitCode {
    let request = super::inside::read_request(1 << 20).unwrap_or_default();
    let request: Value = serde_json::from_slice(&request).unwrap_or(Value::Null);
    let input = &request["input"];
    let names: Vec<String> = match input["probes"].as_array() {
        Some(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        None => REPORT_PROBES.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut report = Vec::new();
    for name in &names {
        report.push(run(name, input));
    }
    emit(&json!({ "output": report }));
    ExitCode::SUCCESS
}

fn run(name: &str, input: &Value) -> Value {
    match name {
        "net_postgres" => connect(name, 5432),
        "net_redis" => connect(name, 6379),
        "net_interfaces" => interfaces(name),
        "read_shadow" => unreadable(name, Path::new("/etc/shadow")),
        "read_root_home" => unreadable(name, Path::new("/root")),
        "read_data_dir" => unreadable(
            name,
            Path::new(input["data_dir"].as_str().unwrap_or("/nonexistent")),
        ),
        "read_other_job" => unreadable(
            name,
            Path::new(input["other_job"].as_str().unwrap_or("/nonexistent")),
        ),
        "write_outside" => write_outside(name),
        "host_pids" => host_pids(name, input["host_pid"].as_u64()),
        "capabilities" => capabilities(name),
        "ptrace" => denied(name, nix::sys::ptrace::traceme()),
        "unshare" => denied(name, nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)),
        "mount" => mount(name),
        "fork_bomb" => fork_bomb(name),
        "memory_bomb" => memory_bomb(name),
        "disk_bomb" => disk_bomb(name),
        "cpu" => cpu(name),
        "sleep" => {
            std::thread::sleep(Duration::from_secs(30));
            result(name, false, "slept 30s without being stopped")
        }
        other => result(other, false, "unknown probe"),
    }
}

/// Loopback only, by design: an outside address is never a target, not even to show it fails.
fn connect(name: &str, port: u16) -> Value {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(_) => result(name, false, format!("connected to 127.0.0.1:{port}")),
        Err(e) => result(name, true, format!("127.0.0.1:{port}: {e}")),
    }
}

fn interfaces(name: &str) -> Value {
    let dev = fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let others: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "lo")
        .collect();
    let route = fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default = route
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some("00000000"));
    if !others.is_empty() || default {
        result(
            name,
            false,
            format!("interfaces {others:?}, default route: {default}"),
        )
    } else {
        result(name, true, "only lo, no default route")
    }
}

fn unreadable(name: &str, path: &Path) -> Value {
    let r = if path.is_dir() {
        fs::read_dir(path).map(|_| ())
    } else {
        fs::read(path).map(|_| ())
    };
    match r {
        Ok(()) => result(name, false, "readable"),
        Err(e) => result(name, true, e.to_string()),
    }
}

fn write_outside(name: &str) -> Value {
    let mut escaped = Vec::new();
    for dir in ["/", "/usr", "/etc", "/model", "/dev", "/proc"] {
        let p = Path::new(dir).join(".skygate-probe");
        if fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .is_ok()
        {
            let _ = fs::remove_file(&p);
            escaped.push(dir);
        }
    }
    // The control: the writable places must work.
    let mut writable = true;
    for dir in ["/work", "/out"] {
        let p = Path::new(dir).join(".skygate-probe");
        writable &= fs::write(&p, b"x").is_ok();
        let _ = fs::remove_file(&p);
    }
    match (escaped.is_empty(), writable) {
        (true, true) => result(name, true, "read-only everywhere but /work and /out"),
        (true, false) => result(name, false, "/work or /out is not writable"),
        (false, _) => result(name, false, format!("wrote to {escaped:?}")),
    }
}

fn host_pids(name: &str, host_pid: Option<u64>) -> Value {
    let pids: Vec<u64> = fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let me = std::process::id();
    let host_visible = host_pid.is_some_and(|p| {
        fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("skygate serve"))
    });
    if me == 1 && pids.len() <= 4 && !host_visible {
        result(
            name,
            true,
            format!("pid 1 in its own namespace, sees {} pids", pids.len()),
        )
    } else {
        result(name, false, format!("pid {me}, sees {} pids", pids.len()))
    }
}

fn capabilities(name: &str) -> Value {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let zero = |v: String| !v.is_empty() && v.chars().all(|c| c == '0');
    let caps_zero = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
        .into_iter()
        .all(|k| zero(field(k)));
    let uid = field("Uid:");
    let nnp = field("NoNewPrivs:");
    let seccomp = field("Seccomp:");
    let not_root = !uid.is_empty() && uid.split_whitespace().all(|u| u != "0");
    let detail =
        format!("uid {uid}; NoNewPrivs {nnp}; Seccomp {seccomp}; capabilities all zero: {caps_zero}");
    result(
        name,
        caps_zero && not_root && nnp == "1" && seccomp == "2",
        detail,
    )
}

fn denied(name: &str, r: nix::Result<()>) -> Value {
    match r {
        Ok(()) => result(name, false, "allowed"),
        Err(e) => result(name, true, e.to_string()),
    }
}

/// Mounts only onto a directory it made itself, and unmounts it if that worked.
fn mount(name: &str) -> Value {
    let dir = Path::new("/work/.skygate-probe-mnt");
    if let Err(e) = fs::create_dir_all(dir) {
        return result(name, true, format!("no place to try: {e}"));
    }
    let r = nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    let v = match r {
        Ok(()) => {
            let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
            result(name, false, "mounted a tmpfs")
        }
        Err(e) => result(name, true, e.to_string()),
    };
    let _ = fs::remove_dir(dir);
    v
}

/// At most 100 short-lived children, all killed at the end.
fn fork_bomb(name: &str) -> Value {
    const MAX: usize = 100;
    let mut children: Vec<Child> = Vec::new();
    let mut err = None;
    while children.len() < MAX {
        match Command::new("/bin/sleep")
            .arg("5")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => children.push(c),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let n = children.len();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    match err {
        Some(e) => result(name, true, format!("started {n} processes, then: {e}")),
        None => result(name, false, format!("started {MAX} processes")),
    }
}

/// Reserves (without touching) up to 16 GiB in 256 MiB steps.
fn memory_bomb(name: &str) -> Value {
    const STEP: usize = 256 << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..64 {
        let mut v = Vec::new();
        if v.try_reserve_exact(STEP).is_err() {
            let mib = held.len() * 256;
            return result(name, true, format!("allocation refused after {mib} MiB"));
        }
        held.push(v);
    }
    result(name, false, "reserved 16 GiB")
}

/// Writes at most 2 GiB into /work in 4 MiB files (each under the file-size limit), then removes them.
fn disk_bomb(name: &str) -> Value {
    let chunk = vec![0u8; 4 << 20];
    let mut written = 0usize;
    let mut err = None;
    let mut files = Vec::new();
    while written < (2 << 30) {
        let p = Path::new("/work").join(format!(".skygate-fill-{}", files.len()));
        files.push(p.clone());
        if let Err(e) = fs::write(&p, &chunk) {
            err = Some(e);
            break;
        }
        written += chunk.len();
    }
    for f in files {
        let _ = fs::remove_file(f);
    }
    match err {
        Some(e) => result(name, true, format!("wrote {} MiB, then: {e}", written >> 20)),
        None => result(name, false, "wrote 2 GiB"),
    }
}

/// Spins for at most 60 s of wall time (the CPU limit should end it first).
fn cpu(name: &str) -> Value {
    let start = Instant::now();
    let mut x: u64 = 1;
    while start.elapsed() < Duration::from_secs(60) {
        for _ in 0..1_000_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
    }
    result(name, false, "spun for 60s")
}
