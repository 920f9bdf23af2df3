//! Conformance cases for predictions, the durable queue, retention and usage. Re-exported through
//! `cases.rs` and registered in `main.rs` like every other case. Every time is explicit (a fake clock):
//! nothing here sleeps or reads the wall clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use skygate_core::predictions::{
    Claimed, Completion, ListFilter, NewPrediction, PredictionId, PredictionRecord, RunMetrics, RunningCaps,
    SandboxMetrics, StoredFile, StoredOutput, TokenUsage, UsageRecord,
};
use skygate_core::{
    AccountId, KeyId, Mode, NewAccount, NewAuditEntry, NewProject, ProjectId, Tier, Timestamp,
};
use skygate_crypto::{Aad, CryptoError};
use skygate_proto::{PredictionStatus, WebhookSpec};
use skygate_store::{CancelOutcome, DuePurge, DynStore, LeaseCheck, Reclaimed, StoreError};

use crate::{Db, Raw};

pub(crate) const SEC: i64 = 1_000_000;
/// A time aligned to the 5-minute retention windows the cases use.
pub(crate) const BASE: i64 = 1_700_000_100 * SEC;
pub(crate) const WINDOW: Duration = Duration::from_secs(300);
pub(crate) const RETENTION: Duration = Duration::from_secs(300);
pub(crate) const LEASE: Duration = Duration::from_secs(60);
/// `retire_windows`' grace after a window's end.
const GRACE_SECS: i64 = 600;

/// `secs` seconds after [`BASE`].
pub(crate) fn at(secs: i64) -> Timestamp {
    Timestamp::from_micros(BASE + secs * SEC)
}

pub(crate) struct Tenant {
    pub(crate) account: AccountId,
    pub(crate) project: ProjectId,
}

pub(crate) async fn tenant(s: &DynStore, email: &str) -> Tenant {
    let new = NewAccount {
        id: AccountId::generate().unwrap(),
        email: email.into(),
        tier: Tier::Free,
        created_at: at(-1000),
    };
    let account = s.create_account(&new).await.unwrap().id;
    let project = another_project(s, &account).await;
    Tenant { account, project }
}

pub(crate) async fn another_project(s: &DynStore, account: &AccountId) -> ProjectId {
    let new = NewProject {
        id: ProjectId::generate().unwrap(),
        name: "project".into(),
        created_at: at(-1000),
    };
    s.create_project(account, &new).await.unwrap().id
}

pub(crate) fn new_prediction(project: &ProjectId, created_at: Timestamp) -> NewPrediction {
    NewPrediction {
        id: PredictionId::generate().unwrap(),
        project: project.clone(),
        key: None,
        mode: Mode::Live,
        model: "echo".into(),
        stream: false,
        input: json!({"prompt": "hello"}),
        webhook: None,
        created_at,
    }
}

pub(crate) async fn create(s: &DynStore, project: &ProjectId, created_at: Timestamp) -> PredictionRecord {
    s.create_prediction(&new_prediction(project, created_at), WINDOW)
        .await
        .unwrap()
}

pub(crate) async fn get(s: &DynStore, id: &PredictionId) -> PredictionRecord {
    s.find_prediction(id).await.unwrap().unwrap()
}

pub(crate) async fn claim_one(s: &DynStore, now: Timestamp) -> Claimed {
    let mut got = s
        .claim_predictions(now, LEASE, 1, &RunningCaps::NONE)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "expected one claim at {now:?}");
    got.remove(0)
}

fn ids(records: &[PredictionRecord]) -> Vec<PredictionId> {
    records.iter().map(|r| r.id.clone()).collect()
}

fn claimed_ids(claims: &[Claimed]) -> Vec<PredictionId> {
    claims.iter().map(|c| c.record.id.clone()).collect()
}

fn usage_of(r: &PredictionRecord, status: PredictionStatus, now: Timestamp, units: f64) -> UsageRecord {
    UsageRecord {
        prediction: r.id.clone(),
        project: r.project.clone(),
        model: r.model.clone(),
        mode: r.mode,
        status,
        predict_time: 1.25,
        units,
        unit: "image".into(),
        at: now,
        tokens: None,
    }
}

/// One column of one prediction, straight from the database.
pub(crate) async fn raw_of(db: &Db, id: &PredictionId, column: &str) -> Raw {
    let mut v = db
        .raw_column(&format!("predictions WHERE id = '{id}'"), column)
        .await;
    assert_eq!(v.len(), 1, "{id} {column}");
    v.remove(0)
}

fn is_shredded(r: &Result<Option<PredictionRecord>, StoreError>) -> bool {
    matches!(
        r,
        Err(StoreError::Sealed {
            source: CryptoError::Shredded(_),
            ..
        })
    )
}

/// Create → get round-trips every field; reads are scoped to the owning project; unknown project and
/// duplicate id are refused without touching anything.
pub async fn predictions_create_get_and_scope(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let sibling = another_project(&s, &a.account).await;
    let b = tenant(&s, "b@example.com").await;

    let input = json!({
        "prompt": "a lighthouse at dusk, é ☃ \"quoted\"",
        "steps": 28,
        "guidance": 3.5,
        "seed": -9_007_199_254_740_991_i64,
        "tags": ["x", "y"],
        "nested": {"none": null, "flag": true, "list": [[1], []]},
    });
    let webhook = WebhookSpec {
        url: "https://hooks.example.com/skygate?token=abc&x=1".into(),
        events: vec!["prediction.succeeded".into(), "failed".into()],
    };
    let new = NewPrediction {
        id: PredictionId::generate().unwrap(),
        project: a.project.clone(),
        key: Some(KeyId::generate().unwrap()),
        mode: Mode::Test,
        model: "flux-1.1-pro".into(),
        stream: true,
        input: input.clone(),
        webhook: Some(webhook.clone()),
        created_at: Timestamp::from_micros(BASE + 123_457),
    };
    let created = s.create_prediction(&new, WINDOW).await.unwrap();
    let want = PredictionRecord {
        id: new.id.clone(),
        account: a.account.clone(),
        project: a.project.clone(),
        mode: Mode::Test,
        model: "flux-1.1-pro".into(),
        status: PredictionStatus::Pending,
        stream: true,
        input: Some(input),
        output: None,
        error: None,
        webhook: Some(webhook),
        progress: 0,
        attempts: 0,
        cancel_requested: false,
        created_at: new.created_at,
        started_at: None,
        completed_at: None,
        updated_at: new.created_at,
        predict_time_us: None,
        sandbox: None,
        purge_at: None,
        data_removed: false,
    };
    assert_eq!(created, want);
    assert_eq!(
        s.prediction(&a.project, &new.id).await.unwrap(),
        Some(want.clone())
    );
    assert_eq!(s.find_prediction(&new.id).await.unwrap(), Some(want.clone()));
    let other_handle = db.open().await;
    assert_eq!(
        other_handle.prediction(&a.project, &new.id).await.unwrap(),
        Some(want.clone()),
        "another handle (node) reads the same record"
    );

    // Scoped: another project of the same account, or another account's, is like an unknown id.
    assert_eq!(s.prediction(&sibling, &new.id).await.unwrap(), None);
    assert_eq!(s.prediction(&b.project, &new.id).await.unwrap(), None);
    let unknown = PredictionId::generate().unwrap();
    assert_eq!(s.prediction(&a.project, &unknown).await.unwrap(), None);
    assert_eq!(s.find_prediction(&unknown).await.unwrap(), None);

    // No webhook, live, not streamed, an empty input.
    let mut plain = new_prediction(&b.project, at(1));
    plain.input = json!({});
    let rec = s.create_prediction(&plain, WINDOW).await.unwrap();
    assert_eq!(
        (rec.mode, rec.stream, rec.webhook.clone(), rec.input.clone()),
        (Mode::Live, false, None, Some(json!({})))
    );
    assert_eq!(rec.account, b.account);
    assert_eq!(get(&s, &plain.id).await, rec);

    // Unknown project.
    let orphan = new_prediction(&ProjectId::generate().unwrap(), at(2));
    let r = s.create_prediction(&orphan, WINDOW).await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    assert_eq!(s.find_prediction(&orphan.id).await.unwrap(), None);

    // A duplicate id (even into another tenant) conflicts and changes nothing.
    let mut dup = new_prediction(&b.project, at(3));
    dup.id = new.id.clone();
    dup.input = json!({"other": 1});
    let r = s.create_prediction(&dup, WINDOW).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    assert_eq!(get(&s, &new.id).await, want);
}

