//! The sandbox launcher through the real helper binary: built-in and command models, limits, deadline,
//! cancel, protocol errors, outputs, cleanup.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod sandbox_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use skygate_core::models::Backend;
use skygate_runtime::{Job, Output, RunError, Runner};

use sandbox_support::*;

#[tokio::test]
async fn builtin_text_and_files_run_in_the_sandbox() {
    let Some(s) = Sandbox::new("builtin_text_and_files_run_in_the_sandbox") else {
        return;
    };
    let out = s.builtin("echo", json!({"prompt": "hi", "repeat": 2})).await;
    assert_eq!(out, Ok(Output::Text("hi\nhi".into())));
    match s
        .builtin(
            "sky-image",
            json!({"prompt": "x", "width": 16, "height": 16, "steps": 1}),
        )
        .await
    {
        Ok(Output::Files(f)) => {
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].name, "output-0.png");
            assert_eq!(f[0].content_type, "image/png");
        }
        other => panic!("{other:?}"),
    }
    let err = s.builtin("fail", json!({"message": "bad prompt"})).await;
    assert_eq!(err, Err(RunError::Failed("bad prompt".into())));
    let err = s.builtin("fail", json!({"mode": "panic"})).await;
    assert_eq!(err, Err(RunError::Crashed("the model crashed".into())));
    s.assert_clean();
}

/// The escape suite: a hostile command model tries each way out; every attempt must fail or be
/// killed. Asserted line by line, in order.
#[tokio::test]
async fn escape_attempts_all_fail() {
    let Some(s) = Sandbox::new("escape_attempts_all_fail") else {
        return;
    };
    let data_dir = tempfile::tempdir().unwrap();
    let lines = skygate_runtime::sandbox::check::run_checks(&s.runner, Some(data_dir.path())).await;
    let expected: &[(&str, &str)] = &[
        ("net_postgres", "127.0.0.1:5432"),
        ("net_redis", "127.0.0.1:6379"),
        ("net_interfaces", "only lo, no default route"),
        ("read_shadow", "No such file"),
        ("read_root_home", "No such file"),
        ("read_data_dir", "No such file"),
        ("read_other_job", "No such file"),
        ("write_outside", "read-only everywhere but /work and /out"),
        ("host_pids", "pid 1 in its own namespace"),
        ("capabilities", "capabilities all zero: true"),
        ("ptrace", "EPERM"),
        ("unshare", "EPERM"),
        ("mount", "EPERM"),
        ("fork_bomb", "Resource temporarily unavailable"),
        ("memory_bomb", "allocation refused"),
        ("disk_bomb", "No space left on device"),
        ("cpu_loop", "CPU time limit"),
        ("deadline", "killed at the 2s deadline"),
        ("cleanup", "no job directory left behind"),
    ];
    for l in &lines {
        eprintln!("{l}");
    }
    assert_eq!(lines.len(), expected.len(), "{lines:#?}");
    for (line, (probe, detail)) in lines.iter().zip(expected) {
        assert_eq!(line.probe, *probe);
        assert!(line.passed, "{line}");
        assert!(line.detail.contains(detail), "{line}: expected {detail:?}");
    }
    s.assert_clean();
}

/// The probes must be able to report an escape: without a sandbox they do.
#[tokio::test]
async fn the_probes_see_an_unsandboxed_host() {
    if !namespaces_available("the_probes_see_an_unsandboxed_host") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("skygate-sbx-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let probe = PathBuf::from(env!("CARGO_BIN_EXE_skygate"));
    let mut child = std::process::Command::new(&probe)
        .arg(skygate_runtime::sandbox::PROBE_COMMAND)
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input =
        json!({"input": {"probes": ["host_pids", "read_data_dir", "capabilities"], "data_dir": dir.path()}});
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("host_pids: ESCAPED"), "{text}");
    assert!(text.contains("read_data_dir: ESCAPED"), "{text}");
    assert!(text.contains("capabilities: ESCAPED"), "{text}");
}

