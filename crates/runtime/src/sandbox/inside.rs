//! The helper side of the sandbox: what the `skygate __sandbox` hidden subcommand runs. Two stages,
//! both fresh single-threaded processes (so plain safe code, no work after `fork`):
//!
//! * **outer** (started by the host as the job's leased unprivileged uid): sets the parent-death
//!   signal and the process limit, creates new user, mount, pid, network, ipc, uts and cgroup
//!   namespaces, maps its own uid to [`INSIDE_ID`], builds the sandbox root (a small tmpfs with
//!   read-only binds of `/usr`, the lib dirs, the model directory and operator paths; device nodes;
//!   size-limited tmpfs `/work` and `/out`), then starts the inner stage, which becomes pid 1 of the
//!   new pid namespace. When it ends, the outer stage copies the regular files of `/out` into the
//!   host's job outbox (through a descriptor opened before the namespaces were made, so nothing else
//!   of the host is reachable) and writes the [`Status`] line.
//! * **inner** (pid 1): mounts a new `/proc`, pivots into the root, makes it read-only, applies the
//!   rlimits, drops every capability (bounding, ambient, inheritable, permitted, effective), sets
//!   `no_new_privs`, installs the seccomp filter and then runs the payload: a built-in model in this
//!   process, or `exec` of the model's command. Its death kills everything in the pid namespace.
//!
//! Errors name the step that failed but never a host path (they reach the prediction's log).

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use nix::fcntl::{open, openat, Flock, FlockArg, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, getegid, geteuid, getppid, pivot_root, sethostname};

use super::spec::{Payload, Spec, Status, HELPER_COMMAND, INSIDE_ID};
use super::{protocol, seccomp};

/// The largest number of files copied out of `/out`.
pub const MAX_OUTPUT_FILES: u32 = 64;

/// Runs one helper stage: `args` are the arguments after the hidden subcommand.
pub fn helper_main(args: &[OsString]) -> ExitCode {
    let (stage, json) = match args {
        [stage, json] => (
            stage.to_string_lossy().into_owned(),
            json.to_string_lossy().into_owned(),
        ),
        _ => {
            eprintln!("skygate sandbox helper: expected a stage and a spec");
            return ExitCode::from(2);
        }
    };
    let spec: Spec = match serde_json::from_str(&json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skygate sandbox helper: bad spec: {e}");
            return ExitCode::from(2);
        }
    };
    match stage.as_str() {
        "outer" => outer(&spec),
        "inner" => match inner(&spec) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("sandbox: {e}");
                ExitCode::from(126)
            }
        },
        _ => ExitCode::from(2),
    }
}

/// A step that failed, with the OS error.
fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn outer(spec: &Spec) -> ExitCode {
    let started = Instant::now();
    let status = match outer_steps(spec, started) {
        Ok(s) => s,
        Err(error) => Status::SetupFailed { error },
    };
    let ok = matches!(status, Status::Ended { .. });
    let line = serde_json::to_string(&status).unwrap_or_else(|_| "{}".into());
    // One write, after the model and everything it started are gone.
    let _ = std::io::stderr().write_all(format!("\n{} {line}\n", spec.nonce).as_bytes());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(125)
    }
}

