//! `skygate sandbox check`: the escape checks on this host, one line per check.

use anyhow::bail;
use skygate_runtime::sandbox::check::{run_checks, CheckLine};
use skygate_runtime::{SandboxMode, SandboxRunner};
use skygate_server::config::Config;

/// Runs every escape probe in a sandbox built as `config` says (the namespaces sandbox even when
/// `sandbox.mode` is `none-unsafe`: the checks judge what this host can isolate).
pub async fn results(config: &Config) -> anyhow::Result<Vec<CheckLine>> {
    let mut settings = config
        .sandbox
        .settings(&format!("check-{}", std::process::id()))
        .map_err(anyhow::Error::msg)?;
    settings.mode = SandboxMode::Namespaces;
    let job_root = settings.job_root.clone();
    let runner = SandboxRunner::new(settings).map_err(anyhow::Error::msg)?;
    let data_dir = std::fs::canonicalize(&config.data_dir).ok();
    let lines = run_checks(&runner, data_dir.as_deref()).await;
    let _ = std::fs::remove_dir(&job_root);
    Ok(lines)
}

pub async fn check(config: &Config) -> anyhow::Result<()> {
    if config.sandbox.mode == "none-unsafe" {
        eprintln!("warning: sandbox.mode is \"none-unsafe\"; checking the namespaces sandbox anyway");
    }
    let lines = results(config).await?;
    let failed = lines.iter().filter(|l| !l.passed).count();
    for l in &lines {
        println!("{l}");
    }
    println!("{} passed, {failed} failed", lines.len() - failed);
    if failed > 0 {
        bail!("{failed} sandbox checks failed: this host does not isolate predictions as configured");
    }
    Ok(())
}
