//! The `skygate` command line: parses arguments (clap), loads the configuration once, and dispatches to
//! the server or to an operator action. Thin: the logic lives in `skygate-server`.
//!
//! Output contract: a command that creates something prints the new object's id (for keys: the secret,
//! shown this once) as the last line of stdout; human hints go to stderr. Errors are one line on
//! stderr and a non-zero exit.

mod cli;
mod commands;
mod sandbox;
mod security;
mod selftest;

use std::process::ExitCode;

use clap::Parser;

/// Runs the CLI with the process arguments.
pub fn main() -> ExitCode {
    // The sandbox helper stages: before anything else (no runtime, no threads, no logging).
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if raw
        .get(1)
        .is_some_and(|a| a == skygate_runtime::sandbox::HELPER_COMMAND)
    {
        return skygate_runtime::sandbox::inside::helper_main(&raw[2..]);
    }
    if raw
        .get(1)
        .is_some_and(|a| a == skygate_runtime::sandbox::PROBE_COMMAND)
    {
        return skygate_runtime::sandbox::probe::probe_main();
    }
    let args = cli::Cli::parse();
    init_logging(&args);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &cli::Cli) {
    use tracing_subscriber::EnvFilter;
    let default = if matches!(args.command, cli::Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_env("SKYGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("SKYGATE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
