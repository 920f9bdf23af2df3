//! Conformance cases for webhooks: the outbox written with every status change, delivery leases, the
//! attempt log, signing secrets, and how webhook data lives through purge and account erasure.
//! Re-exported through `cases.rs` and registered in `main.rs`. Every time is explicit (a fake clock).

use std::collections::BTreeSet;
use std::time::Duration;

use skygate_core::predictions::{
    Claimed, Completion, NewPrediction, PredictionId, RunMetrics, RunningCaps, StoredOutput,
};
use skygate_core::webhooks::{
    AttemptRecord, ClaimedDelivery, Delivery, DeliveryAttempt, DeliveryFilter, DeliveryId, DeliveryState,
    NextStep, WebhookEvent, MAX_RESPONSE_EXCERPT,
};
use skygate_core::{ProjectId, SecretString, Timestamp};
use skygate_crypto::{Aad, CryptoError};
use skygate_proto::{PredictionStatus, WebhookSpec};
use skygate_store::{CancelOutcome, DynStore, StoreError};

use crate::predictions::{
    another_project, at, audit, claim_one, create, get, new_prediction, raw_of, tenant, LEASE, RETENTION,
    WINDOW,
};
use crate::{Db, Raw};

const ALL: &[&str] = &["started", "completed", "failed", "canceled"];

fn url_of(id: &PredictionId) -> String {
    format!("https://hooks.example.com/h/{id}")
}

/// A prediction whose webhook subscribes to `events` (empty: every terminal event).
fn hooked(project: &ProjectId, created_at: Timestamp, events: &[&str]) -> NewPrediction {
    let mut n = new_prediction(project, created_at);
    n.webhook = Some(WebhookSpec {
        url: url_of(&n.id),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
    });
    n
}

async fn make(s: &DynStore, n: NewPrediction) -> PredictionId {
    s.create_prediction(&n, WINDOW).await.unwrap().id
}

fn of(p: &PredictionId) -> DeliveryFilter {
    DeliveryFilter {
        prediction: Some(p.clone()),
        failed_only: false,
        limit: 0,
    }
}

/// The events announced for a prediction, with when, oldest first.
async fn events(s: &DynStore, p: &PredictionId) -> Vec<(WebhookEvent, Timestamp)> {
    let mut v: Vec<_> = s
        .list_deliveries(&of(p))
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.event, d.created_at))
        .collect();
    v.sort_by_key(|(e, t)| (*t, e.bit()));
    v
}

async fn the_delivery(s: &DynStore, p: &PredictionId, event: WebhookEvent) -> Delivery {
    let found: Vec<_> = s
        .list_deliveries(&of(p))
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.event == event)
        .collect();
    assert_eq!(found.len(), 1, "{p} {event}");
    found.into_iter().next().unwrap()
}

async fn finish(s: &DynStore, c: &Claimed, how: Completion, now: Timestamp) -> bool {
    s.complete_prediction(
        &c.record.id,
        &c.lease.token,
        &how,
        &RunMetrics::model_time(1),
        now,
        RETENTION,
        None,
    )
    .await
    .unwrap()
}

fn succeeded() -> Completion {
    Completion::Succeeded(StoredOutput::Text { text: "out".into() })
}

fn claimed<'a>(claims: &'a [Claimed], id: &PredictionId) -> &'a Claimed {
    claims.iter().find(|c| &c.record.id == id).unwrap()
}

fn attempt(
    d: &DeliveryId,
    number: u32,
    when: Timestamp,
    status: Option<u16>,
    error: Option<&str>,
    response: Option<&[u8]>,
) -> DeliveryAttempt {
    DeliveryAttempt {
        delivery: d.clone(),
        number,
        at: when,
        duration_us: 1_500,
        status,
        error: error.map(str::to_owned),
        next_attempt_at: None,
        response: response.map(<[u8]>::to_vec),
    }
}

fn delivery_ids(claims: &[ClaimedDelivery]) -> Vec<DeliveryId> {
    claims.iter().map(|c| c.delivery.id.clone()).collect()
}