#[tokio::test]
async fn command_models_speak_the_protocol() {
    let Some(s) = Sandbox::new("command_models_speak_the_protocol") else {
        return;
    };
    let model = model_dir(&[(
        "run.sh",
        0o755,
        "#!/bin/sh\nread req\necho '{\"progress\": 50}'\necho '{\"log\": \"working\"}'\n\
         printf 'hello' > /out/greeting.txt\nprintf '\\211PNG\\r\\n\\032\\nxx' > /out/pic\n\
         echo \"{\\\"output\\\": $req}\"\n",
    )]);
    let (out, rep) = s
        .command(
            &["/bin/sh", "/model/run.sh"],
            Some(model.path()),
            json!({"x": 1}),
            Duration::from_secs(20),
        )
        .await;
    match out {
        Ok(Output::Files(f)) => {
            let names: Vec<_> = f
                .iter()
                .map(|f| (f.name.as_str(), f.content_type.as_str()))
                .collect();
            assert_eq!(names, [("greeting.txt", "text/plain"), ("pic", "image/png")]);
            assert_eq!(f[0].bytes, b"hello");
        }
        other => panic!("{other:?}"),
    }
    let rep = rep.unwrap();
    assert!(rep.sandboxed && rep.exit == "exited 0", "{rep:?}");
    // Without files, the output line is the output; JSON values arrive as JSON text.
    let (out, _) = s
        .command(
            &["/bin/sh", "-c", "read r; echo \"{\\\"output\\\": $r}\""],
            None,
            json!({"k": "v"}),
            Duration::from_secs(20),
        )
        .await;
    let Ok(Output::Text(t)) = out else {
        panic!("{out:?}")
    };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["input"], json!({"k": "v"}));
    s.assert_clean();
}

#[tokio::test]
async fn bad_models_fail_clearly_and_leave_nothing() {
    let Some(s) = Sandbox::new("bad_models_fail_clearly_and_leave_nothing") else {
        return;
    };
    let sec = Duration::from_secs(20);
    let cases: &[(&str, &str)] = &[
        ("echo not json", "not JSON"),
        ("exec 1>&-; sleep 0.1; exit 0", "without an output"),
        (
            "echo '{\"output\": 1}'; echo 'oops: /model/secret.py line 3' >&2; exit 3",
            "exited with code 3: oops: /model/secret.py line 3",
        ),
        (
            "echo '{\"error\": \"prompt too long\"}'; exit 1",
            "prompt too long",
        ),
        ("head -c 70000000 /dev/zero | tr '\\0' 'x'", "longer than 8 MiB"),
        ("yes '{\"progress\": 1}' | head -c 70000000", "more than 64 MiB"),
        (
            "yes '{\"log\": \"spam spam spam\"}' | head -n 1000000; echo '{\"output\": \"done\"}'",
            "",
        ),
        (
            "yes 'stderr spam' | head -c 100000000 >&2; echo '{\"output\": \"ok\"}'",
            "",
        ),
        ("exec /nonexistent/binary", "exited with code"),
    ];
    for (script, want) in cases {
        let (out, _) = s.command(&["/bin/sh", "-c", script], None, json!({}), sec).await;
        if want.is_empty() {
            assert!(matches!(out, Ok(Output::Text(_))), "{script}: {out:?}");
            continue;
        }
        match out {
            Err(RunError::Failed(m)) => assert!(m.contains(want), "{script}: {m}"),
            other => panic!("{script}: {other:?}"),
        }
    }
    // A model sleeping past its deadline is killed with everything it started.
    let started = std::time::Instant::now();
    let (out, rep) = s
        .command(
            &["/bin/sh", "-c", "sleep 60 & sleep 60 & sleep 60"],
            None,
            json!({}),
            Duration::from_millis(500),
        )
        .await;
    assert!(matches!(out, Err(RunError::TimedOut(_))), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(rep.unwrap().exit, "deadline");
    s.assert_clean();
}

#[tokio::test]
async fn cancel_kills_the_sandbox() {
    let Some(s) = Sandbox::new("cancel_kills_the_sandbox") else {
        return;
    };
    let m = skygate_core::models::CommandModel {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo '{\"progress\": 10}'; sleep 60".into(),
        ],
        dir: None,
        timeout: None,
        memory: None,
        cpu_seconds: None,
        devices: 0,
    };
    let h = s.start(
        skygate_core::models::Backend::Command(m),
        json!({}),
        Duration::from_secs(60),
    );
    let mut p = h.progress();
    tokio::time::timeout(Duration::from_secs(10), p.wait_for(|v| *v >= 10))
        .await
        .unwrap()
        .unwrap();
    h.cancel();
    let started = std::time::Instant::now();
    let out = h.finish().await;
    assert_eq!(out, Err(RunError::Cancelled));
    assert!(started.elapsed() < Duration::from_secs(3));
    s.assert_clean();
}

