//! Screening before the handlers: the client's address (the socket's, or `X-Forwarded-For` read from the
//! right when the peer is a trusted proxy) and the WAF rules ([`crate::waf`]) on every request, before
//! authentication. A block answers `403 REQUEST_BLOCKED` naming the rule; blocks and log matches are
//! counted per rule and summarised into the audit chain once a minute ([`audit_summary`]), not one
//! entry per request.

use std::net::{IpAddr, SocketAddr};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use skygate_core::{NewAuditEntry, Timestamp};
use skygate_proto::ErrorId;

use crate::error::ApiError;
use crate::state::AppState;
use crate::waf::Verdict;

/// Parses `server.trusted_proxies` (addresses or CIDR networks).
pub fn parse_proxies(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("server.trusted_proxies[{i}]: {s:?} is not an IP address or CIDR network")
                })
        })
        .collect()
}

/// The client of a request: the socket peer, unless the peer is a trusted proxy; then the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries left of it are the client's own
/// claims and are not believed).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(s) = value.to_str() else {
            return client;
        };
        for part in s.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip;
            if !is_trusted(&ip) {
                return ip;
            }
        }
    }
    client
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so v4 networks match mapped addresses.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client address of a request as this server sees it (`None` without socket info, e.g. in
/// in-memory tests).
pub fn client_of(state: &AppState, req: &Request) -> Option<IpAddr> {
    client_of_parts(state, req.extensions(), req.headers())
}

/// [`client_of`] from a request's parts.
pub fn client_of_parts(
    state: &AppState,
    extensions: &axum::http::Extensions,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    let peer = extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(client_ip(peer, headers, state.trusted_proxies()))
}

fn blocked(rule: &str) -> Response {
    ApiError::new(
        ErrorId::RequestBlocked,
        "Request blocked",
        format!("blocked by WAF rule {rule}"),
    )
    .into_response()
}

fn logged(rules: &[std::sync::Arc<str>], req: &Parts) {
    let ids: Vec<&str> = rules.iter().map(|r| &**r).collect();
    tracing::warn!(rules = ?ids, method = %req.method, path = %req.uri.path(), "WAF rules matched (log only)");
}

/// The head rules for a request from `client`: `Some(403)` when a rule blocks it.
pub fn screen_head(state: &AppState, client: IpAddr, req: &Parts) -> Option<Response> {
    match state
        .waf()
        .check_head(client, &req.method, &req.uri, &req.headers)
    {
        Verdict::Allow => None,
        Verdict::Block { rule } => Some(blocked(&rule)),
        Verdict::Log { rules } => {
            logged(&rules, req);
            None
        }
    }
}

/// Middleware for routed requests: the head rules, then (only when some rule looks at bodies) the body
/// rules on the buffered body, which is then handed on unchanged. Bodies larger than the body limit are
/// left to the extractors (413).
pub async fn screen(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(client) = client_of(&state, &req) else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    if let Some(res) = screen_head(&state, client, &parts) {
        return res;
    }
    let waf = state.waf();
    if !waf.needs_body() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let limit = usize::try_from(state.body_limits().for_path(parts.uri.path())).unwrap_or(usize::MAX);
    let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return ApiError::for_status(axum::http::StatusCode::PAYLOAD_TOO_LARGE).into_response(),
    };
    match waf.check_body(client, &parts.method, &parts.uri, &parts.headers, &bytes) {
        Verdict::Allow => {}
        Verdict::Block { rule } => return blocked(&rule),
        Verdict::Log { rules } => logged(&rules, &parts),
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Appends one audit entry summarising the WAF's blocks and log matches since the last call (none
/// when nothing matched). Returns how many requests were blocked.
pub async fn audit_summary(state: &AppState) -> anyhow::Result<u64> {
    let summary = state.waf().take_summary();
    if summary.is_empty() {
        return Ok(0);
    }
    let blocked: u64 = summary.iter().map(|(_, b, _)| b).sum();
    let detail = summary
        .iter()
        .map(|(rule, b, l)| format!("{rule}: {b} blocked, {l} logged"))
        .collect::<Vec<_>>()
        .join("; ");
    state
        .store()
        .append_audit(&NewAuditEntry::new(
            Timestamp::now(),
            "waf",
            "waf.summary",
            "edge",
            detail,
        ))
        .await?;
    Ok(blocked)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_and_read_from_the_right() {
        let trusted = parse_proxies(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        // An untrusted peer: its header is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.5"), &xff(&["198.51.100.1"]), &trusted),
            ip("203.0.113.5")
        );
        // A trusted peer: the right-most untrusted entry; a spoofed left part is not believed.
        assert_eq!(
            client_ip(
                ip("127.0.0.1"),
                &xff(&["1.2.3.4, 198.51.100.7, 10.1.2.3"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Several header lines read as one list, right to left.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff(&["1.2.3.4", "198.51.100.9"]), &trusted),
            ip("198.51.100.9")
        );
        // Only proxies: the left-most one; junk stops the walk at the last good address.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff(&["10.0.0.2"]), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff(&["nonsense, 10.0.0.3"]), &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        // Mapped forms of trusted v4 peers count as trusted.
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &xff(&["198.51.100.3"]), &trusted),
            ip("198.51.100.3")
        );
        let e = parse_proxies(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(e.contains("server.trusted_proxies[0]"), "{e}");
    }
}
