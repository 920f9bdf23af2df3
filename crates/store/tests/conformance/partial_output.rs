//! Conformance cases for the partial output of a running prediction (the text a language model produced
//! so far): sealed like the final output, written only by the lease holder while the prediction runs,
//! replaced by the final output, and gone with every way a run ends or is given up.

use skygate_core::predictions::{Completion, PredictionId, RunMetrics, StoredFile, StoredOutput};
use skygate_crypto::{Aad, CryptoError};
use skygate_proto::PredictionStatus;
use skygate_store::{CancelOutcome, DynStore, LeaseCheck, Reclaimed, StoreError};

use crate::predictions::{at, claim_one, create, get, raw_of, tenant, RETENTION};
use crate::{Db, Raw};

fn text(t: &str) -> StoredOutput {
    StoredOutput::Text { text: t.into() }
}

const HELD: LeaseCheck = LeaseCheck::Held { cancel: false };

async fn partial(s: &DynStore, id: &PredictionId, token: &str, t: &str, secs: i64) -> LeaseCheck {
    s.report_partial_output(id, token, &text(t), at(secs))
        .await
        .unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The partial output is sealed in the `output` column (same AAD and window key as the final output),
/// readable while the prediction runs, written only with the lease token, replaced by the final output,
/// and never written once the prediction is terminal.
pub async fn partial_output_is_sealed_leased_and_replaced(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let p = create(&s, &a.project, at(0)).await;
    let idle = create(&s, &a.project, at(200)).await;
    let c = claim_one(&s, at(10)).await;
    assert_eq!(c.record.id, p.id);
    let token = c.lease.token.clone();

    assert_eq!(
        partial(&s, &p.id, &token, "Once upon a zebrafish", 11).await,
        HELD
    );
    let r = get(&s, &p.id).await;
    assert_eq!(r.status, PredictionStatus::Processing);
    assert_eq!(
        (r.output, r.started_at, r.updated_at),
        (Some(text("Once upon a zebrafish")), Some(at(11)), at(11))
    );
    let scoped = s.prediction(&a.project, &p.id).await.unwrap().unwrap();
    assert_eq!(scoped.output, Some(text("Once upon a zebrafish")));

    // Sealed: no plaintext in the database, bound to this row's output field, under the window's key.
    let Raw::Bytes(sealed) = raw_of(&db, &p.id, "output").await else {
        panic!("the partial output is not stored as sealed bytes")
    };
    assert!(!contains(&sealed, b"zebrafish"), "plaintext in the database");
    let cipher = db.sealer().cipher();
    let aad = |id: &PredictionId, col: &str| Aad::field("predictions", id.as_str(), col, a.account.as_str());
    let opened = cipher.open(&sealed, &aad(&p.id, "output")).unwrap();
    assert!(contains(&opened, b"zebrafish"));
    assert!(cipher.open(&sealed, &aad(&p.id, "input")).is_err());
    assert!(cipher.open(&sealed, &aad(&idle.id, "output")).is_err());

    // It grows; started_at stays the first time.
    assert_eq!(
        partial(&s, &p.id, &token, "Once upon a zebrafish, there", 12).await,
        HELD
    );
    let r = get(&s, &p.id).await;
    assert_eq!(
        (r.output, r.started_at, r.updated_at),
        (Some(text("Once upon a zebrafish, there")), Some(at(11)), at(12))
    );

    // Another token, an unclaimed or unknown prediction: nothing is written.
    let before = get(&s, &p.id).await;
    let wrong = "0".repeat(32);
    assert_eq!(partial(&s, &p.id, &wrong, "forged", 13).await, LeaseCheck::Lost);
    assert_eq!(partial(&s, &p.id, "", "forged", 13).await, LeaseCheck::Lost);
    assert_eq!(get(&s, &p.id).await, before);
    assert_eq!(
        partial(&s, &idle.id, &token, "forged", 13).await,
        LeaseCheck::Lost
    );
    assert_eq!(
        get(&s, &idle.id).await,
        idle,
        "an unclaimed prediction is untouched"
    );
    let unknown = PredictionId::generate().unwrap();
    assert_eq!(
        partial(&s, &unknown, &token, "forged", 13).await,
        LeaseCheck::Lost
    );
    // Files are not a partial output.
    let files = StoredOutput::Files {
        files: vec![StoredFile {
            name: "out.png".into(),
            content_type: "image/png".into(),
            size: 1,
        }],
    };
    let err = s
        .report_partial_output(&p.id, &token, &files, at(13))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(get(&s, &p.id).await, before);

    // Completion replaces it; afterwards nothing more is written, with or without the old token.
    assert!(s
        .complete_prediction(
            &p.id,
            &token,
            &Completion::Succeeded(text("Once upon a zebrafish, there was a sea.")),
            &RunMetrics::model_time(5),
            at(20),
            RETENTION,
            None,
        )
        .await
        .unwrap());
    let done = get(&s, &p.id).await;
    assert_eq!(done.status, PredictionStatus::Succeeded);
    assert_eq!(done.output, Some(text("Once upon a zebrafish, there was a sea.")));
    assert_eq!(partial(&s, &p.id, &token, "late", 21).await, LeaseCheck::Lost);
    assert_eq!(get(&s, &p.id).await, done, "never written once terminal");

    // The partial value was sealed under the window's shred key: once the window is purged and
    // retired, a copy taken earlier (a backup) cannot be opened.
    s.purge_prediction(&p.id, at(400)).await.unwrap();
    s.purge_prediction(&idle.id, at(400)).await.unwrap();
    assert_eq!(s.retire_windows(at(100_000)).await.unwrap(), 1);
    let r = cipher.open(&sealed, &aad(&p.id, "output"));
    assert!(matches!(r, Err(CryptoError::Shredded(_))), "{r:?}");
}

/// A run that fails, is cancelled, is given back (requeue, release), is reclaimed as failed or
/// cancelled, or is purged keeps no partial output; its old lease writes nothing.
pub async fn partial_output_does_not_outlive_its_run(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let failed = create(&s, &a.project, at(0)).await;
    let cancelled = create(&s, &a.project, at(1)).await;
    let requeued = create(&s, &a.project, at(2)).await;
    let expired = create(&s, &a.project, at(3)).await;
    let purged = create(&s, &a.project, at(4)).await;
    let assert_cleared = |id: PredictionId, status: PredictionStatus, what: &'static str| {
        let (s, db) = (s.clone(), db.clone());
        async move {
            let r = get(&s, &id).await;
            assert_eq!((r.status, r.output), (status, None), "{what}");
            assert_eq!(raw_of(&db, &id, "output").await, Raw::Null, "{what}");
        }
    };

    // Failed.
    let c = claim_one(&s, at(10)).await;
    assert_eq!(c.record.id, failed.id);
    assert_eq!(
        partial(&s, &failed.id, &c.lease.token, "half an ans", 11).await,
        HELD
    );
    assert!(s
        .complete_prediction(
            &failed.id,
            &c.lease.token,
            &Completion::Failed("the model crashed".into()),
            &RunMetrics::model_time(5),
            at(12),
            RETENTION,
            None,
        )
        .await
        .unwrap());
    assert_cleared(failed.id.clone(), PredictionStatus::Failed, "failed").await;
    assert_eq!(
        partial(&s, &failed.id, &c.lease.token, "late", 13).await,
        LeaseCheck::Lost
    );
    assert_cleared(failed.id.clone(), PredictionStatus::Failed, "failed, late write").await;

    // Cancelled while running: the next partial write learns of it, the completion clears the text.
    let c = claim_one(&s, at(10)).await;
    assert_eq!(c.record.id, cancelled.id);
    assert_eq!(partial(&s, &cancelled.id, &c.lease.token, "Dear", 11).await, HELD);
    assert!(matches!(
        s.cancel_prediction(&a.project, &cancelled.id, at(12), RETENTION)
            .await
            .unwrap(),
        CancelOutcome::Requested(_)
    ));
    assert_eq!(
        partial(&s, &cancelled.id, &c.lease.token, "Dear sir", 13).await,
        LeaseCheck::Held { cancel: true }
    );
    assert!(s
        .complete_prediction(
            &cancelled.id,
            &c.lease.token,
            &Completion::Cancelled,
            &RunMetrics::model_time(5),
            at(14),
            RETENTION,
            None,
        )
        .await
        .unwrap());
    assert_cleared(cancelled.id.clone(), PredictionStatus::Cancelled, "cancelled").await;

    // Requeued after its worker stopped renewing, then released by a node shutting down: pending with no
    // output each time, and the old lease writes nothing.
    let c = claim_one(&s, at(20)).await;
    assert_eq!(c.record.id, requeued.id);
    assert_eq!(
        partial(&s, &requeued.id, &c.lease.token, "Step one", 21).await,
        HELD
    );
    let c_exp = claim_one(&s, at(20)).await;
    assert_eq!(c_exp.record.id, expired.id);
    assert_eq!(
        partial(&s, &expired.id, &c_exp.lease.token, "Lorem", 21).await,
        HELD
    );
    assert_eq!(
        s.reclaim_expired(at(81), 3, RETENTION).await.unwrap(),
        Reclaimed {
            requeued: 2,
            ..Default::default()
        }
    );
    assert_cleared(requeued.id.clone(), PredictionStatus::Pending, "requeued").await;
    assert_eq!(
        partial(&s, &requeued.id, &c.lease.token, "Step one, two", 82).await,
        LeaseCheck::Lost
    );
    assert_cleared(
        requeued.id.clone(),
        PredictionStatus::Pending,
        "requeued, late write",
    )
    .await;
    let c = claim_one(&s, at(90)).await;
    assert_eq!(c.record.id, requeued.id);
    assert_eq!(partial(&s, &requeued.id, &c.lease.token, "Step", 91).await, HELD);
    assert!(s
        .release_lease(&requeued.id, &c.lease.token, at(92))
        .await
        .unwrap());
    assert_cleared(requeued.id.clone(), PredictionStatus::Pending, "released").await;

    // Reclaimed as failed (out of attempts), and as cancelled (a cancel was asked for).
    let c = claim_one(&s, at(100)).await;
    assert_eq!(c.record.id, requeued.id);
    assert_eq!(partial(&s, &requeued.id, &c.lease.token, "Step", 101).await, HELD);
    let c_exp = claim_one(&s, at(100)).await;
    assert_eq!(c_exp.record.id, expired.id);
    assert_eq!(
        partial(&s, &expired.id, &c_exp.lease.token, "Lorem ipsum", 101).await,
        HELD
    );
    s.cancel_prediction(&a.project, &requeued.id, at(102), RETENTION)
        .await
        .unwrap();
    assert_eq!(
        s.reclaim_expired(at(161), 2, RETENTION).await.unwrap(),
        Reclaimed {
            failed: 1,
            cancelled: 1,
            ..Default::default()
        }
    );
    assert_cleared(
        expired.id.clone(),
        PredictionStatus::Failed,
        "reclaimed as failed",
    )
    .await;
    assert_cleared(
        requeued.id.clone(),
        PredictionStatus::Cancelled,
        "reclaimed as cancelled",
    )
    .await;

    // Purged while running: the data goes, the run is cancelled, and its lease writes nothing.
    let c = claim_one(&s, at(170)).await;
    assert_eq!(c.record.id, purged.id);
    assert_eq!(partial(&s, &purged.id, &c.lease.token, "Secret", 171).await, HELD);
    s.purge_prediction(&purged.id, at(172)).await.unwrap();
    assert_cleared(purged.id.clone(), PredictionStatus::Cancelled, "purged").await;
    assert_eq!(
        partial(&s, &purged.id, &c.lease.token, "Secret plan", 173).await,
        LeaseCheck::Lost
    );
    assert_cleared(
        purged.id.clone(),
        PredictionStatus::Cancelled,
        "purged, late write",
    )
    .await;
}
