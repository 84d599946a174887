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

/// What sees an answer as it is written (`serve::idempotency::Recording`). A trait, so the
/// recording's own module (which replays answers through here) is not imported by this one.
pub trait Tap: Sync {
    fn head(&self, h: &ResponseHeader);
    fn body(&self, b: &Bytes);
}

pub struct Downstream<'s> {
    session: &'s mut Session,
    tap: Option<&'s dyn Tap>,
}

impl<'s> Downstream<'s> {
    pub fn new(session: &'s mut Session, tap: Option<&'s dyn Tap>) -> Downstream<'s> {
        Downstream { session, tap }
    }

    pub async fn write_header(&mut self, h: Box<ResponseHeader>, end: bool) -> Result<()> {
        if let Some(t) = self.tap {
            t.head(&h);
        }
        self.session
            .write_response_header(h, end)
            .await
            .map_err(Error::into_down)
    }

    pub async fn write_body(&mut self, body: Option<Bytes>, end: bool) -> Result<()> {
        if let (Some(t), Some(b)) = (self.tap, body.as_ref()) {
            t.body(b);
        }
        self.session
            .write_response_body(body, end)
            .await
            .map_err(Error::into_down)
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
