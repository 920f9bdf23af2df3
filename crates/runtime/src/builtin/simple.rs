//! The small test-mode models: `echo` (the free model for test keys), `countdown` (sleeps, for cancel,
//! await and deadline tests) and `fail` (the failure and crash paths).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::params::{int_or, num_or, optional_str, required_str, truncate_chars};
use crate::control::{Control, ModelError};
use crate::Output;

/// `echo`: the prompt, `repeat` times, one per line.
pub(super) fn echo(input: &Value, ctl: &dyn Control) -> Result<Output, ModelError> {
    let prompt = truncate_chars(required_str(input, "prompt")?, 10_000);
    let repeat = int_or(input, "repeat", 1, 1, 10) as usize;
    ctl.checkpoint()?;
    let out = vec![prompt; repeat].join("\n");
    ctl.progress(100);
    Ok(Output::Text(out))
}

/// The longest pause between two stop checks.
const TICK: Duration = Duration::from_millis(25);

/// `countdown`: sleeps `seconds`, reporting progress and checking the stop flag at least every [`TICK`].
pub(super) fn countdown(input: &Value, ctl: &dyn Control) -> Result<Output, ModelError> {
    if input.get("seconds").and_then(Value::as_f64).is_none() {
        return Err(ModelError::Failed(
            "input.seconds is required and must be a number".into(),
        ));
    }
    // `+ 0.0` turns a -0.0 into 0.0, which would otherwise print as "-0s".
    let secs = num_or(input, "seconds", 0.0, 0.0, 600.0) + 0.0;
    let total = Duration::from_secs_f64(secs);
    let start = Instant::now();
    loop {
        ctl.checkpoint()?;
        let elapsed = start.elapsed();
        if elapsed >= total {
            break;
        }
        let pct = (elapsed.as_secs_f64() / secs * 100.0).floor() as u8;
        ctl.progress(pct.min(99));
        std::thread::sleep(TICK.min(total - elapsed));
    }
    ctl.progress(100);
    Ok(Output::Text(format!("done after {secs}s")))
}

/// `fail`: `mode` "error" reports a clear error; "panic" panics (the runner must turn that into
/// `Crashed` without harming the process).
pub(super) fn fail(input: &Value, ctl: &dyn Control) -> Result<Output, ModelError> {
    ctl.checkpoint()?;
    let message = optional_str(input, "message")
        .map(|m| truncate_chars(m, 200))
        .filter(|m| !m.trim().is_empty())
        .unwrap_or("the model reported an error");
    match optional_str(input, "mode").unwrap_or("error") {
        "panic" => deliberate_panic(),
        _ => Err(ModelError::Failed(message.to_owned())),
    }
}

// The whole point of `fail` with mode "panic" is to exercise the crash path end to end.
#[allow(clippy::panic)]
fn deliberate_panic() -> ! {
    panic!("the fail model was asked to panic")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::NullControl;

    #[test]
    fn echo_repeats_and_clamps() {
        let out = echo(&json!({"prompt": "hi", "repeat": 3}), &NullControl).unwrap();
        assert_eq!(out, Output::Text("hi\nhi\nhi".into()));
        let out = echo(&json!({"prompt": "hi", "repeat": 99}), &NullControl).unwrap();
        assert_eq!(out, Output::Text(["hi"; 10].join("\n")));
        let out = echo(&json!({"prompt": "hi", "repeat": "x"}), &NullControl).unwrap();
        assert_eq!(out, Output::Text("hi".into()));
        assert!(matches!(
            echo(&json!({}), &NullControl),
            Err(ModelError::Failed(_))
        ));
    }

    #[test]
    fn countdown_zero_and_fraction() {
        let out = countdown(&json!({"seconds": 0}), &NullControl).unwrap();
        assert_eq!(out, Output::Text("done after 0s".into()));
        let out = countdown(&json!({"seconds": 0.05}), &NullControl).unwrap();
        assert_eq!(out, Output::Text("done after 0.05s".into()));
        assert!(matches!(
            countdown(&json!({}), &NullControl),
            Err(ModelError::Failed(_))
        ));
        // Negative values clamp to zero rather than panicking in Duration::from_secs_f64.
        let out = countdown(&json!({"seconds": -5}), &NullControl).unwrap();
        assert_eq!(out, Output::Text("done after 0s".into()));
        let out = countdown(&json!({"seconds": -0.0}), &NullControl).unwrap();
        assert_eq!(out, Output::Text("done after 0s".into()));
    }

    #[test]
    fn fail_error_messages() {
        assert_eq!(
            fail(&json!({}), &NullControl),
            Err(ModelError::Failed("the model reported an error".into()))
        );
        assert_eq!(
            fail(&json!({"mode": "error", "message": "bad prompt"}), &NullControl),
            Err(ModelError::Failed("bad prompt".into()))
        );
        let long = "x".repeat(500);
        match fail(&json!({"message": long}), &NullControl) {
            Err(ModelError::Failed(m)) => assert_eq!(m.len(), 200),
            other => panic!("{other:?}"),
        }
    }
}
