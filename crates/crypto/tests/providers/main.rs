//! Key provider tests: the conformance suite every provider passes (`suite`), run here against the local
//! keyring, plus what is particular to each provider.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod local;
mod suite;