/// Outbox rows appear exactly for the subscribed events, on each transition, at the transition's time:
/// `started` on claim (once, even when claimed again), and the terminal event however the prediction
/// ends (completed, cancelled while pending, reclaimed, purged). None without a webhook.
pub async fn outbox_rows_follow_subscribed_transitions(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let p_all = make(&s, hooked(&a.project, at(0), ALL)).await;
    let p_terminal = make(&s, hooked(&a.project, at(1), &[])).await;
    let p_none = create(&s, &a.project, at(2)).await.id;
    let p_started = make(&s, hooked(&a.project, at(3), &["prediction.started"])).await;
    for p in [&p_all, &p_terminal, &p_none, &p_started] {
        assert!(events(&s, p).await.is_empty(), "nothing before a transition");
    }

    let claims = s
        .claim_predictions(at(10), LEASE, 4, &RunningCaps::NONE)
        .await
        .unwrap();
    assert_eq!(claims.len(), 4);
    use WebhookEvent::{Cancelled, Failed, Started, Succeeded};
    assert_eq!(events(&s, &p_all).await, vec![(Started, at(10))]);
    assert_eq!(events(&s, &p_terminal).await, vec![]);
    assert_eq!(events(&s, &p_none).await, vec![]);
    assert_eq!(events(&s, &p_started).await, vec![(Started, at(10))]);
    let d = the_delivery(&s, &p_all, Started).await;
    assert!(d.id.as_str().starts_with("msg_"));
    assert_eq!(
        (&d.prediction, &d.account, &d.project, d.state, d.attempts),
        (&p_all, &a.account, &a.project, DeliveryState::Pending, 0)
    );
    assert_eq!(
        (
            d.next_attempt_at,
            d.created_at,
            d.updated_at,
            d.last_status,
            d.last_error.clone()
        ),
        (Some(at(10)), at(10), at(10), None, None)
    );
    assert_eq!(s.delivery(&d.id).await.unwrap(), Some(d));

    assert!(finish(&s, claimed(&claims, &p_all), succeeded(), at(20)).await);
    assert!(
        finish(
            &s,
            claimed(&claims, &p_terminal),
            Completion::Failed("boom".into()),
            at(21)
        )
        .await
    );
    assert!(finish(&s, claimed(&claims, &p_none), Completion::Cancelled, at(22)).await);
    assert!(finish(&s, claimed(&claims, &p_started), succeeded(), at(23)).await);
    assert_eq!(
        events(&s, &p_all).await,
        vec![(Started, at(10)), (Succeeded, at(20))]
    );
    assert_eq!(events(&s, &p_terminal).await, vec![(Failed, at(21))]);
    assert_eq!(events(&s, &p_none).await, vec![]);
    assert_eq!(
        events(&s, &p_started).await,
        vec![(Started, at(10))],
        "not subscribed to its end"
    );

    // Cancelled while pending.
    let p_cancel = make(&s, hooked(&a.project, at(30), &[])).await;
    let r = s
        .cancel_prediction(&a.project, &p_cancel, at(31), RETENTION)
        .await
        .unwrap();
    assert!(matches!(r, CancelOutcome::Cancelled(_)), "{r:?}");
    assert_eq!(events(&s, &p_cancel).await, vec![(Cancelled, at(31))]);
    // Cancelling again changes nothing and announces nothing.
    s.cancel_prediction(&a.project, &p_cancel, at(32), RETENTION)
        .await
        .unwrap();
    assert_eq!(events(&s, &p_cancel).await, vec![(Cancelled, at(31))]);

    // A cancel asked of a running prediction is announced when it ends, not when asked.
    let p_req = make(&s, hooked(&a.project, at(40), &["canceled"])).await;
    let c = claim_one(&s, at(41)).await;
    assert_eq!(c.record.id, p_req);
    let r = s
        .cancel_prediction(&a.project, &p_req, at(42), RETENTION)
        .await
        .unwrap();
    assert!(matches!(r, CancelOutcome::Requested(_)), "{r:?}");
    assert_eq!(events(&s, &p_req).await, vec![]);
    assert!(finish(&s, &c, Completion::Cancelled, at(43)).await);
    assert_eq!(events(&s, &p_req).await, vec![(Cancelled, at(43))]);

    // Failed by the reclaimer after its last attempt.
    let p_fail = make(&s, hooked(&a.project, at(50), &["failed"])).await;
    assert_eq!(claim_one(&s, at(51)).await.record.id, p_fail);
    let r = s.reclaim_expired(at(112), 1, RETENTION).await.unwrap();
    assert_eq!(r.failed, 1);
    assert_eq!(events(&s, &p_fail).await, vec![(Failed, at(112))]);

    // Cancelled by the reclaimer (a cancel had been asked for).
    let p_rc = make(&s, hooked(&a.project, at(200), &[])).await;
    assert_eq!(claim_one(&s, at(201)).await.record.id, p_rc);
    s.cancel_prediction(&a.project, &p_rc, at(202), RETENTION)
        .await
        .unwrap();
    let r = s.reclaim_expired(at(262), 5, RETENTION).await.unwrap();
    assert_eq!(r.cancelled, 1);
    assert_eq!(events(&s, &p_rc).await, vec![(Cancelled, at(262))]);

    // Requeued by the reclaimer and claimed again: `started` is announced once.
    let p_again = make(&s, hooked(&a.project, at(400), &["started"])).await;
    assert_eq!(claim_one(&s, at(401)).await.record.id, p_again);
    assert_eq!(
        s.reclaim_expired(at(462), 3, RETENTION).await.unwrap().requeued,
        1
    );
    let again = claim_one(&s, at(470)).await;
    assert_eq!(
        (again.record.id.clone(), again.record.attempts),
        (p_again.clone(), 2)
    );
    assert_eq!(events(&s, &p_again).await, vec![(Started, at(401))]);

    // Purging a queued or running prediction cancels it, and that is announced too (once).
    let p_queued = make(&s, hooked(&a.project, at(500), &[])).await;
    s.purge_prediction(&p_queued, at(501)).await.unwrap();
    assert_eq!(get(&s, &p_queued).await.status, PredictionStatus::Cancelled);
    assert_eq!(events(&s, &p_queued).await, vec![(Cancelled, at(501))]);
    s.purge_prediction(&p_queued, at(502)).await.unwrap();
    assert_eq!(events(&s, &p_queued).await, vec![(Cancelled, at(501))]);
    let r = s
        .purge_prediction(&again.record.id, at(503))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, PredictionStatus::Cancelled);
    assert_eq!(
        events(&s, &p_again).await,
        vec![(Started, at(401))],
        "not subscribed to cancelled"
    );
    // Purging a finished prediction announces nothing new.
    s.purge_prediction(&p_all, at(504)).await.unwrap();
    assert_eq!(events(&s, &p_all).await.len(), 2);
}

/// A status change and its outbox row commit together: a write that is refused (stale lease token)
/// writes neither, and when the outbox insert fails the status change is rolled back with it.
pub async fn status_change_and_outbox_row_commit_together(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let p = make(&s, hooked(&a.project, at(0), ALL)).await;
    let c = claim_one(&s, at(10)).await;
    use WebhookEvent::{Cancelled, Started, Succeeded};
    assert_eq!(events(&s, &p).await, vec![(Started, at(10))]);

    assert!(!s
        .complete_prediction(
            &p,
            "not-the-token",
            &succeeded(),
            &RunMetrics::model_time(1),
            at(20),
            RETENTION,
            None
        )
        .await
        .unwrap());
    assert_eq!(get(&s, &p).await.status, PredictionStatus::Starting);
    assert_eq!(events(&s, &p).await, vec![(Started, at(10))]);

    // The outbox is unavailable: the status change fails with it.
    db.outbox_down(true).await;
    assert!(s
        .complete_prediction(
            &p,
            &c.lease.token,
            &succeeded(),
            &RunMetrics::model_time(1),
            at(21),
            RETENTION,
            None
        )
        .await
        .is_err());
    let q = make(&s, hooked(&a.project, at(30), ALL)).await;
    // The claim goes first: a failed write's rollback may still be on its way when the next statement
    // runs on another connection, and PostgreSQL's claim skips rows locked meanwhile (SKIP LOCKED) where
    // the other writes wait for them.
    assert!(s
        .claim_predictions(at(31), LEASE, 10, &RunningCaps::NONE)
        .await
        .is_err());
    assert!(s
        .cancel_prediction(&a.project, &q, at(32), RETENTION)
        .await
        .is_err());
    assert!(s.purge_prediction(&q, at(33)).await.is_err());
    db.outbox_down(false).await;
    let r = get(&s, &p).await;
    assert_eq!((r.status, r.output), (PredictionStatus::Starting, None));
    let r = get(&s, &q).await;
    assert_eq!(
        (r.status, r.attempts, r.data_removed),
        (PredictionStatus::Pending, 0, false)
    );
    assert_eq!(events(&s, &q).await, vec![]);

    // Back again, each change comes with its row.
    assert!(finish(&s, &c, succeeded(), at(40)).await);
    assert_eq!(events(&s, &p).await, vec![(Started, at(10)), (Succeeded, at(40))]);
    assert_eq!(claim_one(&s, at(41)).await.record.id, q);
    assert_eq!(events(&s, &q).await, vec![(Started, at(41))]);
    s.purge_prediction(&q, at(42)).await.unwrap();
    assert_eq!(events(&s, &q).await, vec![(Started, at(41)), (Cancelled, at(42))]);
}