/// Two predictions running at once (as they would for two accounts) see neither each other's files
/// nor each other's processes.
#[tokio::test]
async fn concurrent_sandboxes_cannot_see_each_other() {
    let Some(s) = Sandbox::new("concurrent_sandboxes_cannot_see_each_other") else {
        return;
    };
    let a = s.command(
        &["/bin/sh", "-c", "echo secret-a > /work/a.txt; echo secret-a > /out/a.txt; sleep 1; \
          ls /proc | grep -c '^[0-9]' > /work/n; echo \"{\\\"output\\\": \\\"$(cat /work/n) $(ls /work /out /tmp | tr '\\n' ' ')\\\"}\""],
        None,
        json!({}),
        Duration::from_secs(20),
    );
    let b = s.command(
        &["/bin/sh", "-c", "sleep 0.5; echo secret-b > /work/b.txt; echo \"{\\\"output\\\": \\\"$(ls /work /out /tmp /proc | tr '\\n' ' ')\\\"}\""],
        None,
        json!({}),
        Duration::from_secs(20),
    );
    let (ra, rb) = tokio::join!(a, b);
    let a_seen = format!("{:?}", ra.0);
    let b_seen = format!("{:?}", rb.0);
    assert!(
        !a_seen.contains("b.txt") && !b_seen.contains("a.txt"),
        "{a_seen} / {b_seen}"
    );
    assert!(b_seen.contains("b.txt"), "{b_seen}");
    // a's own files are there (its /out file became an output).
    assert!(a_seen.contains("a.txt"), "{a_seen}");
    // b sees only its own processes: pid 1 (sh) and the few it started.
    assert!(!b_seen.contains("secret"), "{b_seen}");
    s.assert_clean();
}

