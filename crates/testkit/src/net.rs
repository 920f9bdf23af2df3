//! Injected networking for webhook tests: a resolver that maps names to chosen addresses, and a
//! connector that records every address it is asked for and opens sockets to loopback only, so no test
//! reaches another machine even if the SSRF guard were broken.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use skygate_webhooks::{Connector, Io, Resolver};

/// Maps names to addresses, changeable mid-test; answers "not found" for any other name.
#[derive(Default, Clone)]
pub struct MapResolver(Arc<Mutex<HashMap<String, Vec<IpAddr>>>>);

impl MapResolver {
    pub fn set(&self, name: &str, ips: &[&str]) {
        self.0
            .lock()
            .unwrap()
            .insert(name.into(), ips.iter().map(|i| i.parse().unwrap()).collect());
    }
}

#[async_trait::async_trait]
impl Resolver for MapResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let ips = self.0.lock().unwrap().get(host).cloned();
        ips.map(|ips| ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host"))
    }
}

/// Records every address it is asked to connect to, and connects only to loopback ones: even with a
/// broken guard, no packet leaves the machine.
#[derive(Default, Clone)]
pub struct LoopbackOnly(pub Arc<Mutex<Vec<SocketAddr>>>);

#[async_trait::async_trait]
impl Connector for LoopbackOnly {
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Box<dyn Io>> {
        self.0.lock().unwrap().push(addr);
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "test connector: not loopback",
            ));
        }
        let s = tokio::net::TcpStream::connect(addr).await?;
        Ok(Box::new(s))
    }
}

impl LoopbackOnly {
    /// The addresses asked for so far.
    pub fn attempts(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap().clone()
    }
}
