//! One attempt on the wire: resolve, connect (Pingora's pooled connector), write the request,
//! read the response header within the budget, and classify it (reading a small error body when
//! it decides); the credentials of the clouds that sign or mint (Bedrock, Vertex).

use crate::decide::outcome::{
    classify_error, classify_status, parse_retry_after, AttemptPhase, FailoverReason, StatusClass,
};
use crate::model::{Provider, ProviderEndpoint};
use crate::serve::state::Shared;
use crate::wire::body::SplicedBody;
use crate::wire::error_body::{account_problem, body_decides, classify_error_body};
use crate::wire::vendor;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Request bodies up to this size are sent as one contiguous write.
const COALESCE_BELOW: usize = 64 * 1024;

/// Largest error body read to classify it; provider error JSON is a few hundred bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Pingora's timer wheel for the per-request timeouts: they almost never fire, and tokio's timer
/// registration showed in profiles (10 ms granularity is fine for budgets of hundreds of ms).
use pingora::prelude::fast_timeout::fast_timeout;

/// How long an idle upstream connection stays in the pool.
pub(super) const POOL_IDLE: Duration = Duration::from_secs(60);

/// What one attempt produced.
pub(super) enum Exchange {
    /// A response header the client will get (success or a final error).
    Answer {
        upstream: Box<HttpSession>,
        peer: Box<HttpPeer>,
        ttfb: Duration,
        /// The start of the body (all of it when the upstream says it is done), read before
        /// deciding because an error body can mean "try elsewhere".
        prefix: Option<Bytes>,
        /// What that error body says: `None` for an answer to pass on as it is.
        verdict: Option<FailoverReason>,
    },
    Failed {
        reason: FailoverReason,
        status: Option<u16>,
        retry_after_s: Option<u64>,
    },
}

/// What one attempt is sent with, but for its header: where, the body, and its time.
#[derive(Clone, Copy)]
pub(super) struct Call<'a> {
    pub shared: &'a Shared,
    pub provider: &'a Provider,
    pub upstream: &'a ProviderEndpoint,
    pub body: &'a SplicedBody,
    /// Time the attempt may take, up to its response header.
    pub budget: Duration,
    /// Whether that budget is the request's deadline (a timeout is then `deadline`).
    pub bounded_by_deadline: bool,
}

/// One attempt as its family authorizes it (`wire::vendor::authorization`): keys already in
/// the headers; a signature over the exact bytes sent, with the current keys, made last; or a
/// minted bearer token. The two rare paths are boxed: an inline future sizes the attempt loop's
/// and each one above it, all moved once per request. `Err`: the request could not be signed.
pub(super) async fn authorized_exchange(call: Call<'_>, header: RequestHeader) -> Result<Exchange> {
    Ok(match vendor::authorization(call.provider.api()) {
        vendor::Authorization::InHeaders => exchange(call, header).await,
        vendor::Authorization::MintedBearer => Box::pin(minted_bearer_exchange(call, header)).await,
        vendor::Authorization::SignedBody => Box::pin(signed_exchange(call, header)).await?,
    })
}

/// A signing family's attempt: the current keys (fixed, or temporary ones from IRSA / Pod
/// Identity), then the signature over the exact bytes sent. No keys to be had is the attempt's
/// `auth_failed`, nothing sent.
async fn signed_exchange(call: Call<'_>, mut header: RequestHeader) -> Result<Exchange> {
    let Call {
        shared,
        provider,
        body,
        budget,
        ..
    } = call;
    let Some(creds) = signing_credentials(shared, provider, budget).await else {
        return Ok(Exchange::Failed {
            reason: FailoverReason::AuthFailed,
            status: None,
            retry_after_s: None,
        });
    };
    let whole = body.to_vec();
    if let Err(e) = vendor::sign(&mut header, provider, &creds, &whole, SystemTime::now()) {
        return Error::e_explain(ErrorType::InternalError, format!("request signing: {e}"));
    }
    Ok(exchange(call, header).await)
}

/// The provider's current minted credential (a Vertex token, temporary AWS keys), minted now
/// within `budget` when none is current.
async fn current_token(
    shared: &Shared,
    provider: &Provider,
    budget: Duration,
) -> Option<std::sync::Arc<crate::serve::credentials::Token>> {
    let net = crate::serve::credentials::Net {
        connector: &shared.connector,
        resolver: &shared.resolver,
    };
    let need = crate::serve::credentials::Need::Request;
    match fast_timeout(budget, shared.tokens.bearer(net, provider, need)).await {
        Ok(Ok(t)) => Some(t),
        _ => None,
    }
}

