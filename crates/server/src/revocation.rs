//! Revocations seen by every node at once. With `limits.redis_url` set, whoever revokes a credential
//! (the CLI on the host, an account erasure) publishes it on one Redis channel, and every server drops
//! its credential cache when a message arrives, so the next request from that key goes to the store.
//! The cache's own TTL (`auth.key_cache_ttl`, at most 1 s) stays the safety net when Redis is down; a
//! server that (re)subscribes also drops its cache, since it may have missed messages meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;

/// The channel revocations are published on.
pub const CHANNEL: &str = "skygate:revocations";

/// How long publishing may take before it is given up (the cache TTL still applies).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Announces a revocation (`what` names it for the logs: a key or account id, never a secret).
pub async fn publish(url: &str, what: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    tokio::time::timeout(PUBLISH_TIMEOUT, async {
        let mut con = client.get_multiplexed_async_connection().await?;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(what)
            .query_async(&mut con)
            .await?;
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("Redis did not answer within {PUBLISH_TIMEOUT:?}"))?
}

/// Listens until `stop`, dropping `auth`'s cache on every revocation; reconnects after a second when
/// the subscription breaks.
pub async fn listen(url: String, auth: Arc<Authenticator>, stop: CancellationToken) -> anyhow::Result<()> {
    let client = redis::Client::open(url.as_str())?;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(CHANNEL).await {
                Ok(()) => {
                    auth.cache().clear();
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return Ok(()),
                            m = messages.next() => match m {
                                Some(m) => {
                                    auth.cache().clear();
                                    let what: String = m.get_payload().unwrap_or_default();
                                    tracing::info!(revoked = %what, "revocation announced; credential cache dropped");
                                }
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("the revocation subscription ended; resubscribing");
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to revocations; retrying"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot reach Redis for revocations; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