fn outer_steps(spec: &Spec, started: Instant) -> Result<Status, String> {
    step(
        "parent-death signal",
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
    )?;
    if getppid().as_raw() != i32::try_from(spec.parent_pid).unwrap_or(-1) {
        return Err("the launcher is gone".into());
    }
    // Before the user namespace exists: its per-namespace process maximum is taken from this limit.
    let n = spec.limits.processes;
    step("process limit", setrlimit(Resource::RLIMIT_NPROC, n, n))?;
    let outbox = step(
        "open the job outbox",
        open(
            &spec.outbox,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
    )?;
    let (uid, gid) = (geteuid(), getegid());
    let ns = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    step("create namespaces", unshare(ns))?;
    step("uid map", fs::write("/proc/self/setgroups", "deny"))?;
    step(
        "uid map",
        fs::write("/proc/self/uid_map", format!("{INSIDE_ID} {uid} 1\n")),
    )?;
    step(
        "gid map",
        fs::write("/proc/self/gid_map", format!("{INSIDE_ID} {gid} 1\n")),
    )?;
    step("hostname", sethostname("sandbox"))?;
    // Only the Cog relay needs a working loopback (to reach the server it starts inside); the
    // namespace has no other interface either way.
    if matches!(spec.payload, Payload::Cog { .. }) {
        super::cog::loopback_up()?;
    }
    step(
        "private mounts",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;
    let out = build_root(spec)?;
    // The inner stage runs as uid 1000 of the namespace, so `exec` would clear its capabilities; it
    // still needs CAP_SYS_ADMIN (the new /proc, pivot_root) and CAP_SETPCAP (the bounding set) for
    // its last steps, which it passes as ambient capabilities, then drops with everything else.
    keep_for_inner()?;

    // A lifeline for the inner stage: this process holds an exclusive lock on the outbox until it
    // dies. The inner stage sets its parent-death signal first, then checks the lock: a kill that
    // lands between its start and that signal (a cancel during setup) is seen there, and it exits.
    let _lifeline =
        lifeline(&spec.outbox, FlockArg::LockExclusive).map_err(|e| format!("lock the job outbox: {e}"))?;
    // The inner stage is this binary again; it becomes pid 1 of the new pid namespace.
    let mut inner = spec.clone();
    inner.nonce.clear();
    let json = step("encode the spec", serde_json::to_string(&inner))?;
    // Backstop for a host that stopped watching: the default SIGALRM action ends this process, and
    // the parent-death signal then kills the model.
    let secs = u32::try_from(spec.deadline_ms / 1000 + 2).unwrap_or(u32::MAX);
    let _ = nix::unistd::alarm::set(secs);
    let setup_us = micros(started);
    let run_started = Instant::now();
    let mut child = step(
        "start the model",
        Command::new(&spec.helper)
            .arg(HELPER_COMMAND)
            .arg("inner")
            .arg(json)
            .env_clear()
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn(),
    )?;
    let exit = step("wait for the model", child.wait())?;
    let run_us = micros(run_started);
    let cpu_ms = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1000 + t.tv_usec() as u64 / 1000;
            ms(u.user_time()) + ms(u.system_time())
        })
        .unwrap_or(0);
    let (files, skipped) = copy_out(out, &outbox);
    Ok(Status::Ended {
        code: exit.code(),
        signal: exit.signal(),
        setup_us,
        run_us,
        cpu_ms,
        files,
        skipped,
    })
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Mounts and fills the sandbox root; returns a descriptor of its `/out`.
fn build_root(spec: &Spec) -> Result<OwnedFd, String> {
    let root = &spec.root;
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    tmpfs(root, nodev, "size=4m,mode=0755", "sandbox root")?;
    bind_ro(Path::new("/usr"), &root.join("usr"))?;
    for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(top);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = step("read a system link", fs::read_link(&host))?;
                step("system link", std::os::unix::fs::symlink(target, root.join(top)))?;
            }
            Ok(m) if m.is_dir() => bind_ro(&host, &root.join(top))?,
            _ => {}
        }
    }
    for b in &spec.binds {
        let rel = b.dst.strip_prefix("/").unwrap_or(&b.dst);
        bind_ro(&b.src, &root.join(rel)).map_err(|e| format!("{e} (for {})", b.dst.display()))?;
    }
    let etc = root.join("etc");
    step("etc", fs::create_dir_all(&etc))?;
    let id = INSIDE_ID;
    for (name, text) in [
        (
            "passwd",
            format!("sandbox:x:{id}:{id}:sandbox:/work:/usr/sbin/nologin\n"),
        ),
        ("group", format!("sandbox:x:{id}:\n")),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n".to_owned()),
        ("hostname", "sandbox\n".to_owned()),
    ] {
        step("etc files", fs::write(etc.join(name), text))?;
    }
    let dev = root.join("dev");
    step("dev", fs::create_dir_all(&dev))?;
    tmpfs(
        &dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "size=64k,mode=0755",
        "dev",
    )?;
    for name in ["null", "zero", "random", "urandom"] {
        bind_dev(&Path::new("/dev").join(name), &dev.join(name))?;
    }
    for d in &spec.devices {
        let name = d.file_name().ok_or("a device has no file name")?;
        bind_dev(d, &dev.join(name))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        step("dev links", std::os::unix::fs::symlink(target, dev.join(link)))?;
    }
    step("proc", fs::create_dir_all(root.join("proc")))?;
    let owned = format!("mode=0755,uid={id},gid={id}");
    let work = root.join("work");
    step("work", fs::create_dir_all(&work))?;
    tmpfs(
        &work,
        nodev,
        &format!("size={},{owned}", spec.work_bytes.max(4096)),
        "work",
    )?;
    let out = root.join("out");
    step("out", fs::create_dir_all(&out))?;
    tmpfs(
        &out,
        nodev,
        &format!("size={},{owned}", spec.out_bytes.max(4096)),
        "out",
    )?;
    step("tmp", std::os::unix::fs::symlink("/work", root.join("tmp")))?;
    step(
        "open out",
        open(
            &out,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
    )
}