async fn check_filter(
    s: &DynStore,
    project: &ProjectId,
    made: &[NewPrediction],
    filter: ListFilter,
    keep: impl Fn(&NewPrediction) -> bool,
) {
    let mut want: Vec<&NewPrediction> = made.iter().filter(|n| keep(n)).collect();
    want.sort_by(|x, y| (y.created_at, &y.id).cmp(&(x.created_at, &x.id)));
    let want: Vec<PredictionId> = want.into_iter().map(|n| n.id.clone()).collect();
    let (page, total) = s.list_predictions(project, &filter, 0, 50).await.unwrap();
    assert_eq!(ids(&page), want, "{filter:?}");
    assert_eq!(total, want.len() as u64, "{filter:?}");
}

/// Newest first (ties by id, descending), offset/limit pages with the full total, `from` inclusive,
/// `until` exclusive, model and mode filters; another project's predictions never appear.
pub async fn list_predictions_newest_first_filtered_and_paged(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let b = tenant(&s, "b@example.com").await;
    let sibling = another_project(&s, &a.account).await;
    let mut made = Vec::new();
    // Created out of time order, so the order must come from created_at, not insertion.
    for secs in [40, 10, 70, 20, 60, 30, 50] {
        let mut n = new_prediction(&a.project, at(secs));
        n.model = if secs % 20 == 0 { "m-even" } else { "m-odd" }.into();
        n.mode = if secs == 30 || secs == 60 {
            Mode::Test
        } else {
            Mode::Live
        };
        s.create_prediction(&n, WINDOW).await.unwrap();
        made.push(n);
        // The same times in other projects: never listed for `a.project`.
        create(&s, &b.project, at(secs)).await;
        create(&s, &sibling, at(secs)).await;
    }
    for _ in 0..2 {
        let n = new_prediction(&a.project, at(45));
        s.create_prediction(&n, WINDOW).await.unwrap();
        made.push(n);
    }

    let mut sorted: Vec<&NewPrediction> = made.iter().collect();
    sorted.sort_by(|x, y| (y.created_at, &y.id).cmp(&(x.created_at, &x.id)));
    let want_all: Vec<PredictionId> = sorted.iter().map(|n| n.id.clone()).collect();
    let (page, total) = s
        .list_predictions(&a.project, &ListFilter::default(), 0, 50)
        .await
        .unwrap();
    assert_eq!(total, 9);
    assert_eq!(ids(&page), want_all);
    assert_eq!(page[0].created_at, at(70));
    for r in &page {
        assert_eq!(&get(&s, &r.id).await, r, "a listed record is the record");
    }

    // Pages of 4 cover everything once, in order, each with the full total.
    let mut paged = Vec::new();
    for offset in [0, 4, 8] {
        let (p, t) = s
            .list_predictions(&a.project, &ListFilter::default(), offset, 4)
            .await
            .unwrap();
        assert_eq!(t, 9);
        assert_eq!(p.len(), if offset == 8 { 1 } else { 4 });
        paged.extend(ids(&p));
    }
    assert_eq!(paged, want_all);
    // Past the end, absurd offsets and limits: an empty page, still the right total.
    for (offset, limit) in [(9, 4), (1_000, 50), (u64::MAX, 50), (u64::MAX, u64::MAX), (0, 0)] {
        let (p, t) = s
            .list_predictions(&a.project, &ListFilter::default(), offset, limit)
            .await
            .unwrap();
        assert!(p.is_empty(), "offset {offset} limit {limit}");
        assert_eq!(t, 9, "offset {offset} limit {limit}");
    }
    let (p, _) = s
        .list_predictions(&a.project, &ListFilter::default(), 0, u64::MAX)
        .await
        .unwrap();
    assert_eq!(ids(&p), want_all);

    let filter =
        |from: Option<i64>, until: Option<i64>, model: Option<&str>, mode: Option<Mode>| ListFilter {
            from: from.map(at),
            until: until.map(at),
            model: model.map(str::to_owned),
            mode,
        };
    check_filter(&s, &a.project, &made, filter(Some(30), None, None, None), |n| {
        n.created_at >= at(30)
    })
    .await;
    check_filter(&s, &a.project, &made, filter(None, Some(60), None, None), |n| {
        n.created_at < at(60)
    })
    .await;
    check_filter(
        &s,
        &a.project,
        &made,
        filter(Some(20), Some(50), None, None),
        |n| n.created_at >= at(20) && n.created_at < at(50),
    )
    .await;
    check_filter(
        &s,
        &a.project,
        &made,
        filter(None, None, Some("m-even"), None),
        |n| n.model == "m-even",
    )
    .await;
    check_filter(
        &s,
        &a.project,
        &made,
        filter(None, None, None, Some(Mode::Test)),
        |n| n.mode == Mode::Test,
    )
    .await;
    check_filter(
        &s,
        &a.project,
        &made,
        filter(Some(20), None, Some("m-odd"), Some(Mode::Live)),
        |n| n.created_at >= at(20) && n.model == "m-odd" && n.mode == Mode::Live,
    )
    .await;
    check_filter(
        &s,
        &a.project,
        &made,
        filter(None, None, Some("nope"), None),
        |_| false,
    )
    .await;
    check_filter(&s, &a.project, &made, filter(Some(71), None, None, None), |_| {
        false
    })
    .await;
    check_filter(
        &s,
        &a.project,
        &made,
        filter(Some(45), Some(45), None, None),
        |_| false,
    )
    .await;
    // Filters apply to the page and the total alike.
    let (p, t) = s
        .list_predictions(&a.project, &filter(Some(30), None, None, None), 1, 2)
        .await
        .unwrap();
    assert_eq!(t, 7);
    assert_eq!(ids(&p), want_all[1..3].to_vec());

    let (p, t) = s
        .list_predictions(&b.project, &ListFilter::default(), 0, 50)
        .await
        .unwrap();
    assert_eq!((p.len(), t), (7, 7));
    assert!(p.iter().all(|r| r.project == b.project && r.account == b.account));
    let (p, t) = s
        .list_predictions(&ProjectId::generate().unwrap(), &ListFilter::default(), 0, 50)
        .await
        .unwrap();
    assert_eq!((p.len(), t), (0, 0));
}

