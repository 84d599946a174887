//! A minimal HTTP/1.1 client (hyper) used by `demo` and the black-box tests to talk to a running
//! twinroute: send one request, get status, headers and body, with chunk arrival times so
//! streaming can be checked.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// Body chunks with the time each arrived, from the moment the request was sent.
    pub chunks: Vec<(Duration, Bytes)>,
    /// The body ended with an error (connection cut before the end).
    pub broken: bool,
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("request failed: {e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut all = Vec::new();
    let mut chunks = Vec::new();
    let mut broken = false;
    loop {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    all.extend_from_slice(&d);
                    chunks.push((start.elapsed(), d));
                }
            }
            Some(Err(_)) => {
                broken = true;
                break;
            }
            None => break,
        }
    }
    Ok(Reply {
        status,
        headers,
        body: all,
        chunks,
        broken,
        elapsed: start.elapsed(),
    })
}

pub async fn post_json(
    url: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Result<Reply, String> {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send("POST", url, &h, body.to_string()).await
}

pub async fn get(url: &str) -> Result<Reply, String> {
    send("GET", url, &[], Bytes::new()).await
}
