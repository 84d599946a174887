//! `twinroute inject-webhook`: the mutating admission webhook served over TLS.
//!
//! `POST /mutate` takes an AdmissionReview and answers with `review`'s verdict; `GET /healthz`
//! is for the kubelet. A Pingora `ServeHttp` app on a rustls listener; the pure decision lives
//! in `inject::review`. The certificate is loaded at start: the chart restarts the webhook when
//! its generated certificate changes, and with cert-manager a rollout restart picks up renewals.

use super::{review, InjectorSettings};
use async_trait::async_trait;
use bytes::BytesMut;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::time::Duration;

/// AdmissionReviews are a pod spec or two; anything larger is not one.
const MAX_REVIEW_BYTES: usize = 3 << 20;

pub struct Webhook {
    pub settings: InjectorSettings,
}

fn respond(status: u16, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for Webhook {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => respond(200, b"{\"ok\":true}".to_vec()),
            ("POST", "/mutate") => {
                let mut buf = BytesMut::new();
                let read = async {
                    while let Some(chunk) = session.read_request_body().await? {
                        if buf.len() + chunk.len() > MAX_REVIEW_BYTES {
                            return Ok::<bool, Box<pingora::Error>>(false);
                        }
                        buf.extend_from_slice(&chunk);
                    }
                    Ok(true)
                };
                match tokio::time::timeout(Duration::from_secs(10), read).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        return respond(413, b"{\"error\":\"AdmissionReview too large\"}".to_vec())
                    }
                    _ => {
                        return respond(
                            400,
                            b"{\"error\":\"could not read the AdmissionReview\"}".to_vec(),
                        )
                    }
                }
                let (status, body) = review(&buf, &self.settings);
                log::info!(
                    target: "twinroute::inject",
                    "admission review: {} bytes -> {status}",
                    buf.len()
                );
                respond(status, body)
            }
            _ => respond(
                404,
                b"{\"error\":\"POST /mutate or GET /healthz\"}".to_vec(),
            ),
        }
    }
}

/// Build the webhook server: TLS on `listen` with the given PEM files, or plain HTTP when both
/// are `None` (local testing only; the API server requires TLS).
pub fn build(
    listen: &str,
    tls: Option<(&str, &str)>,
    settings: InjectorSettings,
) -> pingora::Result<Server> {
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: std::env::temp_dir()
            .join(format!("twinroute-webhook-{}.pid", std::process::id()))
            .to_string_lossy()
            .into_owned(),
        upgrade_sock: std::env::temp_dir()
            .join(format!("twinroute-webhook-{}.sock", std::process::id()))
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut svc = Service::new("twinroute inject-webhook".to_string(), Webhook { settings });
    match tls {
        Some((cert, key)) => svc.add_tls(listen, cert, key)?,
        None => svc.add_tcp(listen),
    }
    svc.threads = Some(1);
    server.add_service(svc);
    Ok(server)
}