/// Claims take the oldest pending predictions (of every tenant), in that order, up to `limit`: each
/// moves to `starting` with one more attempt and a fresh lease; claimed ones are not claimed again.
pub async fn claim_takes_the_oldest_pending_first(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let b = tenant(&s, "b@example.com").await;
    let mut by_time = BTreeMap::new();
    for (secs, project) in [
        (50, &a.project),
        (10, &b.project),
        (40, &a.project),
        (20, &a.project),
        (30, &b.project),
    ] {
        by_time.insert(secs, create(&s, project, at(secs)).await.id);
    }
    assert!(s
        .claim_predictions(at(100), LEASE, 0, &RunningCaps::NONE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(get(&s, &by_time[&10]).await.status, PredictionStatus::Pending);

    let first = s
        .claim_predictions(at(100), LEASE, 2, &RunningCaps::NONE)
        .await
        .unwrap();
    assert_eq!(
        claimed_ids(&first),
        vec![by_time[&10].clone(), by_time[&20].clone()]
    );
    for c in &first {
        let r = &c.record;
        assert_eq!(r.status, PredictionStatus::Starting);
        assert_eq!((r.attempts, r.progress, r.cancel_requested), (1, 0, false));
        assert_eq!(
            (r.started_at, r.completed_at, r.updated_at),
            (None, None, at(100))
        );
        assert_eq!(c.lease.until, at(160));
        assert_eq!(c.lease.token.len(), 32);
        assert!(c.lease.token.bytes().all(|x| x.is_ascii_hexdigit()));
        assert_eq!(
            &get(&s, &r.id).await,
            r,
            "the claimed record is what the store now holds"
        );
        assert_eq!(
            s.renew_lease(&r.id, &c.lease.token, at(161)).await.unwrap(),
            LeaseCheck::Held { cancel: false }
        );
    }

    let second = s
        .claim_predictions(at(101), LEASE, 2, &RunningCaps::NONE)
        .await
        .unwrap();
    assert_eq!(
        claimed_ids(&second),
        vec![by_time[&30].clone(), by_time[&40].clone()]
    );
    assert_ne!(
        second[0].lease.token, first[0].lease.token,
        "each claim has its own token"
    );
    assert_eq!(second[0].lease.until, at(161));
    let third = s
        .claim_predictions(at(102), LEASE, 10, &RunningCaps::NONE)
        .await
        .unwrap();
    assert_eq!(claimed_ids(&third), vec![by_time[&50].clone()]);
    assert!(s
        .claim_predictions(at(103), LEASE, 10, &RunningCaps::NONE)
        .await
        .unwrap()
        .is_empty());

    // All five were created in one retention window: one shred key, the one the row names.
    let shreds: BTreeSet<u64> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|c| c.shred)
        .collect();
    assert_eq!(shreds.len(), 1);
    let shred = *shreds.iter().next().unwrap();
    // Shred ids are random 64-bit values, stored bit for bit in a signed column.
    for raw in db.raw_column("predictions", "shred_id").await {
        assert_eq!(raw, Raw::Int(i64::from_be_bytes(shred.to_be_bytes())));
    }

    // A cancelled prediction is never claimed.
    let p = create(&s, &a.project, at(5)).await;
    assert!(matches!(
        s.cancel_prediction(&a.project, &p.id, at(104), RETENTION)
            .await
            .unwrap(),
        CancelOutcome::Cancelled(_)
    ));
    assert!(s
        .claim_predictions(at(105), LEASE, 10, &RunningCaps::NONE)
        .await
        .unwrap()
        .is_empty());
}

/// Under running caps an account's predictions are claimed only while fewer than its tier's ceiling run:
/// a batch stops at the ceiling, the excess waits (pending, in order), other accounts are claimed past
/// it, and a finished prediction frees a slot. Four claimers on separate handles at once never take an
/// account past its ceiling either.
pub async fn claims_respect_running_caps(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await; // free: ceiling 2 below
    let b = tenant(&s, "b@example.com").await; // pro: ceiling 3 below
    assert!(s.set_account_tier(&b.account, Tier::Pro).await.unwrap());
    let caps = RunningCaps([2, 3, 1, 1]);
    let mut a_ids = Vec::new();
    for i in 0..5 {
        a_ids.push(create(&s, &a.project, at(10 + i)).await.id);
    }
    let b_first = create(&s, &b.project, at(20)).await.id;

    let first = s.claim_predictions(at(100), LEASE, 10, &caps).await.unwrap();
    assert_eq!(
        claimed_ids(&first),
        vec![a_ids[0].clone(), a_ids[1].clone(), b_first.clone()],
        "a's third and later wait; b is claimed past them"
    );
    assert!(s
        .claim_predictions(at(101), LEASE, 10, &caps)
        .await
        .unwrap()
        .is_empty());
    for id in &a_ids[2..] {
        assert_eq!(get(&s, id).await.status, PredictionStatus::Pending);
    }

    // One of a's finishes: exactly one more of a's (the oldest waiting) is claimed.
    let done = &first[0];
    assert!(s
        .complete_prediction(
            &done.record.id,
            &done.lease.token,
            &Completion::Failed("x".into()),
            &RunMetrics::model_time(0),
            at(102),
            Duration::from_secs(300),
            None,
        )
        .await
        .unwrap());
    let next = s.claim_predictions(at(103), LEASE, 10, &caps).await.unwrap();
    assert_eq!(claimed_ids(&next), vec![a_ids[2].clone()]);

    // Without caps the rest go at once (the uncapped claim is unchanged).
    let rest = s
        .claim_predictions(at(104), LEASE, 10, &RunningCaps::NONE)
        .await
        .unwrap();
    assert_eq!(claimed_ids(&rest), vec![a_ids[3].clone(), a_ids[4].clone()]);

    // Concurrent capped claimers (separate pools, as separate nodes) never exceed b's ceiling of 3.
    let mut b_all = BTreeSet::new();
    for i in 0..12 {
        b_all.insert(create(&s, &b.project, at(200 + i)).await.id);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let h = db.open().await;
        tasks.spawn(async move {
            let got = h.claim_predictions(at(300 + w), LEASE, 3, &caps).await.unwrap();
            h.close().await;
            got.len()
        });
    }
    let mut claimed = 0;
    while let Some(n) = tasks.join_next().await {
        claimed += n.unwrap();
    }
    assert_eq!(
        claimed, 2,
        "b already runs one: two more fill its ceiling of 3, whichever node claims"
    );
}

/// Four claimers, each on its own handle (its own pool, as separate nodes would be), drain 50
/// predictions at once: none is claimed twice and together they claim all of them.
pub async fn concurrent_claimers_never_share_a_prediction(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let mut all = BTreeSet::new();
    for i in 0..50 {
        all.insert(create(&s, &a.project, Timestamp::from_micros(BASE + i)).await.id);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let h = db.open().await;
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = h
                    .claim_predictions(at(100 + w), LEASE, 3, &RunningCaps::NONE)
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got);
                tokio::task::yield_now().await;
            }
            h.close().await;
            mine
        });
    }
    let mut seen = BTreeSet::new();
    let mut claims = Vec::new();
    while let Some(r) = tasks.join_next().await {
        for c in r.unwrap() {
            assert!(seen.insert(c.record.id.clone()), "{} claimed twice", c.record.id);
            assert_eq!(c.record.attempts, 1);
            claims.push(c);
        }
    }
    assert_eq!(seen, all);
    assert!(s
        .claim_predictions(at(200), LEASE, 50, &RunningCaps::NONE)
        .await
        .unwrap()
        .is_empty());
    for c in &claims {
        // Every claimer still holds what it was given: no later claim took it over.
        assert_eq!(
            s.renew_lease(&c.record.id, &c.lease.token, at(150))
                .await
                .unwrap(),
            LeaseCheck::Held { cancel: false }
        );
        let r = get(&s, &c.record.id).await;
        assert_eq!((r.status, r.attempts), (PredictionStatus::Starting, 1));
    }
}

