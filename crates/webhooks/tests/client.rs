//! Delivery client: guard decisions through the real client (injected resolver and a
//! recording connector, no sockets), and real deliveries to receivers on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::HeaderMap;
use skygate_webhooks::{sign, verify, Client, ClientConfig, Outcome, Policy, WebhookSecret};
use support::*;
use tokio::io::AsyncWriteExt as _;

const BODY: &[u8] = br#"{"id":"pred_1","status":"succeeded"}"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn status(code: u16) -> Outcome {
    Outcome::Status {
        code,
        retry_after: None,
    }
}

async fn post(client: &Client, url: &str) -> skygate_webhooks::Attempt {
    client.post(url, HeaderMap::new(), Bytes::from_static(BODY)).await
}

/// A client that may only record connection attempts.
fn recording_client<S: Into<String>>(
    policy: Policy,
    names: impl IntoIterator<Item = (S, Vec<IpAddr>)>,
) -> (Client, Arc<MapResolver>, Arc<RecordingConnector>) {
    let resolver = Arc::new(MapResolver::new(names));
    let connector = Arc::new(RecordingConnector::default());
    let config = ClientConfig {
        policy,
        ..ClientConfig::default()
    };
    let client = Client::new(config, resolver.clone(), connector.clone()).unwrap();
    (client, resolver, connector)
}

const FORBIDDEN: [(&str, &str); 18] = [
    ("10.0.0.1", "a private network address"),
    ("172.16.0.1", "a private network address"),
    ("192.168.1.1", "a private network address"),
    ("169.254.169.254", "a link-local address"),
    ("100.64.0.1", "a shared (carrier-grade NAT) address"),
    ("127.0.0.1", "a loopback address"),
    ("0.0.0.0", "an unspecified address"),
    ("255.255.255.255", "a broadcast address"),
    ("224.0.0.1", "a multicast address"),
    ("::1", "a loopback address"),
    ("::", "an unspecified address"),
    ("fc00::1", "a private network address"),
    ("fd12::1", "a private network address"),
    ("fe80::1", "a link-local address"),
    ("ff02::1", "a multicast address"),
    ("::ffff:127.0.0.1", "a loopback address"),
    ("::ffff:10.0.0.1", "a private network address"),
    ("64:ff9b::a00:1", "a private network address"),
];

