//! Short-lived credentials for providers that need them, minted and refreshed off the request
//! path: Vertex access tokens, and temporary AWS keys for Bedrock from web identity (IRSA) or
//! container credentials (Pod Identity).
//!
//! `Tokens` holds the current token per provider. The background refresher (`serve::refresh`) mints one at
//! start and again five minutes before it expires, so requests find a fresh token and never
//! wait; a request that finds none (the first mint failed or is still under way, or a 401 just
//! invalidated it) mints under a per-provider lock, so a burst mints once. A failure is logged
//! on change and shown in `/status`; the provider's attempts fail as `auth_failed` until a mint
//! succeeds, and health moves traffic to its twins.

use crate::model::{AwsCredentials, Provider, Secret};
use crate::net::fetch::fetch;
use crate::net::resolve::Resolver;
use crate::wire::vendor::{self, MintSource as Source};
use arc_swap::ArcSwapOption;
use pingora::connectors::http::Connector;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// What a mint sends its token request with.
#[derive(Clone, Copy)]
pub struct Net<'a> {
    pub connector: &'a Connector,
    pub resolver: &'a Resolver,
}

/// Refresh this long before a token expires.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// A token endpoint gets this long to answer.
const MINT_TIMEOUT: Duration = Duration::from_secs(10);

/// One minted access token.
#[derive(Debug)]
pub struct Token {
    /// The bearer access token (Vertex); empty for AWS keys.
    pub value: Secret,
    /// Temporary AWS keys (Bedrock).
    pub aws: Option<AwsCredentials>,
    pub expires: Instant,
    /// How long it was issued for: margins scale with it (a test's 2-second token too).
    pub lifetime: Duration,
}

/// Who asks for a token, which sets how much of its life must be left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A request about to be sent: enough for the request (10 s, or a quarter of its life).
    Request,
    /// The refresher: mint a new one when little is left (5 min, or half its life).
    Refresh,
}

impl Token {
    fn fresh_for(&self, need: Need) -> bool {
        let margin = match need {
            Need::Request => Duration::from_secs(10).min(self.lifetime / 4),
            Need::Refresh => REFRESH_AHEAD.min(self.lifetime / 2),
        };
        self.expires > Instant::now() + margin
    }
}

#[derive(Default)]
struct Slot {
    /// The credential source the token was minted from: a reload that changes it starts over.
    source: Mutex<Option<String>>,
    current: ArcSwapOption<Token>,
    /// Single flight: one mint at a time per provider.
    mint: tokio::sync::Mutex<()>,
    /// The last mint's failure and when: requests fail fast for `RETRY_MINT_AFTER` rather than
    /// each waiting on a token endpoint that is down.
    last_error: Mutex<Option<(String, Instant)>>,
}

/// After a failed mint, the next is tried no sooner than this.
const RETRY_MINT_AFTER: Duration = Duration::from_secs(2);

/// Current tokens, by provider name.
#[derive(Default)]
pub struct Tokens {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tokens {
    fn slot(&self, provider: &Provider, source: &Source<'_>) -> Arc<Slot> {
        let slot = lock(&self.slots)
            .entry(provider.name.clone())
            .or_default()
            .clone();
        let fingerprint = format!("{source:?}");
        let mut s = lock(&slot.source);
        if s.as_deref() != Some(fingerprint.as_str()) {
            *s = Some(fingerprint);
            slot.current.store(None);
        }
        drop(s);
        slot
    }

    /// A token valid for at least `min_left`, minting one (once, whoever else waits) if needed.
    pub async fn bearer(
        &self,
        net: Net<'_>,
        provider: &Provider,
        need: Need,
    ) -> Result<Arc<Token>, String> {
        let Some(source) = vendor::mint_source(provider) else {
            return Err("provider has no refreshable credential source".into());
        };
        let slot = self.slot(provider, &source);
        let fresh = |t: &Option<Arc<Token>>| t.as_ref().filter(|t| t.fresh_for(need)).cloned();
        if let Some(t) = fresh(&slot.current.load_full()) {
            return Ok(t);
        }
        let _guard = slot.mint.lock().await;
        if let Some(t) = fresh(&slot.current.load_full()) {
            return Ok(t);
        }
        if let Some((e, at)) = lock(&slot.last_error).clone() {
            if at.elapsed() < RETRY_MINT_AFTER {
                return Err(e);
            }
        }
        match mint(net, &source).await {
            Ok(t) => {
                let t = Arc::new(t);
                slot.current.store(Some(t.clone()));
                if lock(&slot.last_error).take().is_some() {
                    log::warn!("provider {}: access token minted again", provider.name);
                }
                Ok(t)
            }
            Err(e) => {
                let mut last = lock(&slot.last_error);
                if last.as_ref().map(|(m, _)| m.as_str()) != Some(e.as_str()) {
                    log::warn!(
                        "provider {}: cannot mint an access token: {e}",
                        provider.name
                    );
                }
                *last = Some((e.clone(), Instant::now()));
                Err(e)
            }
        }
    }

    /// The provider's current token, if one was minted (to redact it from what a provider
    /// echoes back).
    pub fn current(&self, provider: &str) -> Option<Arc<Token>> {
        lock(&self.slots).get(provider)?.current.load_full()
    }

    /// The provider answered 401: its token is no good any more.
    pub fn invalidate(&self, provider: &str) {
        if let Some(slot) = lock(&self.slots).get(provider) {
            slot.current.store(None);
        }
    }

    /// Why the last mint failed, for `/status`.
    pub fn last_error(&self, provider: &str) -> Option<String> {
        lock(&self.slots)
            .get(provider)
            .and_then(|s| lock(&s.last_error).clone().map(|(e, _)| e))
    }
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a provider's credentials are minted and refreshed here.
pub fn refreshable(provider: &Provider) -> bool {
    vendor::mint_source(provider).is_some()
}

/// One credential from the source: the family says what to ask and how to read the answer
/// (`wire::vendor`); this does the I/O.
async fn mint(net: Net<'_>, source: &Source<'_>) -> Result<Token, String> {
    let now_s = unix_now();
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| e.to_string());
    let req = vendor::mint_request(source, now_s, &read)?;
    let headers: Vec<(&str, &str)> = req.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, answer) = fetch(
        net.connector,
        net.resolver,
        req.method,
        &req.url,
        &headers,
        req.body.as_deref(),
        MINT_TIMEOUT,
    )
    .await?;
    let (value, aws, lifetime) = match vendor::parse_minted(source, status, &answer)? {
        vendor::Minted::Bearer {
            token,
            expires_in_s,
        } => (
            Secret::new(token),
            None,
            Duration::from_secs(expires_in_s.max(1)),
        ),
        vendor::Minted::AwsKeys {
            credentials,
            expires_at_s,
        } => (
            Secret::new(String::new()),
            Some(credentials),
            // Counted from when the keys arrived, not from when they were asked for: the fetch
            // can take up to MINT_TIMEOUT, as long as the margin kept before expiry.
            Duration::from_secs((expires_at_s - unix_now() as i64).max(1) as u64),
        ),
    };
    Ok(Token {
        value,
        aws,
        expires: Instant::now() + lifetime,
        lifetime,
    })
}
