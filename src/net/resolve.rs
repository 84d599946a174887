//! Upstream address resolution. Pingora's `HttpPeer::new` resolves names with a blocking call
//! and panics on failure, so twinroute resolves first (asynchronously, cached for a short TTL)
//! and hands Pingora a `SocketAddr`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);

/// (host, port) → (addresses, when resolved).
type Cache = HashMap<(String, u16), (Vec<SocketAddr>, Instant)>;

#[derive(Default)]
pub struct Resolver {
    cache: Mutex<Cache>,
}

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        if let Some((addrs, at)) = self.lock().get(&key) {
            if at.elapsed() < TTL {
                if let Some(a) = addrs.first() {
                    return Ok(*a);
                }
            }
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let first = *addrs
            .first()
            .ok_or_else(|| format!("{host} resolved to no address"))?;
        self.lock().insert(key, (addrs, Instant::now()));
        Ok(first)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_ips_and_localhost() {
        let r = Resolver::default();
        assert_eq!(
            r.resolve("127.0.0.1", 80).await.unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            r.resolve("::1", 443).await.unwrap(),
            "[::1]:443".parse().unwrap()
        );
        assert!(r
            .resolve("localhost", 8080)
            .await
            .unwrap()
            .ip()
            .is_loopback());
        assert!(r.resolve("no-such-host.invalid", 80).await.is_err());
    }
}
