//! OpenAI and OpenAI-compatible hosts: `Authorization: Bearer <key>`.

use crate::config::Provider;
use pingora::http::RequestHeader;
use pingora::Result;

pub fn authorize(provider: &Provider, req: &mut RequestHeader) -> Result<()> {
    if let Some(key) = &provider.key {
        req.insert_header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", key.expose()),
        )?;
    }
    Ok(())
}
