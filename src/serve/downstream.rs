//! The client side of one request: the Pingora session, and (for a request with an
//! `Idempotency-Key`, or one the prompt cache keeps) the tap that records the answer as written.
//! Every answer twinroute writes goes through here, so a recording never misses a byte.
//! A failed write is marked as the client's side (`into_down`): Pingora leaves a session write's
//! error unattributed, and the proxy tells a client that left from a failure of its own by it
//! (`suppress_error_log`, `fail_to_proxy`), so a cancelled stream is not logged as an error.

use crate::model::endpoint::Family;
use crate::wire::errors::GatewayError;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, Result};
use std::ops::{Deref, DerefMut};

/// What sees an answer as it is written (`serve::recording::Recording`, an idempotency leader). A trait, so the
/// recording's own module (which replays answers through here) is not imported by this one.
pub trait Tap: Sync {
    fn head(&self, h: &ResponseHeader);
    fn body(&self, b: &Bytes);
    /// Someone else reads this answer through the tap now (a duplicate following an
    /// idempotency leader): the answer is worth finishing after this request's own client left.
    fn followed(&self) -> bool {
        false
    }
}

/// Two taps seeing the same answer (the request's own recording and an idempotency leader).
pub struct Both<'a>(pub &'a dyn Tap, pub &'a dyn Tap);

impl Tap for Both<'_> {
    fn head(&self, h: &ResponseHeader) {
        self.0.head(h);
        self.1.head(h);
    }

    fn body(&self, b: &Bytes) {
        self.0.body(b);
        self.1.body(b);
    }

    fn followed(&self) -> bool {
        self.0.followed() || self.1.followed()
    }
}

pub struct Downstream<'s> {
    session: &'s mut Session,
    tap: Option<&'s dyn Tap>,
    /// This request's client left while others followed its answer: what is still written goes
    /// to the tap only.
    client_gone: bool,
    /// Headers this request's answer carries whatever it is (a team's rate-limit state): added
    /// after the tap saw the header, so a kept answer never replays another request's.
    extra: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl<'s> Downstream<'s> {
    pub fn new(session: &'s mut Session, tap: Option<&'s dyn Tap>) -> Downstream<'s> {
        Downstream {
            session,
            tap,
            client_gone: false,
            extra: Vec::new(),
        }
    }

    /// The extra headers, for a writer that puts them on the header itself (the relay, on
    /// `http`'s map); none are added by `write_header` after.
    pub fn take_headers(&mut self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        std::mem::take(&mut self.extra)
    }

    /// Add `extra` to the answer's header, whatever writes it.
    pub fn with_headers(mut self, extra: Vec<(http::HeaderName, http::HeaderValue)>) -> Self {
        self.extra = extra;
        self
    }

    /// The client left while the answer was still written for those following it.
    pub fn client_gone(&self) -> bool {
        self.client_gone
    }

    /// A failed client write: the error (the client's side), unless others follow the answer
    /// through the tap, who must not be cut off because one client hung up: then the answer
    /// goes on for them (the upstream keeps running) and this client is written no more.
    fn client_failed(&mut self, e: Box<Error>) -> Result<()> {
        if self.tap.is_some_and(|t| t.followed()) {
            log::debug!("client left mid-answer; finishing it for those following it ({e})");
            self.client_gone = true;
            self.session.set_keepalive(None);
            return Ok(());
        }
        Err(e.into_down())
    }

    /// Written after the client left: fine while someone follows, else the client's error.
    fn after_gone(&self) -> Result<()> {
        if self.tap.is_some_and(|t| t.followed()) {
            return Ok(());
        }
        Error::e_explain(
            pingora::ErrorType::ConnectionClosed,
            "the client left and nobody follows its answer",
        )
        .map_err(Error::into_down)
    }

    pub async fn write_header(&mut self, h: Box<ResponseHeader>, end: bool) -> Result<()> {
        if let Some(t) = self.tap {
            t.head(&h);
        }
        if self.client_gone {
            return self.after_gone();
        }
        let mut h = h;
        for (k, v) in &self.extra {
            h.insert_header(k.clone(), v.clone())?;
        }
        match self.session.write_response_header(h, end).await {
            Ok(()) => Ok(()),
            Err(e) => self.client_failed(e),
        }
    }

    pub async fn write_body(&mut self, body: Option<Bytes>, end: bool) -> Result<()> {
        if let (Some(t), Some(b)) = (self.tap, body.as_ref()) {
            t.body(b);
        }
        if self.client_gone {
            return self.after_gone();
        }
        match self.session.write_response_body(body, end).await {
            Ok(()) => Ok(()),
            Err(e) => self.client_failed(e),
        }
    }

    /// twinroute's own error as the whole answer, in the client's API format; `extra` are
    /// headers such as the attempt count.
    pub async fn write_error(
        &mut self,
        e: &GatewayError,
        family: Family,
        extra: &[(&'static str, String)],
    ) -> Result<()> {
        let body = e.body(family);
        let mut h = e.header(body.len())?;
        for (k, v) in extra {
            h.insert_header(*k, v.as_str())?;
        }
        self.write_header(Box::new(h), false).await?;
        self.write_body(Some(body), true).await
    }
}

impl Deref for Downstream<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session
    }
}

impl DerefMut for Downstream<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session
    }
}