/// The two example models under `examples/models/` (copied to a world-readable place: the sandbox's
/// uid sees only what any user could read).
#[tokio::test]
async fn the_example_models_run() {
    let Some(s) = Sandbox::new("the_example_models_run") else {
        return;
    };
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models");
    let read = |p: &str| std::fs::read_to_string(examples.join(p)).unwrap();
    let sh = model_dir(&[("run.sh", 0o755, &read("sh-banner/run.sh"))]);
    let (out, _) = s
        .command(
            &["/bin/sh", "/model/run.sh"],
            Some(sh.path()),
            json!({"text": "hello"}),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(out, Ok(Output::Text("*** HELLO ***".into())));
    let (out, _) = s
        .command(
            &["/bin/sh", "/model/run.sh"],
            Some(sh.path()),
            json!({}),
            Duration::from_secs(20),
        )
        .await;
    assert!(
        matches!(&out, Err(RunError::Failed(m)) if m.contains("input.text")),
        "{out:?}"
    );
    if !Path::new("/usr/bin/python3").exists() {
        skygate_testkit::skip(
            "the_example_models_run (python)",
            "/usr/bin/python3 is not installed",
        );
        return;
    }
    let py = model_dir(&[("predict.py", 0o644, &read("py-wordcount/predict.py"))]);
    let (out, _) = s
        .command(
            &["python3", "/model/predict.py"],
            Some(py.path()),
            json!({"text": "a b a. A c"}),
            Duration::from_secs(30),
        )
        .await;
    match out {
        Ok(Output::Files(f)) => {
            assert_eq!(f[0].name, "counts.json");
            assert_eq!(f[0].content_type, "application/json");
            let v: serde_json::Value = serde_json::from_slice(&f[0].bytes).unwrap();
            assert_eq!(v, json!({"a": 3, "b": 1, "c": 1}));
        }
        other => panic!("{other:?}"),
    }
    s.assert_clean();
}

/// `skygate sandbox check` prints one line per check and a passing summary.
#[test]
fn sandbox_check_command_passes_here() {
    if !namespaces_available("sandbox_check_command_passes_here") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skygate"))
        .args(["--data-dir"])
        .arg(dir.path().join("data"))
        .args(["sandbox", "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"19 passed, 0 failed"), "{text}");
    assert!(
        lines[..lines.len() - 1].iter().all(|l| l.starts_with("ok ")),
        "{text}"
    );
    assert!(
        text.contains("net_postgres") && text.contains("deadline"),
        "{text}"
    );
}

/// What a device-holding model reports: the device nodes it sees in `/dev` (besides the standard
/// ones), whether it could write to them, and when it held them (host clock, nanoseconds).
fn device_script(hold: &str) -> String {
    format!(
        "start=$(date +%s%N); seen=''; for d in /dev/*; do n=${{d#/dev/}}; case $n in \
         null|zero|random|urandom|fd|stdin|stdout|stderr) ;; *) echo x > $d && seen=\"$seen $n\";; esac; done; \
         sleep {hold}; echo \"{{\\\"output\\\": \\\"$start $(date +%s%N)$seen\\\"}}\""
    )
}

/// `(start, end, devices seen)` from [`device_script`]'s output.
fn held(out: &Result<Output, RunError>) -> (u128, u128, Vec<String>) {
    let Ok(Output::Text(t)) = out else {
        panic!("{out:?}")
    };
    let mut w = t.split_whitespace();
    let start = w.next().unwrap().parse().unwrap();
    let end = w.next().unwrap().parse().unwrap();
    (start, end, w.map(str::to_owned).collect())
}

/// Two predictions running at once (as for two accounts) never hold the same device, and each sees
/// only its own device in `/dev`; with one device, the second waits until the first sandbox is gone.
#[tokio::test]
async fn devices_are_leased_to_one_sandbox_at_a_time() {
    let test = "devices_are_leased_to_one_sandbox_at_a_time";
    let Some((_devs, paths)) = stand_in_devices(test, &["gpu0", "gpu1"]) else {
        return;
    };
    let two = paths.clone();
    let Some(s) = Sandbox::with(test, |st| st.devices = two) else {
        return;
    };
    let run = |hold: &str| {
        s.start(
            Backend::Command(shell_model(&device_script(hold), 1)),
            json!({}),
            Duration::from_secs(30),
        )
        .finish()
    };
    let (a, b) = tokio::join!(run("1"), run("1"));
    let (a, b) = (held(&a), held(&b));
    assert_eq!(a.2.len(), 1, "{a:?}");
    assert_eq!(b.2.len(), 1, "{b:?}");
    assert_ne!(a.2, b.2, "two sandboxes held the same device: {a:?} {b:?}");
    // Both ran at once (two devices).
    assert!(a.0 < b.1 && b.0 < a.1, "{a:?} {b:?}");
    // A model without devices sees none.
    let (none, _) = s
        .command(
            &["/bin/sh", "-c", &device_script("0")],
            None,
            json!({}),
            Duration::from_secs(20),
        )
        .await;
    assert!(held(&none).2.is_empty(), "{none:?}");
    // More devices than the server has: refused at start.
    let too_many = s.runner.start(Job {
        prediction_id: "test".into(),
        backend: Backend::Command(shell_model("true", 3)),
        input: json!({}),
        deadline: Duration::from_secs(5),
        tenant: None,
    });
    assert!(
        matches!(&too_many, Err(RunError::Unsupported(m)) if m.contains("needs 3 devices")),
        "{too_many:?}"
    );
    s.assert_clean();
    drop(s);

    let one = vec![paths[0].clone()];
    let Some(s) = Sandbox::with(test, |st| st.devices = one) else {
        return;
    };
    let first = s.start(
        Backend::Command(shell_model(&device_script("1"), 1)),
        json!({}),
        Duration::from_secs(30),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = s.start(
        Backend::Command(shell_model(&device_script("0"), 1)),
        json!({}),
        Duration::from_secs(30),
    );
    let (a, b) = tokio::join!(first.finish(), second.finish());
    let (a, b) = (held(&a), held(&b));
    assert_eq!(
        (a.2.clone(), b.2.clone()),
        (vec!["gpu0".to_owned()], vec!["gpu0".to_owned()])
    );
    assert!(a.1 <= b.0, "the device was held twice at once: {a:?} {b:?}");
    s.assert_clean();
}

/// A lease ends with its sandbox on cancel, deadline and failure; a job waiting for a device can be
/// cancelled, and times out at its deadline.
#[tokio::test]
async fn device_leases_are_released_on_cancel_timeout_and_failure() {
    let test = "device_leases_are_released_on_cancel_timeout_and_failure";
    let Some((_devs, paths)) = stand_in_devices(test, &["gpu0"]) else {
        return;
    };
    let Some(s) = Sandbox::with(test, |st| st.devices = paths) else {
        return;
    };
    let start = |script: &str, deadline: u64| {
        s.start(
            Backend::Command(shell_model(script, 1)),
            json!({}),
            Duration::from_millis(deadline),
        )
    };
    let quick = || async { start(&device_script("0"), 10_000).finish().await };
    // Cancelled while running: the device is free again.
    let h = start("echo '{\"progress\": 10}'; sleep 60", 60_000);
    let mut p = h.progress();
    tokio::time::timeout(Duration::from_secs(10), p.wait_for(|v| *v >= 10))
        .await
        .unwrap()
        .unwrap();
    // Meanwhile a second job waits; cancelling it ends it at once.
    let waiting = start(&device_script("0"), 60_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = std::time::Instant::now();
    waiting.cancel();
    assert_eq!(waiting.finish().await, Err(RunError::Cancelled));
    assert!(t.elapsed() < Duration::from_millis(500));
    // A waiting job whose deadline passes times out.
    let out = start(&device_script("0"), 300).finish().await;
    assert!(matches!(out, Err(RunError::TimedOut(_))), "{out:?}");
    h.cancel();
    assert_eq!(h.finish().await, Err(RunError::Cancelled));
    assert_eq!(held(&quick().await).2, ["gpu0"]);
    // Killed at its deadline, or failed: released too.
    let out = start("sleep 60", 300).finish().await;
    assert!(matches!(out, Err(RunError::TimedOut(_))), "{out:?}");
    assert_eq!(held(&quick().await).2, ["gpu0"]);
    let out = start("exit 4", 10_000).finish().await;
    assert!(matches!(out, Err(RunError::Failed(_))), "{out:?}");
    assert_eq!(held(&quick().await).2, ["gpu0"]);
    s.assert_clean();
}