fn tmpfs(at: &Path, flags: MsFlags, data: &str, what: &str) -> Result<(), String> {
    step(what, mount(Some("tmpfs"), at, Some("tmpfs"), flags, Some(data)))
}

/// Binds `src` read-only at `dst` (created as a directory or an empty file to match).
fn bind_ro(src: &Path, dst: &Path) -> Result<(), String> {
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    bind(src, dst, MsFlags::MS_REC, ro, "bind mount")
}

/// Binds a device node (read-write: models write to /dev/null), without suid or exec.
fn bind_dev(src: &Path, dst: &Path) -> Result<(), String> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    bind(src, dst, MsFlags::empty(), flags, "device")
}

/// A bind mount, then the remount that applies `flags`; the remount must keep the flags the source
/// mount locks (nodev, noexec, …), or the kernel refuses it in a user namespace.
fn bind(src: &Path, dst: &Path, rec: MsFlags, flags: MsFlags, what: &str) -> Result<(), String> {
    make_target(src, dst)?;
    let none = None::<&str>;
    step(what, mount(Some(src), dst, none, MsFlags::MS_BIND | rec, none))?;
    let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags | locked_flags(dst);
    step(what, mount(none, dst, none, remount, none))
}

fn make_target(src: &Path, dst: &Path) -> Result<(), String> {
    let meta = step("a bind source is missing", fs::metadata(src))?;
    if meta.is_dir() {
        step("bind target", fs::create_dir_all(dst))
    } else {
        if let Some(parent) = dst.parent() {
            step("bind target", fs::create_dir_all(parent))?;
        }
        step("bind target", fs::File::create(dst).map(drop))
    }
}

fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs_flag) {
            out |= ms_flag;
        }
    }
    out
}

/// Copies the regular files at the top of `/out` into the outbox. Returns how many, and why others
/// were left out.
fn copy_out(out: OwnedFd, outbox: &OwnedFd) -> (u32, Option<String>) {
    let mut dir = match nix::dir::Dir::from_fd(out) {
        Ok(d) => d,
        Err(e) => return (0, Some(format!("cannot read /out: {e}"))),
    };
    let mut names = Vec::new();
    for entry in dir.iter().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    let (mut files, mut skipped) = (0u32, Vec::new());
    for name in names {
        if files >= MAX_OUTPUT_FILES {
            skipped.push(format!("more than {MAX_OUTPUT_FILES} files"));
            break;
        }
        match copy_one(&dir, outbox, &name) {
            Ok(()) => files += 1,
            Err(e) => skipped.push(format!("{name}: {e}")),
        }
    }
    (files, (!skipped.is_empty()).then(|| skipped.join("; ")))
}

fn copy_one(dir: &nix::dir::Dir, outbox: &OwnedFd, name: &str) -> Result<(), String> {
    if !protocol::is_output_name(name) {
        return Err("not a valid output file name".into());
    }
    let src = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| e.to_string())?;
    let mut src = fs::File::from(src);
    let meta = src.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let dst = openat(
        outbox,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| e.to_string())?;
    let mut dst = fs::File::from(dst);
    std::io::copy(&mut src, &mut dst).map_err(|e| e.to_string())?;
    Ok(())
}