/// The AWS keys to sign a Bedrock request with: fixed ones as they are, temporary ones from
/// the credential store (minted off the request path; within `budget` if none is current).
async fn signing_credentials(
    shared: &Shared,
    provider: &Provider,
    budget: Duration,
) -> Option<crate::model::AwsCredentials> {
    match provider.aws().map(|a| &a.credentials) {
        Some(crate::model::AwsCredentialSource::Fixed(c)) => Some(c.clone()),
        Some(_) => current_token(shared, provider, budget)
            .await
            .and_then(|t| t.aws.clone()),
        None => None,
    }
}

/// A Vertex attempt: the current access token in `Authorization`; a 401 (a token revoked or
/// expired early) invalidates it and is retried once with a freshly minted one, inside the same
/// budget. No token to be had is the attempt's `auth_failed`, nothing sent.
async fn minted_bearer_exchange(call: Call<'_>, header: RequestHeader) -> Exchange {
    let Call {
        shared,
        provider,
        budget,
        ..
    } = call;
    let started = Instant::now();
    let auth_failed = |status| Exchange::Failed {
        reason: FailoverReason::AuthFailed,
        status,
        retry_after_s: None,
    };
    for retry in [false, true] {
        let left = budget.saturating_sub(started.elapsed());
        let Some(token) = current_token(shared, provider, left).await else {
            return auth_failed(None);
        };
        let mut h = header.clone();
        if h.insert_header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.value.expose()),
        )
        .is_err()
        {
            return auth_failed(None);
        }
        let left = Call {
            budget: budget.saturating_sub(started.elapsed()),
            ..call
        };
        let result = exchange(left, h).await;
        match result {
            Exchange::Failed {
                status: Some(401), ..
            } if !retry => {
                log::warn!(
                    "provider {}: access token refused (401); minting a new one and retrying once",
                    provider.name
                );
                shared.tokens.invalidate(&provider.name);
            }
            other => return other,
        }
    }
    auth_failed(Some(401))
}

