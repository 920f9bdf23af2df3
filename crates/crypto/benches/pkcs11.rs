//! PKCS#11 provider cost per sealed object: one DEK wrap + unwrap through the HSM (the HSM share of a
//! seal + open), plus a shred-key mix. Needs `SKYGATE_TEST_PKCS11_MODULE` (SoftHSM2:
//! `/usr/lib/softhsm/libsofthsm2.so`); without it, says so and measures nothing.
//!
//! `SKYGATE_TEST_PKCS11_MODULE=/usr/lib/softhsm/libsofthsm2.so cargo bench -p skygate-crypto --bench pkcs11`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use skygate_crypto::{Aad, Cipher, Dek, KeyProvider, Pkcs11Config, Pkcs11Pin, Pkcs11Provider};

const LABEL: &str = "skygate-bench";
const SO_PIN: &str = "bench-so-pin";
const USER_PIN: &str = "bench-user-pin";

/// A fresh SoftHSM2 token in a temp dir, and the provider on it.
fn provider(module: PathBuf, dir: &tempfile::TempDir) -> Pkcs11Provider {
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .unwrap();
    // Read by SoftHSM2 at C_Initialize, which has not happened yet in this process.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let ctx = Pkcs11::new(&module).unwrap();
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let free = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| !i.token_initialized()))
        .unwrap();
    ctx.init_token(free, &AuthPin::from(SO_PIN), LABEL).unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|i| i.label().trim_end() == LABEL)
        })
        .unwrap();
    {
        let so = ctx.open_rw_session(slot).unwrap();
        so.login(UserType::So, Some(&AuthPin::from(SO_PIN))).unwrap();
        so.init_pin(&AuthPin::from(USER_PIN)).unwrap();
    }
    Pkcs11Provider::open(Pkcs11Config {
        module,
        slot: None,
        token_label: Some(LABEL.into()),
        pin: Pkcs11Pin::new(USER_PIN),
    })
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let Some(module) = std::env::var_os("SKYGATE_TEST_PKCS11_MODULE").filter(|m| !m.is_empty()) else {
        eprintln!(
            "\n*** SKIPPING pkcs11 bench: SKYGATE_TEST_PKCS11_MODULE is unset \
             (install softhsm2 and set it to /usr/lib/softhsm/libsofthsm2.so) ***\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(provider(PathBuf::from(module), &dir));
    let dek = Dek::generate().unwrap();

    c.bench_function("pkcs11_wrap_unwrap_per_object", |b| {
        b.iter(|| {
            let (v, w) = p.wrap(&dek).unwrap();
            p.unwrap(v, &w).unwrap()
        })
    });

    let shred = p.create_shred_key().unwrap();
    c.bench_function("pkcs11_shred_mix", |b| {
        b.iter(|| p.shred_mix(shred, &dek).unwrap())
    });

    let cipher = Cipher::new(p.clone());
    let at = Aad::field("predictions", "p_1", "output", "acct_1");
    let value = vec![7u8; 1024];
    c.bench_function("pkcs11_seal_open_1KiB", |b| {
        b.iter(|| {
            let sealed = cipher.seal(&value, &at).unwrap();
            cipher.open(&sealed, &at).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
