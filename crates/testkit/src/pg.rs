//! A private PostgreSQL schema per test: created before, dropped after (also when the test panics).

use std::future::Future;

/// Runs `test` with a connection URL whose `search_path` is a fresh schema `<prefix>_<pid>`, then drops
/// the schema and re-raises the test's panic, if any.
#[allow(clippy::expect_used, clippy::panic)]
pub async fn in_schema<F, Fut>(base: &str, prefix: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let schema = format!("{prefix}_{}", std::process::id());
    let owner = skygate_store::postgres::PgStore::connect_in_schema(
        base,
        &schema,
        skygate_store::Sealer::ephemeral().expect("an ephemeral sealer"),
    )
    .await
    .expect("PostgreSQL is reachable");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    let outcome = tokio::spawn(test(url)).await;
    owner.drop_schema().await.expect("the test schema can be dropped");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
