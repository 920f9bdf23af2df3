//! SSRF guard for webhook targets.
//!
//! A target URL is checked in two steps: [`check_url`] (syntax, scheme, no credentials,
//! literal IP addresses) and [`vet`] (resolve the host once and refuse it if *any* address is
//! loopback, private, link-local, CGNAT, multicast, unspecified, broadcast or reserved). The
//! caller then connects only to the vetted addresses, so a second DNS answer can never
//! redirect the connection (no DNS rebinding). Name resolution and connecting are injected
//! ([`Resolver`], [`Connector`]) so tests never touch the network.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite};
use url::{Host, Url};

/// Why an address may not receive webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, IPv6 unique-local fc00::/7 and site-local fec0::/10.
    Private,
    /// 169.254.0.0/16 (cloud metadata lives here), fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10 (carrier-grade NAT).
    SharedCgnat,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 0.0.0.0, ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// Documentation, benchmarking, protocol-assignment, "this network", 240.0.0.0/4,
    /// deprecated and non-global-unicast IPv6 ranges.
    Reserved,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loopback => "a loopback address",
            Self::Private => "a private network address",
            Self::LinkLocal => "a link-local address",
            Self::SharedCgnat => "a shared (carrier-grade NAT) address",
            Self::Multicast => "a multicast address",
            Self::Unspecified => "an unspecified address",
            Self::Broadcast => "a broadcast address",
            Self::Reserved => "a reserved address",
        })
    }
}

/// Classifies an address: `None` means public, allowed.
pub fn classify(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Forbidden> {
    use Forbidden::*;
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => Unspecified,
        _ if ip.is_broadcast() => Broadcast,
        (127, ..) => Loopback,
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => Private,
        (169, 254, _) => LinkLocal,
        (100, 64..=127, _) => SharedCgnat,
        (224..=239, ..) => Multicast,
        // "This network", future use (240/4), protocol assignments, 6to4 relay anycast,
        // benchmarking (198.18/15) and the three documentation networks.
        (0 | 240..=255, ..)
        | (192, 0, 0 | 2)
        | (192, 88, 99)
        | (198, 18..=19, _)
        | (198, 51, 100)
        | (203, 0, 113) => Reserved,
        _ => return None,
    })
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

fn classify_v6(ip: Ipv6Addr) -> Option<Forbidden> {
    use Forbidden::*;
    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    let tail = embedded_v4(s[6], s[7]);
    match s {
        // IPv4-compatible ::a.b.c.d: deprecated, never a valid public destination.
        [0, 0, 0, 0, 0, 0, ..] => Some(classify_v4(tail).unwrap_or(Reserved)),
        // NAT64 well-known prefix: the gateway connects to the embedded address.
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => classify_v4(tail),
        // 6to4: the relay connects to the embedded address.
        [0x2002, high, low, ..] => classify_v4(embedded_v4(high, low)),
        [first, second, ..] => match first {
            _ if first & 0xfe00 == 0xfc00 => Some(Private), // unique local fc00::/7
            _ if first & 0xffc0 == 0xfec0 => Some(Private), // site-local fec0::/10
            _ if first & 0xffc0 == 0xfe80 => Some(LinkLocal),
            _ if first & 0xff00 == 0xff00 => Some(Multicast),
            // Outside global unicast 2000::/3 (discard 100::/64, local NAT64 64:ff9b:1::/48, …).
            _ if first & 0xe000 != 0x2000 => Some(Reserved),
            // 2001::/23 protocol assignments (Teredo, benchmarking, ORCHID); documentation.
            0x2001 if second < 0x0200 || second == 0x0db8 => Some(Reserved),
            0x3fff if second < 0x1000 => Some(Reserved),
            _ => None,
        },
    }
}

/// What the guard lets through.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Allow loopback, private and every other forbidden class (tests, private deployments).
    pub allow_private_networks: bool,
    /// Allow `http://` targets (tests only).
    pub allow_insecure_http: bool,
    /// Longest accepted URL, in bytes.
    pub max_url_len: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            allow_insecure_http: false,
            max_url_len: 2048,
        }
    }
}

impl Policy {
    fn check_ip(&self, ip: IpAddr) -> Result<(), Forbidden> {
        match classify(ip) {
            Some(why) if !self.allow_private_networks => Err(why),
            _ => Ok(()),
        }
    }
}

/// A syntactically acceptable webhook target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The parsed URL.
    pub url: Url,
    /// Host name or IP literal, without IPv6 brackets.
    pub host: String,
    /// Explicit port or the scheme's default.
    pub port: u16,
    /// `https` (otherwise `http`).
    pub https: bool,
}

/// Why a URL is not an acceptable target. Refusals are final: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Longer than [`Policy::max_url_len`] bytes.
    #[error("the URL is too long ({0} bytes)")]
    TooLong(usize),
    /// Not a URL.
    #[error("the URL is not valid: {0}")]
    Invalid(String),
    /// Not https (or http where the policy allows it).
    #[error("the URL must use https (http only where the configuration allows it)")]
    Scheme,
    /// Carries a user name or password.
    #[error("the URL must not contain a user name or password")]
    Credentials,
    /// Has no host.
    #[error("the URL has no host")]
    NoHost,
    /// The host is a forbidden IP literal. (Messages name the class, not the address: they are stored
    /// unsealed in the delivery log, where the target itself is sealed.)
    #[error("the URL points to {1}")]
    ForbiddenAddress(IpAddr, Forbidden),
}

