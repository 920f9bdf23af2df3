//! skygate webhook delivery, independent of storage and the HTTP edge.
//!
//! * [`secret`]: `whsec_…` signing secrets (redacted, zeroized, keys precomputed).
//! * [`sign`](mod@sign): `X-Skytells-Signature` and Standard Webhooks signing and verification.
//! * [`guard`]: the SSRF guard (URL policy, address classes, resolve-once vetting).
//! * [`client`]: the pooled, bounded HTTP/1.1 + TLS 1.3 delivery client.
//! * [`schedule`]: the retry schedule.

pub mod client;
pub mod guard;
pub mod schedule;
pub mod secret;
pub mod sign;

pub use client::{load_pem_roots, Attempt, Client, ClientConfig, ClientError, Outcome};
pub use guard::{
    check_url, classify, vet, Connector, Forbidden, Io, Policy, Refused, Resolver, SystemResolver, Target,
    TcpConnector, UrlError,
};
pub use schedule::{Decision, Schedule};
pub use secret::{SecretError, WebhookSecret};
pub use sign::{
    sign, skytells_signature, standard_signature, verify, Scheme, SignedHeaders, Verified, VerifyError,
};