/// An unknown event name is refused by the store too (the server validates first), storing nothing.
pub async fn unknown_webhook_events_are_invalid(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let n = hooked(&a.project, at(0), &["started", "prediction.canceled"]);
    match s.create_prediction(&n, WINDOW).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("webhook.events[1]"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(s.find_prediction(&n.id).await.unwrap(), None);
}

/// Claims are exclusive: two dispatchers claiming at the same instant get disjoint sets, and nobody gets
/// a delivery under a live lease; once the lease expires it is claimable again (under a new token) and
/// the old token writes nothing. Claims hand out the targets.
pub async fn delivery_claims_are_exclusive_and_leases_expire(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let mut urls = BTreeSet::new();
    for i in 0..8 {
        let id = make(&s, hooked(&a.project, at(i), &["started"])).await;
        urls.insert(url_of(&id));
    }
    assert_eq!(
        s.claim_predictions(at(10), LEASE, 8, &RunningCaps::NONE)
            .await
            .unwrap()
            .len(),
        8
    );
    assert!(
        s.claim_deliveries(at(9), LEASE, 10).await.unwrap().is_empty(),
        "not due yet"
    );

    let (h1, h2) = (db.open().await, db.open().await);
    let (x, y) = tokio::join!(
        h1.claim_deliveries(at(20), LEASE, 5),
        h2.claim_deliveries(at(20), LEASE, 5)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut seen = BTreeSet::new();
    for c in x.iter().chain(&y) {
        assert!(
            seen.insert(c.delivery.id.clone()),
            "{} claimed twice",
            c.delivery.id
        );
        assert_eq!(c.delivery.state, DeliveryState::Pending);
    }
    assert_eq!(seen.len(), 8, "every due delivery went to one of them");
    assert!(x.len() <= 5 && y.len() <= 5);
    for batch in [&x, &y] {
        assert!(batch.windows(2).all(|w| w[0].lease_token == w[1].lease_token));
    }
    if let (Some(a), Some(b)) = (x.first(), y.first()) {
        assert_ne!(a.lease_token, b.lease_token);
    }
    let got: BTreeSet<String> = x.iter().chain(&y).map(|c| c.url.clone().unwrap()).collect();
    assert_eq!(got, urls);
    assert!(
        s.claim_deliveries(at(79), LEASE, 10).await.unwrap().is_empty(),
        "leases still live"
    );

    let again = s.claim_deliveries(at(80), LEASE, 10).await.unwrap();
    assert_eq!(
        again
            .iter()
            .map(|c| c.delivery.id.clone())
            .collect::<BTreeSet<_>>(),
        seen
    );
    let old = x.first().or(y.first()).unwrap();
    assert_ne!(old.lease_token, again[0].lease_token);
    let first = attempt(&old.delivery.id, 1, at(81), Some(200), None, None);
    assert!(!s
        .record_attempt(&first, &old.lease_token, &NextStep::Delivered, at(81))
        .await
        .unwrap());
    assert!(!s
        .release_delivery(&old.delivery.id, &old.lease_token)
        .await
        .unwrap());
    assert_eq!(
        s.delivery(&old.delivery.id).await.unwrap().unwrap().attempts,
        0,
        "the expired holder wrote nothing"
    );
    let new = again.iter().find(|c| c.delivery.id == old.delivery.id).unwrap();
    assert!(s
        .record_attempt(&first, &new.lease_token, &NextStep::Delivered, at(81))
        .await
        .unwrap());
}

/// `record_attempt` logs the attempt and moves the delivery on (retry later, delivered, given up),
/// releasing the lease; the longest-due delivery is claimed first; a stale token writes nothing.
pub async fn record_attempt_moves_deliveries_on(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let p1 = make(&s, hooked(&a.project, at(0), &[])).await;
    let p2 = make(&s, hooked(&a.project, at(1), &[])).await;
    let claims = s
        .claim_predictions(at(10), LEASE, 2, &RunningCaps::NONE)
        .await
        .unwrap();
    assert!(finish(&s, claimed(&claims, &p2), Completion::Failed("x".into()), at(20)).await);
    assert!(finish(&s, claimed(&claims, &p1), succeeded(), at(21)).await);

    let got = s.claim_deliveries(at(30), LEASE, 10).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|c| (c.delivery.prediction.clone(), c.delivery.event))
            .collect::<Vec<_>>(),
        vec![
            (p2.clone(), WebhookEvent::Failed),
            (p1.clone(), WebhookEvent::Succeeded)
        ],
        "longest due first"
    );
    let (c2, c1) = (&got[0], &got[1]);
    assert_eq!(c1.url.as_deref(), Some(url_of(&p1).as_str()));

    // Retry later.
    let mut first = attempt(
        &c1.delivery.id,
        1,
        at(30),
        Some(500),
        Some("HTTP 500"),
        Some(b"nope"),
    );
    first.next_attempt_at = Some(at(35));
    assert!(s
        .record_attempt(&first, &c1.lease_token, &NextStep::Retry { at: at(35) }, at(31))
        .await
        .unwrap());
    let d = s.delivery(&c1.delivery.id).await.unwrap().unwrap();
    assert_eq!(
        (
            d.state,
            d.attempts,
            d.next_attempt_at,
            d.last_status,
            d.last_error.as_deref()
        ),
        (
            DeliveryState::Pending,
            1,
            Some(at(35)),
            Some(500),
            Some("HTTP 500")
        )
    );
    assert_eq!((d.created_at, d.updated_at), (at(21), at(31)));
    // The lease went with it: the same token writes nothing more.
    let stale = attempt(&c1.delivery.id, 2, at(32), Some(200), None, None);
    assert!(!s
        .record_attempt(&stale, &c1.lease_token, &NextStep::Delivered, at(32))
        .await
        .unwrap());
    assert_eq!(s.delivery(&c1.delivery.id).await.unwrap().unwrap(), d);
    assert_eq!(
        s.delivery_attempts(&c1.delivery.id).await.unwrap(),
        vec![first.clone()]
    );
    assert!(s.claim_deliveries(at(34), LEASE, 10).await.unwrap().is_empty());

    // Delivered on the second attempt.
    let retry = s.claim_deliveries(at(35), LEASE, 10).await.unwrap();
    assert_eq!(delivery_ids(&retry), vec![c1.delivery.id.clone()]);
    assert_eq!(retry[0].delivery.attempts, 1);
    let second = attempt(&c1.delivery.id, 2, at(36), Some(204), None, None);
    assert!(s
        .record_attempt(&second, &retry[0].lease_token, &NextStep::Delivered, at(37))
        .await
        .unwrap());
    let d = s.delivery(&c1.delivery.id).await.unwrap().unwrap();
    assert_eq!(
        (
            d.state,
            d.attempts,
            d.next_attempt_at,
            d.last_status,
            d.last_error
        ),
        (DeliveryState::Delivered, 2, None, Some(204), None)
    );
    assert_eq!(
        s.delivery_attempts(&c1.delivery.id).await.unwrap(),
        vec![first, second]
    );

    // Given up: the reason is what the delivery shows; the attempt keeps its own error.
    let last = attempt(&c2.delivery.id, 1, at(38), None, Some("connection refused"), None);
    let give_up = NextStep::GiveUp {
        reason: "gave up after 1 attempt".into(),
    };
    assert!(s
        .record_attempt(&last, &c2.lease_token, &give_up, at(39))
        .await
        .unwrap());
    let d = s.delivery(&c2.delivery.id).await.unwrap().unwrap();
    assert_eq!(
        (
            d.state,
            d.attempts,
            d.next_attempt_at,
            d.last_status,
            d.last_error.as_deref()
        ),
        (
            DeliveryState::Failed,
            1,
            None,
            None,
            Some("gave up after 1 attempt")
        )
    );
    assert_eq!(s.delivery_attempts(&c2.delivery.id).await.unwrap(), vec![last]);
    assert!(s
        .claim_deliveries(at(100_000), LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .delivery_attempts(&DeliveryId::generate().unwrap())
        .await
        .unwrap()
        .is_empty());
}

/// Response excerpts round-trip (any bytes, up to 1 KiB; longer ones are cut), are sealed (the database
/// holds no plaintext), and the log comes back in attempt order.
pub async fn attempt_responses_are_sealed_and_cut(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    make(&s, hooked(&a.project, at(0), &[])).await;
    let c = claim_one(&s, at(1)).await;
    assert!(finish(&s, &c, succeeded(), at(2)).await);
    let text = b"the receiver says: quokka-response-marker".to_vec();
    let binary: Vec<u8> = (0..=255u8).cycle().take(MAX_RESPONSE_EXCERPT).collect();
    let long: Vec<u8> = b"quokka-response-marker "
        .iter()
        .copied()
        .cycle()
        .take(3000)
        .collect();
    let bodies: [Option<&[u8]>; 4] = [Some(&text), Some(&binary), Some(&long), None];
    let mut id = None;
    for (i, body) in bodies.iter().enumerate() {
        let got = s.claim_deliveries(at(10 + i as i64), LEASE, 1).await.unwrap();
        assert_eq!(got.len(), 1);
        id = Some(got[0].delivery.id.clone());
        let n = i as u32 + 1;
        let a = attempt(
            &got[0].delivery.id,
            n,
            at(10 + i as i64),
            Some(500),
            Some("HTTP 500"),
            *body,
        );
        let next = NextStep::Retry {
            at: at(11 + i as i64),
        };
        assert!(s
            .record_attempt(&a, &got[0].lease_token, &next, at(10 + i as i64))
            .await
            .unwrap());
    }
    let log = s.delivery_attempts(&id.unwrap()).await.unwrap();
    assert_eq!(log.iter().map(|a| a.number).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(log[0].response.as_deref(), Some(&text[..]));
    assert_eq!(log[1].response.as_deref(), Some(&binary[..]));
    assert_eq!(log[2].response.as_deref(), Some(&long[..MAX_RESPONSE_EXCERPT]));
    assert_eq!(log[3].response, None);

    let raw = db.raw_column("webhook_attempts", "response").await;
    assert_eq!(raw.len(), 4);
    for v in &raw {
        match v {
            Raw::Null => {}
            Raw::Bytes(b) => {
                assert!(!b.windows(6).any(|w| w == b"quokka"), "plaintext in the database");
                skygate_crypto::envelope::header_of(b).unwrap();
            }
            other => panic!("not sealed: {other:?}"),
        }
    }
    assert_eq!(raw.iter().filter(|v| **v == Raw::Null).count(), 1);
}

fn whsec(n: u32) -> SecretString {
    SecretString::new(format!("whsec_c2VjcmV0LW9rYXBp{n}"))
}

fn versions(list: &[skygate_core::webhooks::WebhookSecretRecord]) -> Vec<(u32, Option<Timestamp>)> {
    list.iter().map(|r| (r.version, r.retires_at)).collect()
}

/// `ensure` stores a first secret once (later candidates are ignored); `rotate` adds the next version
/// and lets the old ones sign until the overlap ends (ones already retiring keep their time).
pub async fn webhook_secrets_ensure_and_rotate(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let other = another_project(&s, &a.account).await;
    assert!(s.webhook_secrets(&a.project, at(0)).await.unwrap().is_empty());

    let first = s
        .ensure_webhook_secret(&a.project, &whsec(1), at(0))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let r = &first[0];
    assert_eq!(
        (
            &r.project,
            r.version,
            r.secret.expose(),
            r.created_at,
            r.retires_at
        ),
        (&a.project, 1, whsec(1).expose(), at(0), None)
    );
    assert_eq!(
        s.ensure_webhook_secret(&a.project, &whsec(2), at(5))
            .await
            .unwrap(),
        first,
        "idempotent"
    );
    assert_eq!(s.webhook_secrets(&a.project, at(5)).await.unwrap(), first);
    let unknown = ProjectId::generate().unwrap();
    assert!(matches!(
        s.ensure_webhook_secret(&unknown, &whsec(3), at(5)).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.rotate_webhook_secret(&unknown, &whsec(3), at(5), Duration::from_secs(60))
            .await,
        Err(StoreError::NotFound(_))
    ));

    let hour = Duration::from_secs(3600);
    let r = s
        .rotate_webhook_secret(&a.project, &whsec(3), at(100), hour)
        .await
        .unwrap();
    assert_eq!(versions(&r), vec![(2, None), (1, Some(at(3700)))]);
    assert_eq!(r[0].secret.expose(), whsec(3).expose());
    assert_eq!(r[1].secret.expose(), whsec(1).expose());
    assert_eq!(s.webhook_secrets(&a.project, at(3699)).await.unwrap(), r);
    assert_eq!(
        versions(&s.webhook_secrets(&a.project, at(3700)).await.unwrap()),
        vec![(2, None)]
    );
    // During the overlap `ensure` finds valid secrets and adds none.
    assert_eq!(
        s.ensure_webhook_secret(&a.project, &whsec(9), at(150))
            .await
            .unwrap(),
        r
    );

    // A second rotation inside the overlap: the retiring one keeps its earlier time.
    let r = s
        .rotate_webhook_secret(&a.project, &whsec(4), at(200), hour)
        .await
        .unwrap();
    assert_eq!(
        versions(&r),
        vec![(3, None), (2, Some(at(3800))), (1, Some(at(3700)))]
    );
    assert_eq!(
        versions(&s.webhook_secrets(&a.project, at(3750)).await.unwrap()),
        vec![(3, None), (2, Some(at(3800)))]
    );
    assert_eq!(
        versions(&s.webhook_secrets(&a.project, at(3800)).await.unwrap()),
        vec![(3, None)]
    );

    // No overlap: the old one stops at once. A first rotation needs no ensure before it.
    let r = s
        .rotate_webhook_secret(&other, &whsec(5), at(10), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(versions(&r), vec![(1, None)]);
    let r = s
        .rotate_webhook_secret(&other, &whsec(6), at(20), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(versions(&r), vec![(2, None)]);
    assert_eq!(r[0].secret.expose(), whsec(6).expose());
    assert_eq!(
        s.ensure_webhook_secret(&other, &whsec(7), at(30)).await.unwrap(),
        r
    );
    // Projects do not see each other's.
    assert_eq!(
        versions(&s.webhook_secrets(&a.project, at(20)).await.unwrap()),
        vec![(3, None), (2, Some(at(3800))), (1, Some(at(3700)))]
    );

    for v in db.raw_column("webhook_secrets", "secret").await {
        let Raw::Bytes(b) = v else { panic!("not sealed") };
        assert!(!b.windows(14).any(|w| w == b"c2VjcmV0LW9rYX"), "plaintext secret");
    }
}

/// Nodes ensuring a secret at once end with one (and all return it); concurrent rotations each add one
/// version, and only the newest is left without a retirement time.
pub async fn concurrent_secret_writers_agree(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let handles = [db.open().await, db.open().await];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8u32 {
        let h = handles[i as usize % 2].clone();
        let p = a.project.clone();
        tasks.spawn(async move { h.ensure_webhook_secret(&p, &whsec(i), at(0)).await });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.unwrap().unwrap());
    }
    assert!(results.iter().all(|r| r == &results[0]), "{results:?}");
    assert_eq!(versions(&results[0]), vec![(1, None)]);

    for i in 0..6u32 {
        let h = handles[i as usize % 2].clone();
        let p = a.project.clone();
        tasks.spawn(async move {
            h.rotate_webhook_secret(&p, &whsec(100 + i), at(10), Duration::from_secs(60))
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        let list = r.unwrap().unwrap();
        assert_eq!(list.iter().filter(|s| s.retires_at.is_none()).count(), 1);
    }
    let all = s.webhook_secrets(&a.project, at(10)).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![7, 6, 5, 4, 3, 2, 1]
    );
    let current: Vec<_> = all.iter().filter(|r| r.retires_at.is_none()).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].version, 7);
    assert!(all[1..].iter().all(|r| r.retires_at == Some(at(70))));
    let secrets: BTreeSet<String> = all.iter().map(|r| r.secret.expose().to_owned()).collect();
    assert_eq!(secrets.len(), 7);
    for h in handles {
        h.close().await;
    }
}

/// After a 410 Gone, every pending delivery of the prediction fails with the reason; one being
/// attempted right now still records its attempt; others are untouched.
pub async fn stop_prediction_deliveries_fails_pending_ones(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let p = make(&s, hooked(&a.project, at(0), ALL)).await;
    let cp = claim_one(&s, at(10)).await;
    let q = make(&s, hooked(&a.project, at(11), ALL)).await;
    assert_eq!(claim_one(&s, at(15)).await.record.id, q);
    assert!(finish(&s, &cp, succeeded(), at(20)).await);

    let leased = s.claim_deliveries(at(30), LEASE, 1).await.unwrap();
    assert_eq!(
        (leased[0].delivery.prediction.clone(), leased[0].delivery.event),
        (p.clone(), WebhookEvent::Started)
    );
    let reason = "the endpoint answered 410 Gone";
    assert_eq!(s.stop_prediction_deliveries(&p, reason, at(31)).await.unwrap(), 2);
    for d in s.list_deliveries(&of(&p)).await.unwrap() {
        assert_eq!(
            (d.state, d.next_attempt_at, d.last_error.as_deref(), d.updated_at),
            (DeliveryState::Failed, None, Some(reason), at(31))
        );
    }
    let gone = attempt(
        &leased[0].delivery.id,
        1,
        at(30),
        Some(410),
        Some("HTTP 410"),
        None,
    );
    let give_up = NextStep::GiveUp {
        reason: reason.into(),
    };
    assert!(s
        .record_attempt(&gone, &leased[0].lease_token, &give_up, at(32))
        .await
        .unwrap());
    assert_eq!(
        s.delivery_attempts(&leased[0].delivery.id).await.unwrap(),
        vec![gone]
    );
    assert_eq!(s.stop_prediction_deliveries(&p, reason, at(33)).await.unwrap(), 0);

    // The other prediction's delivery is untouched, and a delivered one stays delivered.
    let dq = the_delivery(&s, &q, WebhookEvent::Started).await;
    assert_eq!(dq.state, DeliveryState::Pending);
    let got = s.claim_deliveries(at(40), LEASE, 10).await.unwrap();
    assert_eq!(delivery_ids(&got), vec![dq.id.clone()]);
    let ok = attempt(&dq.id, 1, at(40), Some(200), None, None);
    assert!(s
        .record_attempt(&ok, &got[0].lease_token, &NextStep::Delivered, at(41))
        .await
        .unwrap());
    assert_eq!(s.stop_prediction_deliveries(&q, reason, at(42)).await.unwrap(), 0);
    assert_eq!(
        s.delivery(&dq.id).await.unwrap().unwrap().state,
        DeliveryState::Delivered
    );
}

/// Release gives a claimed delivery back due as it was; retry (the operator's replay) puts a delivery in
/// any state back to pending and due now, keeping its attempts and ending any lease.
pub async fn retry_and_release_delivery(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let p = make(&s, hooked(&a.project, at(2), &[])).await;
    let cp = claim_one(&s, at(3)).await;
    assert_eq!(cp.record.id, p);
    assert!(finish(&s, &cp, Completion::Failed("x".into()), at(20)).await);

    let got = s.claim_deliveries(at(30), LEASE, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    let id = got[0].delivery.id.clone();
    assert!(!s.release_delivery(&id, "wrong").await.unwrap());
    assert!(s.release_delivery(&id, &got[0].lease_token).await.unwrap());
    assert!(
        !s.release_delivery(&id, &got[0].lease_token).await.unwrap(),
        "once"
    );
    let d = s.delivery(&id).await.unwrap().unwrap();
    assert_eq!(
        (d.state, d.attempts, d.next_attempt_at, d.updated_at),
        (DeliveryState::Pending, 0, Some(at(20)), at(20))
    );
    let got = s.claim_deliveries(at(30), LEASE, 10).await.unwrap();
    assert_eq!(delivery_ids(&got), vec![id.clone()], "due again at once");
    let first = attempt(&id, 1, at(31), Some(500), Some("HTTP 500"), None);
    let give_up = NextStep::GiveUp {
        reason: "gave up".into(),
    };
    assert!(s
        .record_attempt(&first, &got[0].lease_token, &give_up, at(32))
        .await
        .unwrap());

    // Replayed from `failed`.
    let d = s.retry_delivery(&id, at(40)).await.unwrap().unwrap();
    assert_eq!(
        (
            d.state,
            d.attempts,
            d.next_attempt_at,
            d.updated_at,
            d.last_status
        ),
        (DeliveryState::Pending, 1, Some(at(40)), at(40), Some(500))
    );
    assert!(s.claim_deliveries(at(39), LEASE, 10).await.unwrap().is_empty());
    let got = s.claim_deliveries(at(40), LEASE, 10).await.unwrap();
    assert_eq!(delivery_ids(&got), vec![id.clone()]);
    // Replayed while leased: the lease ends, its holder writes nothing, and it is claimable at once.
    s.retry_delivery(&id, at(41)).await.unwrap().unwrap();
    let second = attempt(&id, 2, at(41), Some(200), None, None);
    assert!(!s
        .record_attempt(&second, &got[0].lease_token, &NextStep::Delivered, at(42))
        .await
        .unwrap());
    let got = s.claim_deliveries(at(41), LEASE, 10).await.unwrap();
    assert_eq!(delivery_ids(&got), vec![id.clone()]);
    assert!(s
        .record_attempt(&second, &got[0].lease_token, &NextStep::Delivered, at(42))
        .await
        .unwrap());
    // Replayed from `delivered`.
    let d = s.retry_delivery(&id, at(50)).await.unwrap().unwrap();
    assert_eq!((d.state, d.attempts), (DeliveryState::Pending, 2));
    assert_eq!(s.delivery_attempts(&id).await.unwrap().len(), 2);
    assert_eq!(
        s.retry_delivery(&DeliveryId::generate().unwrap(), at(51))
            .await
            .unwrap(),
        None
    );
}

/// Listings are newest first, filtered by prediction and by failure, and limited (0 meaning 100, at
/// most 1000).
pub async fn list_deliveries_filters(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let mut bulk = Vec::new();
    for i in 0..105 {
        bulk.push(make(&s, hooked(&a.project, at(i), &["started"])).await);
    }
    assert_eq!(
        s.claim_predictions(at(200), LEASE, 200, &RunningCaps::NONE)
            .await
            .unwrap()
            .len(),
        105
    );
    let p1 = make(&s, hooked(&a.project, at(300), &[])).await;
    let p2 = make(&s, hooked(&a.project, at(301), &[])).await;
    let p3 = make(&s, hooked(&a.project, at(302), &[])).await;
    let claims = s
        .claim_predictions(at(310), LEASE, 3, &RunningCaps::NONE)
        .await
        .unwrap();
    assert!(finish(&s, claimed(&claims, &p1), succeeded(), at(320)).await);
    assert!(finish(&s, claimed(&claims, &p2), Completion::Failed("x".into()), at(321)).await);
    assert!(finish(&s, claimed(&claims, &p3), succeeded(), at(322)).await);

    let list = |prediction: Option<&PredictionId>, failed_only: bool, limit: u32| {
        let s = s.clone();
        let filter = DeliveryFilter {
            prediction: prediction.cloned(),
            failed_only,
            limit,
        };
        async move { s.list_deliveries(&filter).await.unwrap() }
    };
    let newest = list(None, false, 3).await;
    assert_eq!(
        newest
            .iter()
            .map(|d| (d.prediction.clone(), d.created_at))
            .collect::<Vec<_>>(),
        vec![
            (p3.clone(), at(322)),
            (p2.clone(), at(321)),
            (p1.clone(), at(320))
        ]
    );
    assert_eq!(list(None, false, 0).await.len(), 100);
    assert_eq!(list(None, false, 100_000).await.len(), 108);
    let one = list(Some(&p2), false, 0).await;
    assert_eq!(
        one.iter().map(|d| d.event).collect::<Vec<_>>(),
        vec![WebhookEvent::Failed]
    );
    assert_eq!(list(Some(&bulk[7]), false, 0).await.len(), 1);
    assert!(list(Some(&PredictionId::generate().unwrap()), false, 0)
        .await
        .is_empty());
    assert!(
        list(None, true, 0).await.is_empty(),
        "a failed prediction is not a failed delivery"
    );

    // Fail two deliveries: the failed listing shows exactly them, newest first.
    s.stop_prediction_deliveries(&p1, "gone", at(400)).await.unwrap();
    s.stop_prediction_deliveries(&bulk[3], "gone", at(401))
        .await
        .unwrap();
    let failed = list(None, true, 0).await;
    assert_eq!(
        failed.iter().map(|d| d.prediction.clone()).collect::<Vec<_>>(),
        vec![p1.clone(), bulk[3].clone()]
    );
    assert!(failed.iter().all(|d| d.state == DeliveryState::Failed));
    assert_eq!(list(Some(&p1), true, 0).await.len(), 1);
    assert!(list(Some(&p3), true, 0).await.is_empty());
    assert_eq!(list(None, true, 1).await.len(), 1);
}

/// The retention purge destroys the prediction's data but not its webhook target and subscription, so
/// deliveries still being retried keep their URL.
pub async fn webhook_target_survives_the_purge(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let p = make(&s, hooked(&a.project, at(0), ALL)).await;
    let c = claim_one(&s, at(10)).await;
    assert!(finish(&s, &c, succeeded(), at(20)).await);
    assert!(matches!(raw_of(&db, &p, "webhook_target").await, Raw::Bytes(_)));
    assert_eq!(s.due_purges(at(320), 10).await.unwrap().len(), 1);
    let r = s.purge_prediction(&p, at(320)).await.unwrap().unwrap();
    assert!(r.data_removed && r.webhook.is_none());
    assert_eq!(raw_of(&db, &p, "webhook").await, Raw::Null);
    assert!(matches!(raw_of(&db, &p, "webhook_target").await, Raw::Bytes(_)));
    assert_eq!(raw_of(&db, &p, "webhook_events").await, Raw::Int(15));
    // The window's shred key can go; the target is under the account's.
    assert_eq!(s.retire_windows(at(10_000)).await.unwrap(), 1);

    let got = s.claim_deliveries(at(400), LEASE, 10).await.unwrap();
    assert_eq!(got.len(), 2);
    for c in &got {
        assert_eq!(c.url.as_deref(), Some(url_of(&p).as_str()));
    }
    // And a prediction without a webhook keeps an empty subscription.
    let plain = create(&s, &a.project, at(500)).await.id;
    assert_eq!(raw_of(&db, &plain, "webhook_events").await, Raw::Int(0));
    assert_eq!(raw_of(&db, &plain, "webhook_target").await, Raw::Null);
}

/// A delivery whose prediction was deleted, or whose target cannot be opened (tampered, or moved from
/// another row), is claimed with no URL (the dispatcher fails it); the rest of the batch is unaffected.
pub async fn deleted_or_unreadable_targets_have_no_url(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let gone = make(&s, hooked(&a.project, at(0), &["started"])).await;
    let bad = make(&s, hooked(&a.project, at(1), &["started"])).await;
    let fine = make(&s, hooked(&a.project, at(2), &["started"])).await;
    assert_eq!(
        s.claim_predictions(at(10), LEASE, 3, &RunningCaps::NONE)
            .await
            .unwrap()
            .len(),
        3
    );
    s.purge_prediction(&gone, at(20)).await.unwrap();
    assert!(s.delete_prediction(&a.project, &gone).await.unwrap());
    let theirs = db.raw_get("predictions", "webhook_target", fine.as_str()).await;
    db.raw_set("predictions", "webhook_target", bad.as_str(), &theirs)
        .await;

    let got = s.claim_deliveries(at(30), LEASE, 10).await.unwrap();
    let url = |p: &PredictionId| {
        got.iter()
            .find(|c| &c.delivery.prediction == p)
            .unwrap()
            .url
            .clone()
    };
    assert_eq!(got.len(), 3);
    assert_eq!(url(&gone), None);
    assert_eq!(url(&bad), None);
    assert_eq!(url(&fine), Some(url_of(&fine)));
}

/// Erasing an account removes its webhook secrets, deliveries and attempts (and their sealed values
/// cannot be read from a backup); another account's stay.
pub async fn erase_removes_webhook_data(db: Db) {
    let s = db.migrated().await;
    let gone = tenant(&s, "gone@example.com").await;
    let keep = tenant(&s, "keep@example.com").await;
    let mut deliveries = Vec::new();
    for (i, t) in [&gone, &keep].into_iter().enumerate() {
        s.ensure_webhook_secret(&t.project, &whsec(i as u32), at(0))
            .await
            .unwrap();
        let p = make(&s, hooked(&t.project, at(i as i64), &["started"])).await;
        assert_eq!(claim_one(&s, at(10 + i as i64)).await.record.id, p);
        let got = s.claim_deliveries(at(20), LEASE, 1).await.unwrap();
        let a = attempt(
            &got[0].delivery.id,
            1,
            at(20),
            Some(500),
            Some("HTTP 500"),
            Some(b"body"),
        );
        let next = NextStep::Retry { at: at(100) };
        assert!(s
            .record_attempt(&a, &got[0].lease_token, &next, at(21))
            .await
            .unwrap());
        deliveries.push(got[0].delivery.id.clone());
    }
    let backup_secrets = db.raw_column("webhook_secrets", "secret").await;
    let backup_targets = db.raw_column("predictions", "webhook_target").await;
    let backup_responses = db.raw_column("webhook_attempts", "response").await;
    assert_eq!(
        (backup_secrets.len(), backup_targets.len(), backup_responses.len()),
        (2, 2, 2)
    );

    assert!(s
        .erase_account(
            &gone.account,
            &audit("account.erase", gone.account.as_str(), at(30))
        )
        .await
        .unwrap());
    assert!(s.webhook_secrets(&gone.project, at(30)).await.unwrap().is_empty());
    assert_eq!(s.delivery(&deliveries[0]).await.unwrap(), None);
    assert!(s.delivery_attempts(&deliveries[0]).await.unwrap().is_empty());
    for (table, column) in [
        ("webhook_secrets", "account_id"),
        ("webhook_deliveries", "account_id"),
    ] {
        let left = db.raw_column(table, column).await;
        assert_eq!(left, vec![Raw::Text(keep.account.to_string())], "{table}");
    }
    assert_eq!(
        db.raw_column("webhook_attempts", "delivery_id").await,
        vec![Raw::Text(deliveries[1].to_string())]
    );
    assert_eq!(s.webhook_secrets(&keep.project, at(30)).await.unwrap().len(), 1);
    assert_eq!(s.delivery_attempts(&deliveries[1]).await.unwrap().len(), 1);
    let all = s.list_deliveries(&DeliveryFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![deliveries[1].clone()]
    );

    // The erased account's sealed values, as a backup holds them, are shredded.
    let cipher = db.sealer().cipher();
    let secret_place = Aad::field(
        "webhook_secrets",
        &format!("{}/1", gone.project),
        "secret",
        gone.account.as_str(),
    );
    let mut shredded = 0;
    for v in backup_secrets
        .iter()
        .chain(&backup_targets)
        .chain(&backup_responses)
    {
        let Raw::Bytes(b) = v else { panic!("not sealed") };
        if matches!(cipher.open(b, &secret_place), Err(CryptoError::Shredded(_))) {
            shredded += 1;
        }
    }
    // Shredding is checked before the AAD: each of the erased account's three values fails for its key.
    assert_eq!(shredded, 3);
}

/// Rotation and rewrap cover the webhook columns (target, secret, response); afterwards the old KEK
/// version can be retired and everything still reads back.
pub async fn rewrap_covers_webhook_columns(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    s.ensure_webhook_secret(&a.project, &whsec(1), at(0))
        .await
        .unwrap();
    let p = make(&s, hooked(&a.project, at(0), &["started"])).await;
    claim_one(&s, at(10)).await;
    let got = s.claim_deliveries(at(20), LEASE, 1).await.unwrap();
    let a1 = attempt(&got[0].delivery.id, 1, at(20), Some(500), None, Some(b"resp"));
    let next = NextStep::Retry { at: at(30) };
    assert!(s
        .record_attempt(&a1, &got[0].lease_token, &next, at(21))
        .await
        .unwrap());

    let columns: Vec<_> = skygate_store::SEALED_COLUMNS
        .iter()
        .filter(|c| {
            matches!(
                (c.table, c.column),
                ("predictions", "webhook_target")
                    | ("webhook_secrets", "secret")
                    | ("webhook_attempts", "response")
            )
        })
        .collect();
    assert_eq!(columns.len(), 3);
    for c in &columns {
        assert_eq!(
            s.sealed_versions(c).await.unwrap(),
            std::collections::BTreeMap::from([(1, 1)]),
            "{c:?}"
        );
    }
    let provider = db.sealer().cipher().provider().clone();
    assert_eq!(provider.rotate().unwrap(), 2);
    for c in &columns {
        let b = s.rewrap_batch(c, "", 10).await.unwrap();
        assert_eq!((b.moved, b.failed), (1, 0), "{c:?}");
        assert_eq!(
            s.sealed_versions(c).await.unwrap(),
            std::collections::BTreeMap::from([(2, 1)])
        );
    }
    // Everything else too, so version 1 can go.
    for c in skygate_store::SEALED_COLUMNS {
        let mut after = String::new();
        loop {
            let b = s.rewrap_batch(c, &after, 10).await.unwrap();
            assert_eq!(b.failed, 0);
            match b.last_key {
                Some(k) => after = k,
                None => break,
            }
        }
    }
    provider.retire(1).unwrap();
    assert_eq!(
        s.webhook_secrets(&a.project, at(40)).await.unwrap()[0]
            .secret
            .expose(),
        whsec(1).expose()
    );
    assert_eq!(s.delivery_attempts(&got[0].delivery.id).await.unwrap(), vec![a1]);
    let again = s.claim_deliveries(at(30), LEASE, 1).await.unwrap();
    assert_eq!(again[0].url.as_deref(), Some(url_of(&p).as_str()));
}

/// Webhook values with marker strings, for `sensitive_columns_hold_no_plaintext`: a signing secret and
/// attempt responses (the targets are in `sensitive_prediction_workload`'s webhooks). Returns the
/// markers.
pub async fn sensitive_webhook_workload(s: &DynStore, project: &ProjectId, i: u8) -> Vec<String> {
    let base = 10_000 * i64::from(i);
    let secret = format!("whsec_secret-marker-zebra-{i}");
    s.ensure_webhook_secret(project, &SecretString::new(secret.clone()), at(base + 40))
        .await
        .unwrap();
    let response = format!("response-marker-zebra-{i}");
    let got = s.claim_deliveries(at(base + 40), LEASE, 100).await.unwrap();
    assert!(!got.is_empty());
    for c in &got {
        let a = attempt(
            &c.delivery.id,
            c.delivery.attempts + 1,
            at(base + 41),
            Some(500),
            Some("HTTP 500"),
            Some(response.as_bytes()),
        );
        // Far in the future, so a later workload does not claim it again.
        let next = NextStep::Retry { at: at(100_000_000) };
        assert!(s
            .record_attempt(&a, &c.lease_token, &next, at(base + 41))
            .await
            .unwrap());
    }
    vec![secret, response]
}

/// `record_attempts` writes a whole batch in one transaction; an attempt whose lease is gone is
/// skipped (false at its index) without holding up the others.
pub async fn a_batch_of_attempts_commits_together_and_skips_stale_leases(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let mut ps = Vec::new();
    for i in 0..3 {
        ps.push(make(&s, hooked(&a.project, at(i), &[])).await);
    }
    let claims = s
        .claim_predictions(at(10), LEASE, 3, &RunningCaps::NONE)
        .await
        .unwrap();
    for p in &ps {
        assert!(finish(&s, claimed(&claims, p), succeeded(), at(20)).await);
    }
    let got = s.claim_deliveries(at(30), LEASE, 10).await.unwrap();
    assert_eq!(got.len(), 3);
    let batch: Vec<AttemptRecord> = got
        .iter()
        .enumerate()
        .map(|(i, c)| AttemptRecord {
            attempt: attempt(&c.delivery.id, 1, at(31), Some(200), None, Some(b"ok")),
            // The middle one's lease is not ours.
            lease_token: if i == 1 {
                "stale".into()
            } else {
                c.lease_token.clone()
            },
            next: NextStep::Delivered,
        })
        .collect();
    assert_eq!(
        s.record_attempts(&batch, at(32)).await.unwrap(),
        vec![true, false, true]
    );
    for (i, c) in got.iter().enumerate() {
        let d = s.delivery(&c.delivery.id).await.unwrap().unwrap();
        let logged = s.delivery_attempts(&c.delivery.id).await.unwrap();
        if i == 1 {
            assert_eq!(
                (d.state, d.attempts, logged.len()),
                (DeliveryState::Pending, 0, 0)
            );
        } else {
            assert_eq!((d.state, d.attempts), (DeliveryState::Delivered, 1));
            assert_eq!(logged, vec![batch[i].attempt.clone()]);
        }
    }
    assert_eq!(s.record_attempts(&[], at(33)).await.unwrap(), Vec::<bool>::new());
}
