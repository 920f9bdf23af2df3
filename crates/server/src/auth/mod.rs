//! Where the API key gets checked.
//!
//! [`ApiKeyAuth`] is the typed extractor handlers put in their signature. [`Authenticator`] does the
//! check: it hashes whatever was presented with the pepper (always, whatever its shape), looks the hash
//! up (a ≤ 1 s cache in front of one indexed store query), compares the stored hash in constant time,
//! and folds format, existence, revocation and expiry into one yes/no. Every failure is the same
//! `401 UNAUTHORIZED` body. The checksum is public (anyone can compute it), so refusing a bad checksum
//! before the lookup leaks nothing; it spares the store from typos and random junk.

mod cache;
pub mod token;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use skygate_core::{
    AccountId, ApiKey, KeyAuthRecord, KeyHasher, KeyId, Mode, ProjectId, Tier, Timestamp, TokenId,
};
use skygate_store::DynStore;

pub use cache::KeyCache;
pub use usage::UsageLog;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller of a predictions API request: an API key (the cached record is shared, no
/// copies per request) or an access token with the `inference` scope acting for one of its account's
/// projects (see [`token::inference_caller`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyAuth {
    caller: Caller,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    Key(Arc<KeyAuthRecord>),
    Token(Arc<TokenCaller>),
}

/// An access token's identity for one request (tokens are not cached: revocation holds at once).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TokenCaller {
    pub token: TokenId,
    pub project: ProjectId,
    pub account: AccountId,
    pub tier: Tier,
}

impl ApiKeyAuth {
    pub(crate) fn of_token(caller: TokenCaller) -> Self {
        ApiKeyAuth {
            caller: Caller::Token(Arc::new(caller)),
        }
    }

    /// The API key, when the caller is one (`None` for an access token).
    pub fn key_id(&self) -> Option<&KeyId> {
        match &self.caller {
            Caller::Key(r) => Some(&r.key_id),
            Caller::Token(_) => None,
        }
    }

    /// The credential's id (`key_…` or `tok_…`): what the per-credential request limit is kept under.
    pub fn credential(&self) -> &str {
        match &self.caller {
            Caller::Key(r) => r.key_id.as_str(),
            Caller::Token(t) => t.token.as_str(),
        }
    }

    pub fn project(&self) -> &ProjectId {
        match &self.caller {
            Caller::Key(r) => &r.project,
            Caller::Token(t) => &t.project,
        }
    }

    pub fn account(&self) -> &AccountId {
        match &self.caller {
            Caller::Key(r) => &r.account,
            Caller::Token(t) => &t.account,
        }
    }

    /// Access tokens are live credentials (creating one needs two-factor authentication by policy).
    pub fn mode(&self) -> Mode {
        match &self.caller {
            Caller::Key(r) => r.mode,
            Caller::Token(_) => Mode::Live,
        }
    }

    pub fn tier(&self) -> Tier {
        match &self.caller {
            Caller::Key(r) => r.tier,
            Caller::Token(t) => t.tier,
        }
    }
}

impl FromRequestParts<AppState> for ApiKeyAuth {
    type Rejection = ApiError;

    /// Authenticates, then applies the key's request limit (creates use [`CreateAuth`] instead).
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let auth = CreateAuth::from_request_parts(parts, state).await?.0;
        let checked = state.limits().check_request(&auth).await;
        crate::limits::RateSlot::record(&parts.extensions, checked)?;
        Ok(auth)
    }
}

/// An authenticated prediction create: the limits are applied by the handler once the model is known
/// ([`crate::limits::RateLimits::check_create`] checks the request limit and the create limits in one
/// all-or-nothing call).
pub struct CreateAuth(pub ApiKeyAuth);

impl FromRequestParts<AppState> for CreateAuth {
    type Rejection = ApiError;

    /// Authenticates, refusing addresses that failed too often (counted here).
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let now = Timestamp::now();
        let presented = presented_credential(&parts.headers);
        if presented.is_some_and(is_access_token) {
            return token::inference_caller(state, parts, now).await.map(CreateAuth);
        }
        let check = state.auth().authenticate(presented, now);
        let (auth, _) = within_failure_budget(state, parts, check).await?;
        Ok(CreateAuth(auth))
    }
}