#[tokio::test]
async fn names_resolving_to_forbidden_addresses_are_refused_before_connecting() {
    let names = FORBIDDEN
        .iter()
        .enumerate()
        .map(|(i, (addr, _))| (format!("h{i}.test"), vec![ip(addr)]));
    let (client, _, connector) = recording_client(Policy::default(), names);
    for (i, (addr, class)) in FORBIDDEN.iter().enumerate() {
        let attempt = post(&client, &format!("https://h{i}.test/hook")).await;
        let Outcome::Refused(reason) = &attempt.outcome else {
            panic!("{addr}: {:?}", attempt.outcome);
        };
        assert!(reason.contains(class), "{addr}: {reason}");
        assert!(attempt.response.is_none());
    }
    assert!(connector.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn one_forbidden_address_among_public_ones_refuses_the_target() {
    let names = [("mixed.test", vec![ip("8.8.8.8"), ip("10.0.0.1")])];
    let (client, _, connector) = recording_client(Policy::default(), names);
    let attempt = post(&client, "https://mixed.test/hook").await;
    assert_eq!(
        attempt.outcome,
        Outcome::Refused("the host resolves to a private network address".into())
    );
    assert!(connector.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn url_policy_refusals_never_resolve_or_connect() {
    let (client, resolver, connector) =
        recording_client(Policy::default(), [("public.test", vec![ip("8.8.8.8")])]);
    for url in [
        "http://public.test/hook",
        "https://user:pw@public.test/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://10.0.0.1/hook",
        "not a url",
    ] {
        let attempt = post(&client, url).await;
        assert!(
            matches!(attempt.outcome, Outcome::Refused(_)),
            "{url}: {attempt:?}"
        );
    }
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 0);
    assert!(connector.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn connects_only_to_vetted_addresses_in_order_after_one_lookup() {
    let open = Policy {
        allow_private_networks: true,
        ..Policy::default()
    };
    let (client, resolver, connector) = recording_client(open, [("private.test", vec![ip("10.0.0.1")])]);
    let attempt = post(&client, "https://private.test/hook").await;
    let Outcome::Error(reason) = &attempt.outcome else {
        panic!("{attempt:?}");
    };
    assert!(reason.contains("recording connector"), "{reason}");
    assert_eq!(
        *connector.asked.lock().unwrap(),
        [SocketAddr::new(ip("10.0.0.1"), 443)]
    );
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);

    let names = [("two.test", vec![ip("8.8.8.8"), ip("2606:4700::1111")])];
    let (client, resolver, connector) = recording_client(Policy::default(), names);
    let attempt = post(&client, "https://two.test:8443/hook").await;
    assert!(matches!(attempt.outcome, Outcome::Error(_)), "{attempt:?}");
    assert_eq!(
        *connector.asked.lock().unwrap(),
        [
            SocketAddr::new(ip("8.8.8.8"), 8443),
            SocketAddr::new(ip("2606:4700::1111"), 8443),
        ]
    );
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn resolution_failure_is_a_retryable_error() {
    let (client, _, connector) = recording_client(Policy::default(), Vec::<(String, _)>::new());
    let attempt = post(&client, "https://unknown.test/hook").await;
    let Outcome::Error(reason) = &attempt.outcome else {
        panic!("{attempt:?}");
    };
    assert!(reason.contains("could not resolve"), "{reason}");
    assert!(connector.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn plain_http_delivery_reuses_its_connection() {
    let receiver = Receiver::start(None, |_| reply(200, &[])).await;
    let client = loopback_client(loopback_config());
    for _ in 0..3 {
        let attempt = post(&client, &receiver.url("http")).await;
        assert_eq!(attempt.outcome, status(200));
        assert_eq!(attempt.response.as_deref(), Some(&b"{\"ok\":true}"[..]));
    }
    assert_eq!(receiver.requests().len(), 3);
    assert_eq!(receiver.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sends_json_user_agent_and_the_callers_signature_headers() {
    let receiver = Receiver::start(None, |_| reply(204, &[])).await;
    let client = loopback_client(ClientConfig {
        user_agent: "skygate-test/1".into(),
        ..loopback_config()
    });
    let secret = WebhookSecret::generate().unwrap();
    let mut headers = HeaderMap::new();
    sign(std::slice::from_ref(&secret), "msg_1", 1_700_000_000, BODY).apply(&mut headers);
    headers.insert("content-type", "text/plain".parse().unwrap());
    let attempt = client
        .post(&receiver.url("http"), headers, Bytes::from_static(BODY))
        .await;
    assert_eq!(attempt.outcome, status(204));

    let seen = receiver.requests().remove(0);
    assert_eq!(seen.path, "/hook");
    assert_eq!(seen.body, BODY);
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["user-agent"], "skygate-test/1");
    assert_eq!(seen.headers["webhook-id"], "msg_1");
    let verified = verify(
        &[secret],
        &seen.headers,
        &seen.body,
        1_700_000_000,
        Duration::from_secs(300),
    )
    .unwrap();
    assert_eq!(verified.schemes.len(), 2);
}

#[tokio::test]
async fn https_with_an_operator_ca() {
    let pki = TestPki::new(RECEIVER);
    let receiver = Receiver::start(Some(pki.server.clone()), |_| reply(200, &[])).await;
    let client = loopback_client(ClientConfig {
        extra_roots: vec![pki.ca.clone()],
        ..loopback_config()
    });
    for _ in 0..2 {
        assert_eq!(post(&client, &receiver.url("https")).await.outcome, status(200));
    }
    assert_eq!(receiver.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn https_with_an_untrusted_certificate_fails() {
    let trusted = TestPki::new(RECEIVER);
    let untrusted = TestPki::new(RECEIVER);
    let receiver = Receiver::start(Some(untrusted.server), |_| reply(200, &[])).await;
    let client = loopback_client(ClientConfig {
        extra_roots: vec![trusted.ca],
        ..loopback_config()
    });
    let attempt = post(&client, &receiver.url("https")).await;
    let Outcome::Error(reason) = &attempt.outcome else {
        panic!("{attempt:?}");
    };
    assert!(reason.contains("certificate"), "{reason}");
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn statuses_are_reported_as_answered() {
    let receiver = Receiver::start(None, |seen| match seen.path.as_str() {
        "/500" => reply(500, &[]),
        "/410" => reply(410, &[]),
        "/429" => reply(429, &[("retry-after", "7")]),
        "/301" => reply(301, &[("location", "/elsewhere")]),
        _ => reply(200, &[]),
    })
    .await;
    let client = loopback_client(loopback_config());
    let at = |path: &str| format!("http://{RECEIVER}:{}{path}", receiver.port);

    assert_eq!(post(&client, &at("/500")).await.outcome, status(500));
    assert_eq!(post(&client, &at("/410")).await.outcome, status(410));
    assert_eq!(
        post(&client, &at("/429")).await.outcome,
        Outcome::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(7))
        }
    );
    let before = receiver.requests().len();
    assert_eq!(post(&client, &at("/301")).await.outcome, status(301));
    let after = receiver.requests();
    assert_eq!(after.len(), before + 1, "the redirect must not be followed");
    assert_eq!(after[before].path, "/301");
}

#[tokio::test]
async fn a_reset_connection_is_an_error() {
    let receiver = RawReceiver::start(|mut tcp| async move {
        read_head(&mut tcp).await;
        tcp.set_zero_linger().unwrap();
        drop(tcp);
    })
    .await;
    let client = loopback_client(loopback_config());
    let attempt = post(&client, &receiver.url()).await;
    assert!(matches!(attempt.outcome, Outcome::Error(_)), "{attempt:?}");
    assert!(attempt.response.is_none());
}

#[tokio::test]
async fn a_stalled_receiver_times_out() {
    let receiver = RawReceiver::start(|mut tcp| async move {
        read_head(&mut tcp).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let client = loopback_client(ClientConfig {
        timeout: Duration::from_millis(300),
        ..loopback_config()
    });
    let started = Instant::now();
    let attempt = post(&client, &receiver.url()).await;
    let Outcome::Error(reason) = &attempt.outcome else {
        panic!("{attempt:?}");
    };
    assert!(reason.contains("timed out"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(attempt.duration >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_trickling_body_is_cut_at_the_deadline() {
    let receiver = RawReceiver::start(|mut tcp| async move {
        read_head(&mut tcp).await;
        if write_head(&mut tcp, 1_000_000).await.is_err() {
            return;
        }
        for _ in 0..1500 {
            if tcp.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let client = loopback_client(ClientConfig {
        timeout: Duration::from_millis(300),
        ..loopback_config()
    });
    let started = Instant::now();
    let attempt = post(&client, &receiver.url()).await;
    assert_eq!(attempt.outcome, status(200));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let kept = attempt.response.unwrap();
    assert!(!kept.is_empty() && kept.len() < 100, "{}", kept.len());
}

#[tokio::test]
async fn a_huge_body_is_read_only_up_to_the_limit() {
    const FIFTY_MB: usize = 50 * 1024 * 1024;
    let receiver = RawReceiver::start(|mut tcp| async move {
        read_head(&mut tcp).await;
        if write_head(&mut tcp, FIFTY_MB).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..FIFTY_MB / chunk.len() {
            if tcp.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let client = loopback_client(loopback_config());
    let started = Instant::now();
    let attempt = post(&client, &receiver.url()).await;
    assert_eq!(attempt.outcome, status(200));
    assert_eq!(attempt.response.unwrap().len(), 1024);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Deliveries per second over pooled keep-alive connections to a local receiver.
/// Run with `cargo test --release -p skygate-webhooks --test client -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement, run by hand in release mode"]
async fn throughput() {
    const DELIVERIES: usize = 20_000;
    const CONCURRENCY: usize = 16;
    let receiver = Receiver::start(None, |_| reply(200, &[])).await;
    let client = loopback_client(loopback_config());
    let secret = WebhookSecret::generate().unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    let url = receiver.url("http");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let (client, secret, body, url) = (client.clone(), secret.clone(), body.clone(), url.clone());
        tasks.spawn(async move {
            for i in 0..DELIVERIES / CONCURRENCY {
                let mut headers = HeaderMap::new();
                let id = format!("msg_{worker}_{i}");
                sign(std::slice::from_ref(&secret), &id, 1_700_000_000, &body).apply(&mut headers);
                let attempt = client.post(&url, headers, body.clone()).await;
                assert_eq!(attempt.outcome, status(200));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    let rate = DELIVERIES as f64 / elapsed.as_secs_f64();
    let connections = receiver.connections.load(Ordering::SeqCst);
    eprintln!("{DELIVERIES} signed deliveries in {elapsed:?}: {rate:.0}/s over {connections} connections");
    // Pooled: a handful of connections (the pool may race an extra connect or two against
    // connections being returned), not one per delivery.
    assert!(connections < DELIVERIES / 100, "{connections} connections");
    assert!(rate >= 2_000.0, "{rate:.0} deliveries/s");
}
