//! OpenAI and OpenAI-compatible hosts: `Authorization: Bearer <key>`.

use crate::model::Secret;
use pingora::http::RequestHeader;
use pingora::Result;

pub fn authorize(key: Option<&Secret>, req: &mut RequestHeader) -> Result<()> {
    if let Some(key) = key {
        req.insert_header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", key.expose()),
        )?;
    }
    Ok(())
}