/// Runs an authentication `check` under the client address's failed-authentication budget: an address
/// over budget is refused before the check; a failed check is counted (and answered 429 once the
/// budget is spent). Returns the check's value and the client address.
pub(crate) async fn within_failure_budget<T>(
    state: &AppState,
    parts: &Parts,
    check: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<(T, Option<std::net::IpAddr>), ApiError> {
    let client = crate::screen::client_of_parts(state, &parts.extensions, &parts.headers);
    if let Some(ip) = client {
        if let Some(e) = state.limits().auth_throttled(ip).await {
            return Err(e);
        }
    }
    match check.await {
        Ok(v) => Ok((v, client)),
        Err(e) => {
            if let Some(ip) = client {
                if let Some(too_many) = state.limits().auth_failed(ip).await {
                    return Err(too_many);
                }
            }
            Err(e)
        }
    }
}

/// Whether presented bytes claim to be an access token (`sk_pat_…`) rather than an API key.
pub fn is_access_token(presented: &[u8]) -> bool {
    presented.starts_with(skygate_core::token::TOKEN_PREFIX.as_bytes())
}

/// The SDK's credential header, named once (a `&str` name is parsed on every lookup).
static X_API_KEY: header::HeaderName = header::HeaderName::from_static("x-api-key");

/// The credential bytes: `x-api-key` if present (the SDK's header), else `Authorization: Bearer …`.
pub fn presented_credential(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(&X_API_KEY) {
        return Some(v.as_bytes());
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = auth.split_at(auth.len().min(7));
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
}

pub struct Authenticator {
    store: DynStore,
    hasher: Arc<dyn KeyHasher>,
    cache: KeyCache,
    usage: UsageLog,
}

/// Outcome of looking a hash up in the cache alone.
pub enum CacheLookup {
    /// Decided without the store.
    Decided(Result<ApiKeyAuth, ApiError>),
    /// Not cached (or stale): ask the store.
    Miss { hash: [u8; 32] },
    /// An access token: never cached, decided on the routed path.
    Token,
}

impl Authenticator {
    pub fn new(store: DynStore, hasher: Arc<dyn KeyHasher>, cache_ttl: Duration) -> Self {
        Authenticator {
            store,
            hasher,
            cache: KeyCache::new(cache_ttl),
            usage: UsageLog::default(),
        }
    }

    /// The pepper holder: what hashes keys, tokens and recovery codes.
    pub fn hasher(&self) -> &dyn KeyHasher {
        self.hasher.as_ref()
    }

    /// The store credentials are looked up in.
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub fn usage(&self) -> &UsageLog {
        &self.usage
    }

    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// Checks a presented API key (access tokens go through [`token::inference_caller`]). Every failure
    /// is [`ApiError::unauthorized`].
    pub async fn authenticate(
        &self,
        presented: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<ApiKeyAuth, ApiError> {
        match self.check_cached(presented, now) {
            CacheLookup::Decided(r) => r,
            CacheLookup::Token => Err(ApiError::unauthorized()),
            CacheLookup::Miss { hash } => {
                let found = self
                    .store
                    .api_key_by_hash(&hash)
                    .await
                    .map_err(|e| ApiError::internal(&e))?
                    .map(Arc::new);
                self.cache.insert(hash, found.clone());
                self.decide(found.as_ref(), &hash, now)
            }
        }
    }

    /// The in-memory part of the check: hash, format, and a cached record if there is a fresh one.
    pub fn check_cached(&self, presented: Option<&[u8]>, now: Timestamp) -> CacheLookup {
        let raw = presented.unwrap_or_default();
        if is_access_token(raw) {
            return CacheLookup::Token;
        }
        // Hash first, whatever the input, so the work done does not depend on which check fails.
        let hash = self.hasher.hash(raw);
        let cached = self.cache.get(&hash);
        // A cached record under this hash is a stored key, whose format was checked when it was made:
        // checking it again would only repeat that work. Anything else has its format checked first.
        if let Some(Some(record)) = &cached {
            return CacheLookup::Decided(self.decide(Some(record), &hash, now));
        }
        let well_formed = std::str::from_utf8(raw)
            .ok()
            .map(ApiKey::check)
            .is_some_and(|r| r.is_ok());
        if !well_formed {
            return CacheLookup::Decided(Err(ApiError::unauthorized()));
        }
        match cached {
            Some(found) => CacheLookup::Decided(self.decide(found.as_ref(), &hash, now)),
            None => CacheLookup::Miss { hash },
        }
    }

    fn decide(
        &self,
        found: Option<&Arc<KeyAuthRecord>>,
        hash: &[u8; 32],
        now: Timestamp,
    ) -> Result<ApiKeyAuth, ApiError> {
        let ok = found.is_some_and(|r| skygate_core::apikey::hashes_equal(&r.hash, hash) & r.is_active(now));
        match found {
            Some(r) if ok => {
                self.usage.record(&r.key_id, now);
                Ok(ApiKeyAuth {
                    caller: Caller::Key(r.clone()),
                })
            }
            _ => Err(ApiError::unauthorized()),
        }
    }

    /// Writes the coalesced `last_used_at` updates in one batch.
    pub async fn flush_usage(&self) -> Result<usize, skygate_store::StoreError> {
        let batch = self.usage.drain();
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.len();
        if let Err(e) = self.store.touch_api_keys(&batch).await {
            // Put them back so the next flush retries; never lose a use.
            for (id, ts) in batch {
                self.usage.record(&id, ts);
            }
            return Err(e);
        }
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn x_api_key_wins_over_bearer() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented_credential(&h), Some(&b"abc"[..]));
        h.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(presented_credential(&h), Some(&b"xyz"[..]));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(presented_credential(&h), Some(&b"abc"[..]));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented_credential(&h), None);
        h.insert(header::AUTHORIZATION, "Bear".parse().unwrap());
        assert_eq!(presented_credential(&h), None);
    }
}
