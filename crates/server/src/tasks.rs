//! Supervised background tasks: each has a name and receives the shutdown token; shutdown awaits all of
//! them and names any that failed or panicked.

use std::future::Future;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Tasks {
    set: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Tasks {
    pub fn spawn<F>(&mut self, name: &'static str, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.set.spawn(async move { (name, fut.await) });
    }

    /// Waits for every task (they must watch their token) and returns the names of those that failed.
    pub async fn join(mut self) -> Vec<String> {
        let mut failed = Vec::new();
        while let Some(r) = self.set.join_next().await {
            match r {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(e))) => {
                    tracing::error!(task = name, error = %format!("{e:#}"), "background task failed");
                    failed.push(name.to_owned());
                }
                Err(e) => {
                    tracing::error!(error = %e, "background task panicked");
                    failed.push("(panicked task)".to_owned());
                }
            }
        }
        failed
    }
}

/// Runs `tick` every `period` until `shutdown`, skipping missed ticks; errors are logged, not fatal.
pub async fn every<F, Fut>(period: std::time::Duration, shutdown: CancellationToken, name: &str, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut iv = tokio::time::interval(period);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    iv.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = iv.tick() => {
                if let Err(e) = tick().await {
                    tracing::warn!(task = name, error = %format!("{e:#}"), "periodic task failed; will retry");
                }
            }
        }
    }
}
