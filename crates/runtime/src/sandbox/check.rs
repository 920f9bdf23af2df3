//! `skygate sandbox check`: runs the escape probes ([`super::probe`]) as a hostile command model in
//! real sandboxes on this host and judges each attempt. Shared with the escape test suite.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skygate_core::models::CommandModel;

use super::{Bind, Payload, SandboxRunner, PROBE_COMMAND};
use crate::{Output, RunError};

/// One judged attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub probe: String,
    /// The attempt failed or was stopped, as it must.
    pub passed: bool,
    pub detail: String,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "ok  " } else { "FAIL" };
        write!(f, "{verdict} {:<15} {}", self.probe, self.detail)
    }
}

/// Where the probe binary is bound inside.
const PROBE_AT: &str = "/model/skygate";

fn probe_model(cpu_seconds: Option<u64>) -> CommandModel {
    CommandModel {
        cpu_seconds,
        ..CommandModel::new([PROBE_AT, PROBE_COMMAND])
    }
}

async fn run_probe(
    runner: &SandboxRunner,
    input: Value,
    cpu_seconds: Option<u64>,
    deadline: Duration,
) -> Result<Output, RunError> {
    let bind = Bind {
        src: runner.settings().helper.clone(),
        dst: PathBuf::from(PROBE_AT),
    };
    let model = probe_model(cpu_seconds);
    let request = serde_json::to_vec(&json!({"id": "sandbox-check", "input": input}))
        .map_err(|_| RunError::Failed("cannot encode the request".into()))?;
    let payload = Payload::Command {
        argv: model.argv.clone(),
    };
    runner
        .start_payload(
            "sandbox-check".into(),
            payload,
            Some(&model),
            vec![bind],
            request,
            deadline,
        )?
        .finish()
        .await
}

/// Runs every probe. `data_dir` (this deployment's) and the job root must be invisible inside.
pub async fn run_checks(runner: &SandboxRunner, data_dir: Option<&Path>) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let input = json!({
        "data_dir": data_dir.map(|d| d.display().to_string()),
        "other_job": runner.settings().job_root.display().to_string(),
        "host_pid": std::process::id(),
    });
    match run_probe(runner, input, None, Duration::from_secs(60)).await {
        Ok(Output::Text(report)) => match serde_json::from_str::<Vec<Value>>(&report) {
            Ok(items) => {
                for item in items {
                    lines.push(CheckLine {
                        probe: item["probe"].as_str().unwrap_or("?").to_owned(),
                        passed: item["blocked"].as_bool() == Some(true),
                        detail: item["detail"].as_str().unwrap_or("").to_owned(),
                    });
                }
            }
            Err(_) => lines.push(failed("report", "the probe's report is not a JSON list")),
        },
        other => lines.push(failed(
            "report",
            &format!("the probe run did not produce a report: {other:?}"),
        )),
    }
    let r = run_probe(
        runner,
        json!({"probes": ["cpu"]}),
        Some(1),
        Duration::from_secs(30),
    )
    .await;
    lines.push(match r {
        Err(RunError::Failed(m)) if m.contains("CPU time limit") => ok("cpu_loop", &format!("killed: {m}")),
        other => failed("cpu_loop", &format!("{other:?}")),
    });
    let started = Instant::now();
    let r = run_probe(runner, json!({"probes": ["sleep"]}), None, Duration::from_secs(2)).await;
    let took = started.elapsed();
    lines.push(match r {
        Err(RunError::TimedOut(_)) if took < Duration::from_secs(8) => ok(
            "deadline",
            &format!("killed at the 2s deadline (ended after {took:.1?})"),
        ),
        other => failed("deadline", &format!("{other:?} after {took:.1?}")),
    });
    let left = std::fs::read_dir(&runner.settings().job_root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("job-"))
                .count()
        })
        .unwrap_or(0);
    lines.push(if left == 0 {
        ok("cleanup", "no job directory left behind")
    } else {
        failed("cleanup", &format!("{left} job directories left behind"))
    });
    lines
}

fn ok(probe: &str, detail: &str) -> CheckLine {
    CheckLine {
        probe: probe.into(),
        passed: true,
        detail: detail.into(),
    }
}

fn failed(probe: &str, detail: &str) -> CheckLine {
    CheckLine {
        probe: probe.into(),
        passed: false,
        detail: detail.into(),
    }
}