/// One attempt against one provider, up to its response header.
async fn exchange(call: Call<'_>, header: RequestHeader) -> Exchange {
    let Call {
        shared,
        provider,
        upstream,
        body,
        budget,
        bounded_by_deadline,
    } = call;
    let failed = |reason| Exchange::Failed {
        reason,
        status: None,
        retry_after_s: None,
    };
    let started = Instant::now();
    let addr = match fast_timeout(
        budget,
        shared
            .resolver
            .resolve(&upstream.base.host, upstream.base.port),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            log::warn!("provider {}: {e}", provider.name);
            return failed(FailoverReason::DnsFailure);
        }
        Err(_) => return failed(FailoverReason::ConnectTimeout),
    };
    let mut peer = Box::new(HttpPeer::new(
        addr,
        upstream.base.tls,
        upstream.base.host.clone(),
    ));
    let connect = provider.timeouts.connect.min(budget);
    peer.options.connection_timeout = Some(connect);
    peer.options.total_connection_timeout = Some(budget);
    peer.options.verify_cert = provider.tls_verify;
    peer.options.verify_hostname = provider.tls_verify;
    peer.options.idle_timeout = Some(POOL_IDLE);

    let mut phase = AttemptPhase::Connect;
    let work = async {
        // Boxed: Pingora's connect future is ~9 KB (its TLS handshake), and held inline it
        // would size every future above this one, each of which is moved (copied) at least
        // once per request: ~70 KB of memcpy a request before, by valgrind's count.
        let (mut up, _reused) = Box::pin(shared.connector.get_http_session(&*peer)).await?;
        phase = AttemptPhase::Exchange;
        // The whole exchange is bounded by `budget` below; per-read timeouts apply to the body.
        up.set_read_timeout(None);
        up.write_request_header(Box::new(header)).await?;
        // Pingora's streams write unbuffered: each piece is a send(2). Small bodies go out as one
        // piece (a copy of a few KiB costs less than the syscalls); large ones as the shared
        // slices, never copied.
        if body.len() <= COALESCE_BELOW && body.parts.len() > 1 {
            up.write_request_body(Bytes::from(body.to_vec()), false)
                .await?;
        } else {
            for part in &body.parts {
                if !part.is_empty() {
                    up.write_request_body(part.clone(), false).await?;
                }
            }
        }
        up.finish_request_body().await?;
        up.read_response_header().await?;
        Ok::<_, Box<Error>>(up)
    };
    let result = fast_timeout(budget, work).await;
    let ttfb = started.elapsed();
    let mut up = match result {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            let reason = classify_error(phase, e.etype());
            log::debug!("provider {}: {} ({e})", provider.name, reason);
            return failed(reason);
        }
        Err(_) => {
            return failed(if bounded_by_deadline {
                FailoverReason::Deadline
            } else if phase == AttemptPhase::Connect {
                FailoverReason::ConnectTimeout
            } else {
                FailoverReason::FirstByteTimeout
            })
        }
    };
    let Some(resp) = up.response_header() else {
        return failed(FailoverReason::Reset);
    };
    let status = resp.status.as_u16();
    match classify_status(status) {
        StatusClass::Final if body_decides(status) => {
            // Read the (small) error body within what is left of the budget: it decides
            // between "pass this error on" and "this offering is gone, try the next".
            let left = budget.saturating_sub(started.elapsed());
            let (prefix, complete) =
                match read_error_body(&mut up, left, bounded_by_deadline, &provider.name).await {
                    Ok(read) => read,
                    Err(reason) => return failed(reason),
                };
            // A body over the cap is no error message a provider sends about a model. The
            // family's own error table (Bedrock's x-amzn-ErrorType) decides before the body's.
            let family_verdict = up
                .response_header()
                .and_then(|h| vendor::error_verdict(provider.api(), &h.headers, &prefix));
            let verdict = match family_verdict {
                Some(verdict) => verdict,
                None if complete => classify_error_body(status, &prefix),
                None => None,
            };
            up.set_read_timeout(Some(provider.timeouts.idle));
            Exchange::Answer {
                upstream: Box::new(up),
                peer,
                ttfb,
                prefix: Some(prefix),
                verdict,
            }
        }
        StatusClass::Final => {
            up.set_read_timeout(Some(provider.timeouts.idle));
            Exchange::Answer {
                upstream: Box::new(up),
                peer,
                ttfb,
                prefix: None,
                verdict: None,
            }
        }
        StatusClass::Retry(mut reason) => {
            let retry_after_s = resp
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v.as_bytes()));
            if status == 429 {
                // A 429 is a short rate limit or an account out of quota; only the body tells.
                // Its body comes with the header; a body that does not is not waited for long.
                let left = budget
                    .saturating_sub(started.elapsed())
                    .min(Duration::from_millis(250));
                if let Ok((body, true)) =
                    read_error_body(&mut up, left, bounded_by_deadline, &provider.name).await
                {
                    if account_problem(status, &body) {
                        reason = FailoverReason::ProviderAccount;
                    }
                }
            }
            // The connection is dropped rather than pooled.
            Exchange::Failed {
                reason,
                status: Some(status),
                retry_after_s,
            }
        }
    }
}

/// Read an error body (bounded in size and by `left`): `(body, complete)`, or the failure a
/// broken or silent body is.
pub(super) async fn read_error_body(
    up: &mut HttpSession,
    left: Duration,
    bounded_by_deadline: bool,
    provider: &str,
) -> std::result::Result<(Bytes, bool), FailoverReason> {
    let mut buf = BytesMut::new();
    let read = async {
        while buf.len() < MAX_ERROR_BODY {
            match up.read_response_body().await? {
                Some(chunk) => buf.extend_from_slice(&chunk),
                None => return Ok(true),
            }
        }
        Ok::<_, Box<Error>>(false)
    };
    match fast_timeout(left, read).await {
        Ok(Ok(complete)) => Ok((buf.freeze(), complete)),
        Ok(Err(e)) => {
            log::debug!("provider {provider}: error body broke ({e})");
            Err(FailoverReason::Reset)
        }
        Err(_) => Err(if bounded_by_deadline {
            FailoverReason::Deadline
        } else {
            FailoverReason::FirstByteTimeout
        }),
    }
}

/// Hand a finished upstream connection back to Pingora's pool. Boxed: the pool's future is
/// ~3 KB, and inline it would size `relay`'s and the attempt loop's futures, moved once per
/// request each (see `exchange`).
pub(super) async fn pool_again(shared: &Shared, upstream: Box<HttpSession>, peer: &HttpPeer) {
    Box::pin(
        shared
            .connector
            .release_http_session(*upstream, peer, Some(POOL_IDLE)),
    )
    .await;
}
