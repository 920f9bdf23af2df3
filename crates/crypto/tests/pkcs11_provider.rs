//! The PKCS#11 provider tests (see `providers/pkcs11.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "providers/pkcs11.rs"]
mod pkcs11;
