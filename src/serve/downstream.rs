//! The client side of one request as the attempt executor writes to it: the Pingora session,
//! and (for a request with an `Idempotency-Key`) the recording that duplicates of it replay.
//! Everything `serve::forward` sends goes through here, so a recording never misses a byte.
//! A failed write is marked as the client's side (`into_down`): Pingora leaves a session write's
//! error unattributed, and the proxy tells a client that left from a failure of its own by it
//! (`suppress_error_log`, `fail_to_proxy`), so a cancelled stream is not logged as an error.

use crate::serve::idempotency::Recording;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, Result};
use std::ops::{Deref, DerefMut};

pub struct Downstream<'s> {
    session: &'s mut Session,
    tap: Option<&'s Recording>,
}

impl<'s> Downstream<'s> {
    pub fn new(session: &'s mut Session, tap: Option<&'s Recording>) -> Downstream<'s> {
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