/// Checks syntax, scheme, credentials and a literal IP host. Does no DNS.
pub fn check_url(raw: &str, policy: &Policy) -> Result<Target, UrlError> {
    if raw.len() > policy.max_url_len {
        return Err(UrlError::TooLong(raw.len()));
    }
    let url = Url::parse(raw).map_err(|e| UrlError::Invalid(e.to_string()))?;
    let https = match url.scheme() {
        "https" => true,
        "http" if policy.allow_insecure_http => false,
        _ => return Err(UrlError::Scheme),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let (host, literal) = match url.host() {
        None => return Err(UrlError::NoHost),
        Some(Host::Domain("")) => return Err(UrlError::NoHost),
        Some(Host::Domain(d)) => (d.to_owned(), None),
        Some(Host::Ipv4(ip)) => (ip.to_string(), Some(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => (ip.to_string(), Some(IpAddr::V6(ip))),
    };
    if let Some(ip) = literal {
        policy
            .check_ip(ip)
            .map_err(|why| UrlError::ForbiddenAddress(ip, why))?;
    }
    let port = url.port_or_known_default().ok_or(UrlError::NoHost)?;
    Ok(Target {
        url,
        host,
        port,
        https,
    })
}

/// Resolves host names; injected so tests can answer with any address and no network.
#[async_trait::async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// All addresses of `host`, with `port` filled in.
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The operating system's resolver (`tokio::net::lookup_host`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// Why a target's addresses were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Resolution failed.
    #[error("could not resolve the host: {0}")]
    Unresolvable(String),
    /// Resolution returned no address.
    #[error("the host has no address")]
    NoAddress,
    /// An address of the host is forbidden.
    #[error("the host resolves to {why}")]
    Forbidden {
        /// The offending address.
        addr: IpAddr,
        /// Its class.
        why: Forbidden,
    },
    /// Resolution took longer than allowed.
    #[error("resolving the host timed out")]
    Timeout,
}

impl Refused {
    /// `true` for a policy refusal (a forbidden address), which retrying cannot change;
    /// `false` for resolution failures, which may be transient.
    pub fn is_policy(&self) -> bool {
        matches!(self, Self::Forbidden { .. })
    }
}

/// Resolves `target` once (IP literals skip resolution) and returns its addresses, refusing
/// the target if any of them is forbidden by `policy`.
pub async fn vet(
    target: &Target,
    resolver: &dyn Resolver,
    policy: &Policy,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, Refused> {
    let addrs = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => tokio::time::timeout(timeout, resolver.resolve(&target.host, target.port))
            .await
            .map_err(|_| Refused::Timeout)?
            .map_err(|e| Refused::Unresolvable(e.to_string()))?,
    };
    if addrs.is_empty() {
        return Err(Refused::NoAddress);
    }
    for addr in &addrs {
        policy
            .check_ip(addr.ip())
            .map_err(|why| Refused::Forbidden { addr: addr.ip(), why })?;
    }
    Ok(addrs)
}

/// A byte stream a connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Opens a stream to one vetted address; injected so tests can record instead of connect.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Connects to exactly `addr`.
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Box<dyn Io>>;
}

/// Plain TCP with `TCP_NODELAY`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

#[async_trait::async_trait]
impl Connector for TcpConnector {
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Box<dyn Io>> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::{collections::HashMap, sync::Mutex};

    use super::*;
    use Forbidden::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forbidden_addresses() {
        let cases = [
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("127.0.0.1", Loopback),
            ("127.1.2.3", Loopback),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Reserved),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("192.0.2.1", Reserved),
            ("198.18.0.1", Reserved),
            ("198.51.100.1", Reserved),
            ("203.0.113.1", Reserved),
            ("::1", Loopback),
            ("::", Unspecified),
            ("fc00::1", Private),
            ("fd12::1", Private),
            ("fec0::1", Private),
            ("fe80::1", LinkLocal),
            ("ff02::1", Multicast),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::127.0.0.1", Loopback),
            ("::8.8.8.8", Reserved),
            ("64:ff9b::a00:1", Private),
            ("64:ff9b::7f00:1", Loopback),
            ("2002:a00:1::", Private),
            ("100::1", Reserved),
            ("2001:db8::1", Reserved),
            ("2001::1", Reserved),
            ("3fff::1", Reserved),
        ];
        for (addr, class) in cases {
            assert_eq!(classify(ip(addr)), Some(class), "{addr}");
        }
    }

    #[test]
    fn public_addresses() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "172.32.0.1",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(classify(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn forbidden_reads_as_a_phrase() {
        assert_eq!(Loopback.to_string(), "a loopback address");
        assert_eq!(
            UrlError::ForbiddenAddress(ip("10.0.0.1"), Private).to_string(),
            "the URL points to a private network address"
        );
    }

    #[test]
    fn check_url_rules() {
        let strict = Policy::default();
        let http_ok = Policy {
            allow_insecure_http: true,
            ..Policy::default()
        };
        let t = check_url("https://hooks.example.com/x?y=1", &strict).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.https),
            ("hooks.example.com", 443, true)
        );
        let t = check_url("http://hooks.example.com:8080/", &http_ok).unwrap();
        assert_eq!((t.port, t.https), (8080, false));
        let t = check_url("https://[2606:4700::1111]/", &strict).unwrap();
        assert_eq!(t.host, "2606:4700::1111");

        assert_eq!(
            check_url("http://hooks.example.com/", &strict),
            Err(UrlError::Scheme)
        );
        assert_eq!(
            check_url("ftp://hooks.example.com/", &http_ok),
            Err(UrlError::Scheme)
        );
        assert_eq!(
            check_url("https://user:pw@hooks.example.com/", &strict),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            check_url("https://user@hooks.example.com/", &strict),
            Err(UrlError::Credentials)
        );
        let long = format!("https://hooks.example.com/{}", "a".repeat(2048));
        assert_eq!(check_url(&long, &strict), Err(UrlError::TooLong(long.len())));
        assert!(matches!(
            check_url("not a url", &strict),
            Err(UrlError::Invalid(_))
        ));
        assert_eq!(
            check_url("https://10.1.2.3/hook", &strict),
            Err(UrlError::ForbiddenAddress(ip("10.1.2.3"), Private))
        );
        assert_eq!(
            check_url("https://[::ffff:127.0.0.1]/hook", &strict),
            Err(UrlError::ForbiddenAddress(ip("::ffff:127.0.0.1"), Loopback))
        );
        // WHATWG parsing normalizes the shorthand and hex forms before the check.
        for sneaky in ["https://127.1/", "https://0x7f000001/", "https://2130706433/"] {
            assert_eq!(
                check_url(sneaky, &strict),
                Err(UrlError::ForbiddenAddress(ip("127.0.0.1"), Loopback)),
                "{sneaky}"
            );
        }
        let open = Policy {
            allow_private_networks: true,
            ..Policy::default()
        };
        assert!(check_url("https://10.1.2.3/hook", &open).is_ok());
    }

    /// Answers from a fixed map; counts lookups.
    struct MapResolver(HashMap<&'static str, Vec<IpAddr>>, Mutex<usize>);

    #[async_trait::async_trait]
    impl Resolver for MapResolver {
        async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            *self.1.lock().unwrap() += 1;
            let ips = self.0.get(host).ok_or(std::io::ErrorKind::NotFound)?;
            Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
        }
    }

    #[tokio::test]
    async fn vet_refuses_any_forbidden_address() {
        let resolver = MapResolver(
            HashMap::from([
                ("public.test", vec![ip("8.8.8.8"), ip("2606:4700::1111")]),
                ("mixed.test", vec![ip("8.8.8.8"), ip("10.0.0.1")]),
                ("empty.test", vec![]),
            ]),
            Mutex::new(0),
        );
        let strict = Policy::default();
        let t = |host| check_url(&format!("https://{host}/"), &strict).unwrap();
        let secs = Duration::from_secs(1);

        let addrs = vet(&t("public.test"), &resolver, &strict, secs).await.unwrap();
        assert_eq!(
            addrs,
            [
                SocketAddr::new(ip("8.8.8.8"), 443),
                SocketAddr::new(ip("2606:4700::1111"), 443)
            ]
        );
        let err = vet(&t("mixed.test"), &resolver, &strict, secs).await.unwrap_err();
        assert_eq!(
            err,
            Refused::Forbidden {
                addr: ip("10.0.0.1"),
                why: Private
            }
        );
        assert!(err.is_policy());
        assert_eq!(
            vet(&t("empty.test"), &resolver, &strict, secs).await,
            Err(Refused::NoAddress)
        );
        let err = vet(&t("unknown.test"), &resolver, &strict, secs)
            .await
            .unwrap_err();
        assert!(matches!(err, Refused::Unresolvable(_)) && !err.is_policy());
        assert_eq!(*resolver.1.lock().unwrap(), 4);

        // Literal addresses are not looked up.
        let addrs = vet(&t("1.1.1.1"), &resolver, &strict, secs).await.unwrap();
        assert_eq!(addrs, [SocketAddr::new(ip("1.1.1.1"), 443)]);
        assert_eq!(*resolver.1.lock().unwrap(), 4);

        let open = Policy {
            allow_private_networks: true,
            ..strict
        };
        assert_eq!(
            vet(&t("mixed.test"), &resolver, &open, secs).await.unwrap().len(),
            2
        );
    }

    struct SlowResolver;

    #[async_trait::async_trait]
    impl Resolver for SlowResolver {
        async fn resolve(&self, _: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn vet_times_out() {
        let t = check_url("https://slow.test/", &Policy::default()).unwrap();
        let err = vet(&t, &SlowResolver, &Policy::default(), Duration::from_millis(50)).await;
        assert_eq!(err, Err(Refused::Timeout));
    }
}
