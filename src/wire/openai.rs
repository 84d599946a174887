//! OpenAI and OpenAI-compatible hosts: `Authorization: Bearer <key>`.

use crate::model::Secret;
use pingora::http::RequestHeader;
use pingora::Result;

/// The model listing under an API root (`/v1` when the base URL has no path).
pub fn listing_path(base_path: &str) -> String {
    if base_path.is_empty() {
        "/v1/models".to_string()
    } else {
        format!("{base_path}/models")
    }
}

pub fn authorize(key: Option<&Secret>, req: &mut RequestHeader) -> Result<()> {
    if let Some(key) = key {
        req.insert_header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", key.expose()),
        )?;
    }
    Ok(())
}