/// The outer stage's lock on the job outbox (a fresh descriptor, closed on exec).
fn lifeline(outbox: &Path, how: FlockArg) -> Result<Flock<OwnedFd>, nix::Error> {
    let fd = open(
        outbox,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Flock::lock(fd, how).map_err(|(_, e)| e)
}

fn inner(spec: &Spec) -> Result<ExitCode, String> {
    step(
        "parent-death signal",
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL),
    )?;
    // The outer stage holds this lock while it lives: taking it means the outer stage died before the
    // parent-death signal was set, so nobody would kill this process any more.
    match lifeline(&spec.outbox, FlockArg::LockExclusiveNonblock) {
        Err(nix::Error::EWOULDBLOCK) => {}
        Ok(_) => return Err("the sandbox's launcher is gone".into()),
        Err(e) => return Err(format!("check the launcher: {e}")),
    }
    let proc_dir = spec.root.join("proc");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    step(
        "mount /proc",
        mount(Some("proc"), &proc_dir, Some("proc"), flags, None::<&str>),
    )?;
    step("enter the root", chdir(&spec.root))?;
    step("pivot_root", pivot_root(".", "."))?;
    step("detach the host root", umount2(".", MntFlags::MNT_DETACH))?;
    step("enter the root", chdir("/"))?;
    let ro =
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    step(
        "read-only root",
        mount(None::<&str>, "/", None::<&str>, ro, None::<&str>),
    )?;
    // The device nodes are mounts of their own and stay writable; /dev itself does not.
    let ro_dev = ro | MsFlags::MS_NOEXEC;
    step(
        "read-only /dev",
        mount(None::<&str>, "/dev", None::<&str>, ro_dev, None::<&str>),
    )?;
    step("enter /work", chdir("/work"))?;
    let l = &spec.limits;
    for (what, res, soft, hard) in [
        (
            "cpu limit",
            Resource::RLIMIT_CPU,
            l.cpu_seconds,
            l.cpu_seconds.saturating_add(1),
        ),
        (
            "memory limit",
            Resource::RLIMIT_AS,
            l.address_space,
            l.address_space,
        ),
        (
            "file size limit",
            Resource::RLIMIT_FSIZE,
            l.file_size,
            l.file_size,
        ),
        (
            "open files limit",
            Resource::RLIMIT_NOFILE,
            l.open_files,
            l.open_files,
        ),
        ("core limit", Resource::RLIMIT_CORE, 0, 0),
    ] {
        step(what, setrlimit(res, soft, hard))?;
    }
    drop_capabilities()?;
    step("seccomp", seccomp::install())?;
    match &spec.payload {
        Payload::Builtin { id } => Ok(protocol::serve_builtin(id)),
        Payload::Command { argv } => {
            let (prog, args) = argv.split_first().ok_or("the model has no command")?;
            let err = Command::new(prog)
                .args(args)
                .env_clear()
                .envs(model_env())
                .current_dir("/work")
                .exec();
            eprintln!("cannot start the model's command {prog:?}: {err}");
            Ok(ExitCode::from(127))
        }
        Payload::Cog {
            argv,
            predictor,
            warm,
        } => Ok(super::cog::serve(argv, predictor, *warm)),
        Payload::Engine {
            kind,
            threads,
            context,
        } => Ok(super::engine::serve_inside(*kind, *threads, *context)),
    }
}

/// The whole environment a command model gets.
pub(super) fn model_env() -> [(&'static str, &'static str); 8] {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/work"),
        ("TMPDIR", "/work"),
        ("LANG", "C.UTF-8"),
        ("SKYGATE_OUT_DIR", "/out"),
        ("SKYGATE_MODEL_DIR", "/model"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONUNBUFFERED", "1"),
    ]
}

fn keep_for_inner() -> Result<(), String> {
    use caps::{CapSet, Capability};
    let keep: caps::CapsHashSet = [Capability::CAP_SYS_ADMIN, Capability::CAP_SETPCAP]
        .into_iter()
        .collect();
    step("pass capabilities", caps::set(None, CapSet::Inheritable, &keep))?;
    for cap in keep {
        step("pass capabilities", caps::raise(None, CapSet::Ambient, cap))?;
    }
    Ok(())
}

fn drop_capabilities() -> Result<(), String> {
    use caps::CapSet;
    for cap in caps::all() {
        step(
            "drop bounding capabilities",
            caps::drop(None, CapSet::Bounding, cap),
        )?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        step("drop capabilities", caps::clear(None, set))?;
    }
    Ok(())
}

/// Reads all of stdin (the job request), bounded.
pub(crate) fn read_request(limit: u64) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the request: {e}"))?;
    Ok(buf)
}