/// Progress moves a claimed prediction to `processing` (`started_at` set once); lease checks hold with
/// the right token and report `Lost` with any other (or for an unclaimed or unknown prediction).
pub async fn progress_and_lease_renewal(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let p = create(&s, &a.project, at(0)).await;
    let idle = create(&s, &a.project, at(1)).await;
    let c = claim_one(&s, at(10)).await;
    assert_eq!(c.record.id, p.id);
    let token = c.lease.token.clone();
    let wrong = "0".repeat(32);

    assert_eq!(
        s.report_progress(&p.id, &token, 30, at(11)).await.unwrap(),
        LeaseCheck::Held { cancel: false }
    );
    let r = get(&s, &p.id).await;
    assert_eq!(r.status, PredictionStatus::Processing);
    assert_eq!(
        (r.progress, r.started_at, r.updated_at),
        (30, Some(at(11)), at(11))
    );
    assert_eq!(
        s.report_progress(&p.id, &token, 60, at(12)).await.unwrap(),
        LeaseCheck::Held { cancel: false }
    );
    let r = get(&s, &p.id).await;
    assert_eq!(
        (r.progress, r.started_at, r.updated_at),
        (60, Some(at(11)), at(12)),
        "started_at is set once"
    );
    s.report_progress(&p.id, &token, 250, at(13)).await.unwrap();
    assert_eq!(get(&s, &p.id).await.progress, 100, "progress is capped at 100");

    // Someone else's token: nothing changes.
    let before = get(&s, &p.id).await;
    assert_eq!(
        s.report_progress(&p.id, &wrong, 5, at(14)).await.unwrap(),
        LeaseCheck::Lost
    );
    assert_eq!(
        s.renew_lease(&p.id, &wrong, at(500)).await.unwrap(),
        LeaseCheck::Lost
    );
    assert_eq!(s.renew_lease(&p.id, "", at(500)).await.unwrap(), LeaseCheck::Lost);
    assert_eq!(get(&s, &p.id).await, before);
    // Not claimed, or unknown.
    assert_eq!(
        s.renew_lease(&idle.id, &token, at(500)).await.unwrap(),
        LeaseCheck::Lost
    );
    assert_eq!(
        s.report_progress(&idle.id, &token, 5, at(14)).await.unwrap(),
        LeaseCheck::Lost
    );
    assert_eq!(
        get(&s, &idle.id).await,
        idle,
        "an unclaimed prediction is untouched"
    );
    let unknown = PredictionId::generate().unwrap();
    assert_eq!(
        s.renew_lease(&unknown, &token, at(500)).await.unwrap(),
        LeaseCheck::Lost
    );
    assert_eq!(
        s.report_progress(&unknown, &token, 5, at(14)).await.unwrap(),
        LeaseCheck::Lost
    );

    // Renewal moves the deadline: the original one (at(70)) passes without a reclaim.
    assert_eq!(
        s.renew_lease(&p.id, &token, at(200)).await.unwrap(),
        LeaseCheck::Held { cancel: false }
    );
    assert_eq!(
        s.reclaim_expired(at(100), 3, RETENTION).await.unwrap(),
        Reclaimed::default()
    );
    assert_eq!(
        s.report_progress(&p.id, &token, 90, at(101)).await.unwrap(),
        LeaseCheck::Held { cancel: false }
    );
    assert_eq!(
        s.reclaim_expired(at(201), 3, RETENTION).await.unwrap(),
        Reclaimed {
            requeued: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        s.renew_lease(&p.id, &token, at(300)).await.unwrap(),
        LeaseCheck::Lost
    );
}

/// Completion writes the terminal status with its sealed output or error and the usage record in one
/// transaction, only while the lease is held; a stale token or a second completion writes nothing.
pub async fn complete_prediction_outcomes(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let b = tenant(&s, "b@example.com").await;
    let ok = create(&s, &a.project, at(0)).await;
    let bad = create(&s, &a.project, at(1)).await;
    let stop = create(&s, &a.project, at(2)).await;
    let stale = create(&s, &a.project, at(3)).await;
    let text = create(&s, &b.project, at(4)).await;
    let claimed = s
        .claim_predictions(at(10), LEASE, 10, &RunningCaps::NONE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    let token = |id: &PredictionId| {
        claimed
            .iter()
            .find(|c| &c.record.id == id)
            .unwrap()
            .lease
            .token
            .clone()
    };

    // Succeeded, with files.
    s.report_progress(&ok.id, &token(&ok.id), 40, at(11))
        .await
        .unwrap();
    let files = StoredOutput::Files {
        files: vec![
            StoredFile {
                name: "output-0.png".into(),
                content_type: "image/png".into(),
                size: 1_234_567,
            },
            StoredFile {
                name: "output-1.png".into(),
                content_type: "image/png".into(),
                size: 0,
            },
        ],
    };
    let u_ok = usage_of(&ok, PredictionStatus::Succeeded, at(20), 2.0);
    assert!(s
        .complete_prediction(
            &ok.id,
            &token(&ok.id),
            &Completion::Succeeded(files.clone()),
            &RunMetrics {
                predict_time_us: 1_500_000,
                sandbox: Some(SandboxMetrics {
                    start_us: 4_321,
                    run_us: 1_490_000,
                    exit: "exited 0".into(),
                }),
            },
            at(20),
            RETENTION,
            Some(&u_ok),
        )
        .await
        .unwrap());
    let done = get(&s, &ok.id).await;
    let mut want = ok.clone();
    want.status = PredictionStatus::Succeeded;
    want.output = Some(files);
    want.progress = 100;
    want.attempts = 1;
    want.started_at = Some(at(11));
    want.completed_at = Some(at(20));
    want.updated_at = at(20);
    want.purge_at = Some(at(320));
    want.predict_time_us = Some(1_500_000);
    want.sandbox = Some(SandboxMetrics {
        start_us: 4_321,
        run_us: 1_490_000,
        exit: "exited 0".into(),
    });
    assert_eq!(done, want);
    // The lease is gone: the worker can write nothing more.
    assert_eq!(
        s.renew_lease(&ok.id, &token(&ok.id), at(30)).await.unwrap(),
        LeaseCheck::Lost
    );
    assert_eq!(
        s.report_progress(&ok.id, &token(&ok.id), 5, at(30))
            .await
            .unwrap(),
        LeaseCheck::Lost
    );
    let again = usage_of(&ok, PredictionStatus::Failed, at(31), 9.0);
    assert!(!s
        .complete_prediction(
            &ok.id,
            &token(&ok.id),
            &Completion::Failed("second".into()),
            &RunMetrics::model_time(1),
            at(31),
            RETENTION,
            Some(&again),
        )
        .await
        .unwrap());
    assert_eq!(get(&s, &ok.id).await, want, "a second completion changes nothing");

    // Failed without any progress report: started_at falls back to the completion time.
    let msg = "CUDA out of memory: tried to allocate 2.00 GiB — \"quoted\" ☃";
    let u_bad = usage_of(&bad, PredictionStatus::Failed, at(21), 0.0);
    assert!(s
        .complete_prediction(
            &bad.id,
            &token(&bad.id),
            &Completion::Failed(msg.into()),
            &RunMetrics::model_time(900),
            at(21),
            RETENTION,
            Some(&u_bad),
        )
        .await
        .unwrap());
    let r = get(&s, &bad.id).await;
    assert_eq!(r.status, PredictionStatus::Failed);
    assert_eq!((r.error.as_deref(), r.output.clone()), (Some(msg), None));
    assert_eq!(
        (r.progress, r.started_at, r.completed_at),
        (0, Some(at(21)), Some(at(21)))
    );
    assert_eq!((r.purge_at, r.predict_time_us), (Some(at(321)), Some(900)));
    assert_eq!(r.sandbox, None, "a run without a sandbox report records none");

    // Cancelled by its worker, no usage.
    assert!(s
        .complete_prediction(
            &stop.id,
            &token(&stop.id),
            &Completion::Cancelled,
            &RunMetrics::model_time(0),
            at(22),
            RETENTION,
            None
        )
        .await
        .unwrap());
    let r = get(&s, &stop.id).await;
    assert_eq!(r.status, PredictionStatus::Cancelled);
    assert_eq!((r.output, r.error, r.purge_at), (None, None, Some(at(322))));

    // A stale token writes nothing: no status, no output, no usage.
    let u_stale = usage_of(&stale, PredictionStatus::Succeeded, at(23), 1.0);
    let before = get(&s, &stale.id).await;
    assert!(!s
        .complete_prediction(
            &stale.id,
            &"f".repeat(32),
            &Completion::Succeeded(StoredOutput::Text { text: "x".into() }),
            &RunMetrics::model_time(1),
            at(23),
            RETENTION,
            Some(&u_stale),
        )
        .await
        .unwrap());
    assert_eq!(get(&s, &stale.id).await, before);
    assert_eq!(before.status, PredictionStatus::Starting);
    assert!(!s
        .complete_prediction(
            &PredictionId::generate().unwrap(),
            &token(&stale.id),
            &Completion::Cancelled,
            &RunMetrics::model_time(1),
            at(23),
            RETENTION,
            None,
        )
        .await
        .unwrap());

    // Text output, another account.
    let out = StoredOutput::Text {
        text: "hello wörld\n{\"not\": \"json\"}".into(),
    };
    let u_text = usage_of(&text, PredictionStatus::Succeeded, at(24), 27.0);
    assert!(s
        .complete_prediction(
            &text.id,
            &token(&text.id),
            &Completion::Succeeded(out.clone()),
            &RunMetrics::model_time(7),
            at(24),
            RETENTION,
            Some(&u_text),
        )
        .await
        .unwrap());
    assert_eq!(get(&s, &text.id).await.output, Some(out));

    // Usage: the account's own records, newest first, `since` inclusive, `limit` respected.
    assert_eq!(
        s.usage(&a.account, at(0), 100).await.unwrap(),
        vec![u_bad.clone(), u_ok.clone()]
    );
    assert_eq!(
        s.usage(&a.account, at(21), 100).await.unwrap(),
        vec![u_bad.clone()]
    );
    assert!(s.usage(&a.account, at(22), 100).await.unwrap().is_empty());
    assert_eq!(s.usage(&a.account, at(0), 1).await.unwrap(), vec![u_bad]);
    assert!(s.usage(&a.account, at(0), 0).await.unwrap().is_empty());
    assert_eq!(s.usage(&b.account, at(0), 100).await.unwrap(), vec![u_text]);
    assert!(s
        .usage(&AccountId::generate().unwrap(), at(0), 100)
        .await
        .unwrap()
        .is_empty());

    // The stale prediction's real owner can still finish it.
    assert!(s
        .complete_prediction(
            &stale.id,
            &token(&stale.id),
            &Completion::Cancelled,
            &RunMetrics::model_time(1),
            at(25),
            RETENTION,
            None
        )
        .await
        .unwrap());
    assert_eq!(get(&s, &stale.id).await.status, PredictionStatus::Cancelled);
}

/// Cancel: a pending prediction is cancelled at once; a running one is asked to stop (its worker sees
/// it on the next check-in); a finished one is left alone; another project's is not found.
pub async fn cancel_prediction_outcomes(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let sibling = another_project(&s, &a.account).await;
    let b = tenant(&s, "b@example.com").await;
    let running = create(&s, &a.project, at(0)).await;
    let pending = create(&s, &a.project, at(1)).await;
    let c = claim_one(&s, at(10)).await;
    assert_eq!(c.record.id, running.id);

    let CancelOutcome::Cancelled(r) = s
        .cancel_prediction(&a.project, &pending.id, at(20), RETENTION)
        .await
        .unwrap()
    else {
        panic!("a pending prediction is cancelled at once")
    };
    let mut want = pending.clone();
    want.status = PredictionStatus::Cancelled;
    want.cancel_requested = true;
    want.completed_at = Some(at(20));
    want.updated_at = at(20);
    want.purge_at = Some(at(320));
    assert_eq!(r, want);
    assert_eq!(get(&s, &pending.id).await, want);
    assert!(s
        .claim_predictions(at(21), LEASE, 10, &RunningCaps::NONE)
        .await
        .unwrap()
        .is_empty());

    let CancelOutcome::Requested(r) = s
        .cancel_prediction(&a.project, &running.id, at(30), RETENTION)
        .await
        .unwrap()
    else {
        panic!("a running prediction is asked to stop")
    };
    assert_eq!(r.status, PredictionStatus::Starting);
    assert!(r.cancel_requested);
    assert_eq!((r.updated_at, r.completed_at, r.purge_at), (at(30), None, None));
    assert_eq!(
        s.renew_lease(&running.id, &c.lease.token, at(100)).await.unwrap(),
        LeaseCheck::Held { cancel: true }
    );
    assert_eq!(
        s.report_progress(&running.id, &c.lease.token, 50, at(31))
            .await
            .unwrap(),
        LeaseCheck::Held { cancel: true }
    );
    assert!(matches!(
        s.cancel_prediction(&a.project, &running.id, at(32), RETENTION)
            .await
            .unwrap(),
        CancelOutcome::Requested(_)
    ));
    assert!(s
        .complete_prediction(
            &running.id,
            &c.lease.token,
            &Completion::Cancelled,
            &RunMetrics::model_time(5),
            at(33),
            RETENTION,
            None
        )
        .await
        .unwrap());
    let done = get(&s, &running.id).await;
    assert_eq!(done.status, PredictionStatus::Cancelled);

    // Terminal: nothing changes.
    for (id, rec) in [(&pending.id, want), (&running.id, done)] {
        assert_eq!(
            s.cancel_prediction(&a.project, id, at(40), RETENTION)
                .await
                .unwrap(),
            CancelOutcome::AlreadyTerminal(rec.clone())
        );
        assert_eq!(get(&s, id).await, rec);
    }

    // Unknown, or another project's (same account or not): not found, and untouched.
    let theirs = create(&s, &b.project, at(2)).await;
    let next_door = create(&s, &sibling, at(3)).await;
    for (project, id) in [
        (&a.project, PredictionId::generate().unwrap()),
        (&a.project, theirs.id.clone()),
        (&a.project, next_door.id.clone()),
        (&b.project, next_door.id.clone()),
    ] {
        assert_eq!(
            s.cancel_prediction(project, &id, at(50), RETENTION)
                .await
                .unwrap(),
            CancelOutcome::NotFound
        );
    }
    assert_eq!(get(&s, &theirs.id).await, theirs);
    assert_eq!(get(&s, &next_door.id).await, next_door);
}

/// Expired leases (their worker died): requeued keeping the attempt count, failed once `max_attempts`
/// runs were started, cancelled if a cancel was asked for. Unexpired leases are untouched, and the old
/// worker's token no longer holds anything.
pub async fn reclaim_expired_leases(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let flaky = create(&s, &a.project, at(0)).await;
    let asked = create(&s, &a.project, at(1)).await;
    let alive = create(&s, &a.project, at(2)).await;
    let c1 = claim_one(&s, at(10)).await;
    let c2 = claim_one(&s, at(10)).await;
    let mut c3 = s
        .claim_predictions(at(10), Duration::from_secs(600), 1, &RunningCaps::NONE)
        .await
        .unwrap();
    let c3 = c3.remove(0);
    assert_eq!(
        (&c1.record.id, &c2.record.id, &c3.record.id),
        (&flaky.id, &asked.id, &alive.id)
    );
    s.report_progress(&flaky.id, &c1.lease.token, 10, at(15))
        .await
        .unwrap();
    assert!(matches!(
        s.cancel_prediction(&a.project, &asked.id, at(20), RETENTION)
            .await
            .unwrap(),
        CancelOutcome::Requested(_)
    ));

    // At the deadline itself the lease still holds.
    assert_eq!(
        s.reclaim_expired(at(70), 2, RETENTION).await.unwrap(),
        Reclaimed::default()
    );
    assert_eq!(
        s.reclaim_expired(at(71), 2, RETENTION).await.unwrap(),
        Reclaimed {
            requeued: 1,
            failed: 0,
            cancelled: 1
        }
    );
    let r = get(&s, &flaky.id).await;
    assert_eq!(r.status, PredictionStatus::Pending);
    assert_eq!((r.attempts, r.updated_at, r.completed_at), (1, at(71), None));
    assert_eq!(r.input, flaky.input);
    assert_eq!(
        s.renew_lease(&flaky.id, &c1.lease.token, at(500)).await.unwrap(),
        LeaseCheck::Lost
    );
    assert_eq!(
        s.report_progress(&flaky.id, &c1.lease.token, 20, at(72))
            .await
            .unwrap(),
        LeaseCheck::Lost
    );
    assert!(!s
        .complete_prediction(
            &flaky.id,
            &c1.lease.token,
            &Completion::Succeeded(StoredOutput::Text { text: "late".into() }),
            &RunMetrics::model_time(1),
            at(72),
            RETENTION,
            None,
        )
        .await
        .unwrap());
    assert_eq!(get(&s, &flaky.id).await, r, "the old worker wrote nothing");

    let r = get(&s, &asked.id).await;
    assert_eq!(r.status, PredictionStatus::Cancelled);
    assert_eq!(
        (r.error, r.completed_at, r.purge_at),
        (None, Some(at(71)), Some(at(371)))
    );
    assert_eq!(
        s.renew_lease(&asked.id, &c2.lease.token, at(500)).await.unwrap(),
        LeaseCheck::Lost
    );

    // Requeued: it runs again, a second attempt under a new token.
    let again = claim_one(&s, at(80)).await;
    assert_eq!((&again.record.id, again.record.attempts), (&flaky.id, 2));
    assert_ne!(again.lease.token, c1.lease.token);
    assert_eq!(
        s.reclaim_expired(at(140), 2, RETENTION).await.unwrap(),
        Reclaimed::default()
    );
    // Its second lease expires too: that was the last allowed attempt.
    assert_eq!(
        s.reclaim_expired(at(141), 2, RETENTION).await.unwrap(),
        Reclaimed {
            requeued: 0,
            failed: 1,
            cancelled: 0
        }
    );
    let r = get(&s, &flaky.id).await;
    assert_eq!(r.status, PredictionStatus::Failed);
    let error = r.error.clone().unwrap();
    assert!(error.contains("interrupted 2 times"), "{error}");
    assert_eq!(
        (r.attempts, r.completed_at, r.purge_at),
        (2, Some(at(141)), Some(at(441)))
    );
    assert_eq!(r.input, flaky.input, "the data stays until the purge");
    assert_eq!(
        s.renew_lease(&flaky.id, &again.lease.token, at(500))
            .await
            .unwrap(),
        LeaseCheck::Lost
    );

    // The long lease was never touched, and still holds.
    let r = get(&s, &alive.id).await;
    assert_eq!(
        (r.status, r.attempts, r.updated_at),
        (PredictionStatus::Starting, 1, at(10))
    );
    assert_eq!(
        s.renew_lease(&alive.id, &c3.lease.token, at(610)).await.unwrap(),
        LeaseCheck::Held { cancel: false }
    );
    assert_eq!(
        s.reclaim_expired(at(611), 3, RETENTION).await.unwrap(),
        Reclaimed {
            requeued: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        s.reclaim_expired(at(612), 3, RETENTION).await.unwrap(),
        Reclaimed::default(),
        "a second pass finds nothing"
    );
    assert_eq!(get(&s, &alive.id).await.status, PredictionStatus::Pending);
}

/// `due_purges` lists what passed its purge time; `purge_prediction` destroys the sealed data (the
/// columns are NULL in the database), keeps the metadata, cancels a running prediction (its worker's
/// token is lost), and is idempotent.
pub async fn retention_purges_due_predictions(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let mut n = new_prediction(&a.project, at(0));
    n.webhook = Some(WebhookSpec {
        url: "https://hooks.example.com/x".into(),
        events: vec![],
    });
    let done = s.create_prediction(&n, WINDOW).await.unwrap();
    let late = create(&s, &a.project, at(1)).await;
    let running = create(&s, &a.project, at(2)).await;
    let queued = create(&s, &a.project, at(3)).await;
    let cancelled = create(&s, &a.project, at(4)).await;
    let claimed = s
        .claim_predictions(at(10), LEASE, 3, &RunningCaps::NONE)
        .await
        .unwrap();
    assert_eq!(
        claimed_ids(&claimed),
        vec![done.id.clone(), late.id.clone(), running.id.clone()]
    );
    let token = |i: usize| claimed[i].lease.token.clone();
    assert!(s
        .complete_prediction(
            &done.id,
            &token(0),
            &Completion::Succeeded(StoredOutput::Text { text: "out".into() }),
            &RunMetrics::model_time(5),
            at(20),
            RETENTION,
            None,
        )
        .await
        .unwrap());
    assert!(s
        .complete_prediction(
            &late.id,
            &token(1),
            &Completion::Failed("boom".into()),
            &RunMetrics::model_time(5),
            at(50),
            RETENTION,
            None
        )
        .await
        .unwrap());
    s.cancel_prediction(&a.project, &cancelled.id, at(30), RETENTION)
        .await
        .unwrap();

    let due = |id: &PredictionId| DuePurge {
        id: id.clone(),
        account: a.account.clone(),
    };
    assert!(s.due_purges(at(319), 10).await.unwrap().is_empty());
    assert_eq!(s.due_purges(at(320), 10).await.unwrap(), vec![due(&done.id)]);
    assert_eq!(
        s.due_purges(at(10_000), 10).await.unwrap(),
        vec![due(&done.id), due(&cancelled.id), due(&late.id)],
        "soonest first; a running or queued prediction is never due"
    );
    assert_eq!(
        s.due_purges(at(10_000), 2).await.unwrap(),
        vec![due(&done.id), due(&cancelled.id)]
    );

    let before = get(&s, &done.id).await;
    for col in ["input", "output", "webhook"] {
        assert!(matches!(raw_of(&db, &done.id, col).await, Raw::Bytes(_)), "{col}");
    }
    let purged = s.purge_prediction(&done.id, at(400)).await.unwrap().unwrap();
    let mut want = before.clone();
    want.input = None;
    want.output = None;
    want.webhook = None;
    want.data_removed = true;
    want.updated_at = at(400);
    assert_eq!(purged, want, "only the data goes; status, times and metrics stay");
    assert_eq!(get(&s, &done.id).await, want);
    for col in ["input", "output", "error", "webhook"] {
        assert_eq!(raw_of(&db, &done.id, col).await, Raw::Null, "{col}");
    }
    assert_eq!(raw_of(&db, &done.id, "data_removed").await, Raw::Int(1));
    assert_eq!(
        s.due_purges(at(10_000), 10).await.unwrap(),
        vec![due(&cancelled.id), due(&late.id)]
    );
    // Idempotent.
    assert_eq!(
        s.purge_prediction(&done.id, at(500)).await.unwrap(),
        Some(want.clone())
    );
    assert_eq!(get(&s, &done.id).await, want);

    // A failed one loses its error too.
    let r = s.purge_prediction(&late.id, at(401)).await.unwrap().unwrap();
    assert_eq!(
        (r.error, r.input, r.status),
        (None, None, PredictionStatus::Failed)
    );
    assert_eq!(raw_of(&db, &late.id, "error").await, Raw::Null);

    // A running prediction is cancelled on the way; its worker has lost the lease and writes nothing.
    let r = s.purge_prediction(&running.id, at(60)).await.unwrap().unwrap();
    assert_eq!(r.status, PredictionStatus::Cancelled);
    assert!(r.cancel_requested && r.data_removed);
    assert_eq!(
        (r.input, r.completed_at, r.purge_at),
        (None, Some(at(60)), Some(at(60)))
    );
    assert_eq!(
        s.renew_lease(&running.id, &token(2), at(100)).await.unwrap(),
        LeaseCheck::Lost
    );
    assert_eq!(
        s.report_progress(&running.id, &token(2), 50, at(61))
            .await
            .unwrap(),
        LeaseCheck::Lost
    );
    assert!(!s
        .complete_prediction(
            &running.id,
            &token(2),
            &Completion::Succeeded(StoredOutput::Text {
                text: "too late".into()
            }),
            &RunMetrics::model_time(5),
            at(62),
            RETENTION,
            None,
        )
        .await
        .unwrap());
    let r = get(&s, &running.id).await;
    assert_eq!((r.status, r.output), (PredictionStatus::Cancelled, None));
    assert_eq!(raw_of(&db, &running.id, "output").await, Raw::Null);

    // A queued one is cancelled too and never claimed.
    let r = s.purge_prediction(&queued.id, at(63)).await.unwrap().unwrap();
    assert_eq!((r.status, r.data_removed), (PredictionStatus::Cancelled, true));
    assert!(s
        .claim_predictions(at(64), LEASE, 10, &RunningCaps::NONE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.due_purges(at(10_000), 10).await.unwrap(),
        vec![due(&cancelled.id)],
        "purged predictions are never due again"
    );
    assert_eq!(
        get(&s, &cancelled.id).await.input,
        cancelled.input,
        "others keep their data"
    );
    assert_eq!(
        s.purge_prediction(&PredictionId::generate().unwrap(), at(65))
            .await
            .unwrap(),
        None
    );
}

/// Once every prediction of a retention window is purged and the window (plus its grace) is over, its
/// shred key is destroyed: a copy of a sealed value taken before (a backup) cannot be opened any more.
/// Windows with unpurged predictions, and other windows, keep working.
pub async fn retire_windows_shreds_purged_windows(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let mut n = new_prediction(&a.project, at(0));
    n.webhook = Some(WebhookSpec {
        url: "https://hooks.example.com/w1".into(),
        events: vec![],
    });
    let a1 = s.create_prediction(&n, WINDOW).await.unwrap();
    let a2 = create(&s, &a.project, at(299)).await; // window 1: [0, 300)
    let b1 = create(&s, &a.project, at(300)).await; // window 2: [300, 600)
    let c1 = create(&s, &a.project, at(650)).await; // window 3: [600, 900)
    let backup_input = db.raw_get("predictions", "input", a1.id.as_str()).await;
    let backup_webhook = db.raw_get("predictions", "webhook", a1.id.as_str()).await;
    let backup_b1 = db.raw_get("predictions", "input", b1.id.as_str()).await;
    let cipher = db.sealer().cipher();
    let aad = |id: &PredictionId, col: &str| Aad::field("predictions", id.as_str(), col, a.account.as_str());
    assert!(cipher.open(&backup_input, &aad(&a1.id, "input")).is_ok());

    assert_eq!(
        s.retire_windows(at(100_000)).await.unwrap(),
        0,
        "nothing is purged yet"
    );
    s.purge_prediction(&a1.id, at(1000)).await.unwrap();
    assert_eq!(
        s.retire_windows(at(100_000)).await.unwrap(),
        0,
        "window 1 still has an unpurged prediction"
    );
    assert!(cipher.open(&backup_input, &aad(&a1.id, "input")).is_ok());
    s.purge_prediction(&a2.id, at(1000)).await.unwrap();
    // Window 1 ends at 300; its key survives until the grace after that is over.
    assert_eq!(s.retire_windows(at(300 + GRACE_SECS)).await.unwrap(), 0);
    assert!(cipher.open(&backup_input, &aad(&a1.id, "input")).is_ok());
    let just_after = Timestamp::from_micros(at(300 + GRACE_SECS).as_micros() + 1);
    assert_eq!(s.retire_windows(just_after).await.unwrap(), 1);
    assert_eq!(s.retire_windows(at(100_000)).await.unwrap(), 0, "idempotent");

    // The backup no longer opens, by any route: the key it needs is gone.
    for (backup, col) in [(&backup_input, "input"), (&backup_webhook, "webhook")] {
        let r = cipher.open(backup, &aad(&a1.id, col));
        assert!(matches!(r, Err(CryptoError::Shredded(_))), "{col}: {r:?}");
    }
    db.raw_set("predictions", "input", a1.id.as_str(), &backup_input)
        .await;
    let r = s.find_prediction(&a1.id).await;
    assert!(is_shredded(&r), "a restored backup cannot be read: {r:?}");
    let r = s.prediction(&a.project, &a1.id).await;
    assert!(is_shredded(&r), "{r:?}");

    // Other windows are untouched.
    assert_eq!(get(&s, &b1.id).await.input, b1.input);
    assert_eq!(get(&s, &c1.id).await.input, c1.input);
    assert!(cipher.open(&backup_b1, &aad(&b1.id, "input")).is_ok());

    // Window 2 goes the same way once purged; window 3 stays while its prediction is unpurged.
    s.purge_prediction(&b1.id, at(1000)).await.unwrap();
    assert_eq!(s.retire_windows(at(100_000)).await.unwrap(), 1);
    let r = cipher.open(&backup_b1, &aad(&b1.id, "input"));
    assert!(matches!(r, Err(CryptoError::Shredded(_))), "{r:?}");
    assert_eq!(get(&s, &c1.id).await.input, c1.input);
    assert_eq!(s.retire_windows(at(1_000_000)).await.unwrap(), 0);

    // A late write into a retired window's time range gets a fresh key and reads back.
    let late = create(&s, &a.project, at(5)).await;
    assert_eq!(get(&s, &late.id).await, late);
    let claimed = claim_one(&s, at(1_000_001)).await;
    assert_eq!(claimed.record.id, late.id);
    assert_eq!(claimed.record.input, late.input);
}

/// A sealed value tampered with, swapped between rows or truncated makes reads fail closed with an
/// error naming the place (never the value); other predictions keep working.
pub async fn tampered_prediction_values_fail_closed(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let mut n = new_prediction(&a.project, at(0));
    n.input = json!({"prompt": "top secret plans"});
    let p = s.create_prediction(&n, WINDOW).await.unwrap();
    let q = create(&s, &a.project, at(1)).await;
    let original = db.raw_get("predictions", "input", p.id.as_str()).await;

    let check_fails = |what: String| {
        let s = s.clone();
        let (project, id, q) = (a.project.clone(), p.id.clone(), q.clone());
        async move {
            let err = s.prediction(&project, &id).await.unwrap_err();
            let shown = err.to_string();
            assert!(matches!(err, StoreError::Sealed { .. }), "{what}: {err:?}");
            assert!(
                shown.contains("predictions.input") && !shown.contains("top secret"),
                "{what}: {shown}"
            );
            assert!(s.find_prediction(&id).await.is_err(), "{what}");
            assert!(
                s.list_predictions(&project, &ListFilter::default(), 0, 10)
                    .await
                    .is_err(),
                "{what}: a page holding it fails closed"
            );
            assert_eq!(get(&s, &q.id).await, q, "{what}: other rows still read");
        }
    };
    for pos in [0, 2, 6, 12, 20, 40, original.len() / 2, original.len() - 1] {
        let mut bad = original.clone();
        bad[pos] ^= 0x04;
        db.raw_set("predictions", "input", p.id.as_str(), &bad).await;
        check_fails(format!("byte {pos}")).await;
    }
    let theirs = db.raw_get("predictions", "input", q.id.as_str()).await;
    db.raw_set("predictions", "input", p.id.as_str(), &theirs).await;
    check_fails("swapped".into()).await;
    for cut in [original.len() / 2, 3, 0] {
        db.raw_set("predictions", "input", p.id.as_str(), &original[..cut])
            .await;
        check_fails(format!("truncated to {cut}")).await;
    }
    // Restoring the bytes restores the record.
    db.raw_set("predictions", "input", p.id.as_str(), &original).await;
    assert_eq!(get(&s, &p.id).await, p);
    // The value moved to another column of its own row does not open there either.
    db.raw_set("predictions", "output", p.id.as_str(), &original)
        .await;
    let err = s.find_prediction(&p.id).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Sealed { place, .. } if place.starts_with("predictions.output")),
        "{err:?}"
    );
    assert_eq!(get(&s, &q.id).await, q);
}

pub(crate) fn audit(action: &str, target: &str, at: Timestamp) -> NewAuditEntry {
    NewAuditEntry::new(at, "operator", action, target, "")
}

/// Erasing an account removes its predictions and usage records; its usage records (sealed under the
/// account's shred key) cannot be read from a backup; another account is untouched.
pub async fn erase_removes_predictions_and_usage(db: Db) {
    let s = db.migrated().await;
    let gone = tenant(&s, "gone@example.com").await;
    let keep = tenant(&s, "keep@example.com").await;
    let p = create(&s, &gone.project, at(0)).await;
    let k = create(&s, &keep.project, at(1)).await;
    let pending = create(&s, &gone.project, at(2)).await;
    let claimed = s
        .claim_predictions(at(10), LEASE, 2, &RunningCaps::NONE)
        .await
        .unwrap();
    assert_eq!(claimed_ids(&claimed), vec![p.id.clone(), k.id.clone()]);
    for (c, who) in claimed.iter().zip([&gone.account, &keep.account]) {
        let u = usage_of(&c.record, PredictionStatus::Succeeded, at(20), 1.0);
        assert!(s
            .complete_prediction(
                &c.record.id,
                &c.lease.token,
                &Completion::Succeeded(StoredOutput::Text { text: "t".into() }),
                &RunMetrics::model_time(1),
                at(20),
                RETENTION,
                Some(&u),
            )
            .await
            .unwrap());
        assert_eq!(s.usage(who, at(0), 10).await.unwrap(), vec![u]);
    }
    let backup = db.raw_column("usage_records", "record").await;
    assert_eq!(backup.len(), 2);

    assert!(s
        .erase_account(
            &gone.account,
            &audit("account.erase", gone.account.as_str(), at(30))
        )
        .await
        .unwrap());
    assert_eq!(s.find_prediction(&p.id).await.unwrap(), None);
    assert_eq!(s.find_prediction(&pending.id).await.unwrap(), None);
    assert!(s.usage(&gone.account, at(0), 10).await.unwrap().is_empty());
    assert!(s
        .claim_predictions(at(31), LEASE, 10, &RunningCaps::NONE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.due_purges(at(10_000), 10).await.unwrap(),
        vec![DuePurge {
            id: k.id.clone(),
            account: keep.account.clone()
        }]
    );
    assert_eq!(s.usage(&keep.account, at(0), 10).await.unwrap().len(), 1);
    assert!(get(&s, &k.id).await.output.is_some());

    let cipher = db.sealer().cipher();
    let place =
        |id: &PredictionId, acc: &AccountId| Aad::field("usage_records", id.as_str(), "record", acc.as_str());
    let mut opened = 0;
    for value in backup {
        let Raw::Bytes(b) = value else {
            panic!("not sealed")
        };
        if cipher.open(&b, &place(&k.id, &keep.account)).is_ok() {
            opened += 1;
        } else {
            assert!(matches!(
                cipher.open(&b, &place(&p.id, &gone.account)),
                Err(CryptoError::Shredded(_))
            ));
        }
    }
    assert_eq!(opened, 1);
}

async fn sealed_count(s: &DynStore, version: u32) -> u64 {
    let mut n = 0;
    for c in skygate_store::SEALED_COLUMNS {
        n += s
            .sealed_versions(c)
            .await
            .unwrap()
            .get(&version)
            .copied()
            .unwrap_or(0);
    }
    n
}

async fn rewrap_everything(s: &DynStore) -> u64 {
    let mut moved = 0;
    for c in skygate_store::SEALED_COLUMNS {
        let mut after = String::new();
        loop {
            let b = s.rewrap_batch(c, &after, 2).await.unwrap();
            assert_eq!(b.failed, 0, "{c:?}");
            moved += b.moved;
            match b.last_key {
                Some(k) => after = k,
                None => break,
            }
        }
    }
    moved
}

/// Rotation and rewrap cover the prediction and usage columns too, skipping NULLs (data not produced
/// yet, or purged); after it the old version can be retired and everything still reads back.
pub async fn rewrap_covers_prediction_columns(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let ok = create(&s, &a.project, at(0)).await;
    let failed = create(&s, &a.project, at(1)).await;
    let purged = create(&s, &a.project, at(2)).await;
    let mut n = new_prediction(&a.project, at(3));
    n.webhook = Some(WebhookSpec {
        url: "https://hooks.example.com/r".into(),
        events: vec!["completed".into()],
    });
    let pending = s.create_prediction(&n, WINDOW).await.unwrap();
    let claimed = s
        .claim_predictions(at(10), LEASE, 3, &RunningCaps::NONE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let outcomes = [
        Completion::Succeeded(StoredOutput::Text { text: "o".into() }),
        Completion::Failed("e".into()),
        Completion::Cancelled,
    ];
    for (c, how) in claimed.iter().zip(&outcomes) {
        let u = usage_of(&c.record, how.status(), at(20), 1.0);
        let usage = (how != &Completion::Cancelled).then_some(&u);
        assert!(s
            .complete_prediction(
                &c.record.id,
                &c.lease.token,
                how,
                &RunMetrics::model_time(1),
                at(20),
                RETENTION,
                usage
            )
            .await
            .unwrap());
    }
    s.purge_prediction(&purged.id, at(30)).await.unwrap();
    let records = [&ok, &failed, &purged, &pending];
    let mut before = Vec::new();
    for r in records {
        before.push(get(&s, &r.id).await);
    }
    let usage_before = s.usage(&a.account, at(0), 10).await.unwrap();
    assert_eq!(usage_before.len(), 2);

    // accounts.email, projects.name, 3 inputs, 1 output, 1 error, 1 webhook and its target, 2 usage
    // records.
    assert_eq!(sealed_count(&s, 1).await, 11);
    let input_col = skygate_store::SEALED_COLUMNS
        .iter()
        .find(|c| (c.table, c.column) == ("predictions", "input"))
        .unwrap();
    assert_eq!(
        s.sealed_versions(input_col).await.unwrap(),
        BTreeMap::from([(1, 3)])
    );
    let provider = db.sealer().cipher().provider().clone();
    assert_eq!(provider.rotate().unwrap(), 2);
    assert_eq!(rewrap_everything(&s).await, 11);
    assert_eq!(sealed_count(&s, 1).await, 0);
    assert_eq!(sealed_count(&s, 2).await, 11);
    assert_eq!(rewrap_everything(&s).await, 0, "rewrap is idempotent");
    provider.retire(1).unwrap();
    for (r, b) in records.iter().zip(&before) {
        assert_eq!(&get(&s, &r.id).await, b);
    }
    assert_eq!(s.usage(&a.account, at(0), 10).await.unwrap(), usage_before);
    assert_eq!(
        raw_of(&db, &purged.id, "input").await,
        Raw::Null,
        "rewrap does not bring purged data back"
    );
}

/// Predictions with marker strings in every sealed field, in every state, for
/// `sensitive_columns_hold_no_plaintext`. Returns the markers.
pub async fn sensitive_prediction_workload(s: &DynStore, project: &ProjectId, i: u8) -> Vec<String> {
    let base = 10_000 * i64::from(i);
    let marker = |what: &str| format!("{what}-marker-zebra-{i}");
    let mut markers = Vec::new();
    let mut ids = Vec::new();
    for (j, what) in ["succeeds", "fails", "pending", "purged"].into_iter().enumerate() {
        // The ones left queued are created late, so a later workload's claim does not pick them.
        let later = if j < 2 { 0 } else { 1_000_000 };
        let mut n = new_prediction(project, at(later + base + j as i64));
        let input = marker(&format!("input-{what}"));
        let hook = marker(&format!("hook-{what}"));
        n.input = json!({"prompt": input});
        n.webhook = Some(WebhookSpec {
            url: format!("https://{hook}.example.net/{hook}"),
            events: vec![],
        });
        markers.push(input);
        markers.push(hook);
        s.create_prediction(&n, WINDOW).await.unwrap();
        ids.push(n.id);
    }
    let mut claimed = s
        .claim_predictions(at(base + 10), LEASE, 2, &RunningCaps::NONE)
        .await
        .unwrap();
    claimed.sort_by_key(|c| c.record.created_at);
    assert_eq!(claimed_ids(&claimed), ids[..2].to_vec());
    let output = marker("output");
    let error = marker("error");
    let unit = marker("unit");
    for (c, how) in claimed.iter().zip([
        Completion::Succeeded(StoredOutput::Text { text: output.clone() }),
        Completion::Failed(error.clone()),
    ]) {
        let mut u = usage_of(&c.record, how.status(), at(base + 20), 3.0);
        u.unit = unit.clone();
        assert!(s
            .complete_prediction(
                &c.record.id,
                &c.lease.token,
                &how,
                &RunMetrics::model_time(1),
                at(base + 20),
                RETENTION,
                Some(&u)
            )
            .await
            .unwrap());
    }
    markers.extend([output, error, unit]);
    s.purge_prediction(&ids[3], at(base + 30)).await.unwrap();
    markers
}

/// A node stopping gracefully gives its running predictions back: pending again, the attempt not
/// counted, its token dead; one with a cancel asked for is not given back (it expires into `cancelled`).
pub async fn release_lease_requeues_without_counting(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "a@example.com").await;
    let p = create(&s, &a.project, at(0)).await;
    let q = create(&s, &a.project, at(1)).await;
    let c = claim_one(&s, at(10)).await;
    assert_eq!(c.record.id, p.id);
    s.report_progress(&p.id, &c.lease.token, 40, at(11))
        .await
        .unwrap();
    assert!(!s.release_lease(&p.id, "wrong", at(12)).await.unwrap());
    assert!(s.release_lease(&p.id, &c.lease.token, at(12)).await.unwrap());
    let r = get(&s, &p.id).await;
    assert_eq!(
        (r.status, r.attempts, r.progress),
        (PredictionStatus::Pending, 0, 0)
    );
    assert_eq!(
        s.renew_lease(&p.id, &c.lease.token, at(100)).await.unwrap(),
        LeaseCheck::Lost
    );
    assert!(
        !s.release_lease(&p.id, &c.lease.token, at(13)).await.unwrap(),
        "once"
    );
    // It is claimed again first (oldest), as attempt 1.
    let again = claim_one(&s, at(14)).await;
    assert_eq!(
        (again.record.id.clone(), again.record.attempts),
        (p.id.clone(), 1)
    );
    // A cancel asked for: not released.
    let cq = claim_one(&s, at(15)).await;
    assert_eq!(cq.record.id, q.id);
    s.cancel_prediction(&a.project, &q.id, at(16), std::time::Duration::from_secs(300))
        .await
        .unwrap();
    assert!(!s.release_lease(&q.id, &cq.lease.token, at(17)).await.unwrap());
    assert_eq!(get(&s, &q.id).await.status, PredictionStatus::Starting);
}

/// A run that left no prediction (the OpenAI-compatible routes) records its usage, tokens included,
/// sealed under the account's key (the model name never in plaintext), listed with the account's
/// other usage, once per id, never for an unknown account, and gone when the account is erased.
pub async fn usage_without_a_prediction_is_sealed_and_erased(db: Db) {
    let s = db.migrated().await;
    let a = tenant(&s, "chat@example.com").await;
    let record = UsageRecord {
        prediction: PredictionId::generate().unwrap(),
        project: a.project.clone(),
        model: "secret-model-name-xyz".into(),
        mode: Mode::Live,
        status: PredictionStatus::Succeeded,
        predict_time: 0.5,
        units: 57.0,
        unit: "tokens".into(),
        at: at(5),
        tokens: Some(TokenUsage {
            prompt: 40,
            completion: 17,
        }),
    };
    assert!(s.record_usage(&a.account, &record, at(5)).await.unwrap());
    // The same id again writes nothing new.
    assert!(!s.record_usage(&a.account, &record, at(6)).await.unwrap());
    assert_eq!(
        s.usage(&a.account, at(0), 10).await.unwrap(),
        vec![record.clone()]
    );
    for raw in db.raw_column("usage_records", "record").await {
        let Raw::Bytes(b) = raw else {
            panic!("sealed records are bytes: {raw:?}")
        };
        assert!(!String::from_utf8_lossy(&b).contains("secret-model-name-xyz"));
    }
    let stranger = AccountId::generate().unwrap();
    let other = UsageRecord {
        prediction: PredictionId::generate().unwrap(),
        ..record.clone()
    };
    assert!(!s.record_usage(&stranger, &other, at(7)).await.unwrap());
    assert!(s.usage(&stranger, at(0), 10).await.unwrap().is_empty());
    assert!(s
        .erase_account(&a.account, &audit("account.erase", a.account.as_str(), at(30)))
        .await
        .unwrap());
    assert!(s.usage(&a.account, at(0), 10).await.unwrap().is_empty());
    assert!(db.raw_column("usage_records", "record").await.is_empty());
}
