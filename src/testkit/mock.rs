//! Built-in mock LLM providers: real HTTP/1.1 servers on loopback (hyper) that speak the OpenAI
//! and Anthropic wire formats and can be told to fail in every way a real provider fails:
//! error statuses (with Retry-After), hanging, resetting the connection, a slow first byte, a
//! stream that dies halfway. They record every request they receive, so tests and the demo can
//! show exactly what crossed the wire.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How the mock answers a completion request.
#[derive(Debug, Clone, PartialEq)]
pub enum Behavior {
    /// A normal answer (an SSE stream when the request has `"stream": true`).
    Ok,
    /// An error status with a JSON body and optional `Retry-After` seconds.
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// Accept and read the request, never answer.
    Hang,
    /// Close the connection without any response.
    Reset,
    /// Answer normally after this delay.
    Delay(Duration),
    /// Start an SSE stream, send this many chunks, then cut the connection.
    StreamThenDie { chunks: usize },
    /// Answer 200 with exactly this JSON body (a scripted answer: tool calls, usage, ...).
    Json(String),
    /// Answer 200 with exactly these SSE events, 5 ms apart.
    Sse(Vec<String>),
    /// Bedrock only: stream this many chunk events, then an `exception` frame of this kind.
    BedrockException { after: usize, kind: String },
    /// Answer with a redirect (`status` 3xx) to `location`, as a hijacked or moved endpoint
    /// would: a client that follows it sends its request there.
    Redirect { status: u16, location: String },
    /// Stream this whole answer text in word pieces; a request that ends with an assistant turn
    /// (a prefill) gets only what follows the prefill, as a real model continues it.
    Complete { text: String },
    /// Answer 200 with a scripted body: each part sent after its delay; then the body ends, or
    /// with `cut` the connection is cut instead. `content_length` announces a length (a cut
    /// before it is a truncated body).
    Script {
        content_type: String,
        parts: Vec<(Duration, String)>,
        cut: bool,
        content_length: Option<usize>,
    },
}

/// What the mock plays of Google Cloud: a token endpoint (`POST /token`, the JWT bearer grant),
/// a metadata server (`GET /computeMetadata/v1/...`) and Vertex AI's Anthropic rawPredict.
#[derive(Debug, Clone)]
pub struct GoogleMock {
    /// The service account whose RS256 signature `POST /token` checks (PKCS#8 PEM).
    pub client_email: String,
    pub private_key_pem: String,
    /// Lifetime of the tokens it issues.
    pub token_ttl: Duration,
}

/// How the mock Bedrock checks a request's credentials, as the real service does.
#[derive(Debug, Clone, PartialEq)]
pub enum BedrockAuth {
    /// SigV4: the signature is recomputed from the received request with this secret.
    SigV4 {
        access_key_id: String,
        secret_access_key: String,
    },
    /// A Bedrock API key sent as `Authorization: Bearer`.
    Bearer(String),
    /// Temporary keys this mock issued as STS or a container-credentials endpoint (`AwsMock`):
    /// signed with their secret, sent with their session token, and not expired.
    Issued,
}

/// What the mock plays of AWS's credential services: STS `AssumeRoleWithWebIdentity` (`POST /`)
/// and a container-credentials endpoint (`GET /container-credentials`).
#[derive(Debug, Clone)]
pub struct AwsMock {
    /// The web identity token STS accepts (the projected service-account token).
    pub web_identity_token: String,
    pub role_arn: String,
    /// The `Authorization` the container endpoint accepts.
    pub container_token: String,
    /// Lifetime of the keys it issues.
    pub ttl: Duration,
}

impl Behavior {
    /// A scripted SSE stream: each event after its delay, then ended (or cut).
    pub fn sse_script(parts: Vec<(Duration, String)>, cut: bool) -> Behavior {
        Behavior::Script {
            content_type: "text/event-stream".into(),
            parts,
            cut,
            content_length: None,
        }
    }

    /// An error status with an empty JSON body and no Retry-After.
    pub fn status(status: u16) -> Behavior {
        Behavior::Status {
            status,
            body: "{}".into(),
            retry_after: None,
        }
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When it arrived (rates are checked on these).
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Debug)]
struct State {
    name: String,
    behavior: Behavior,
    /// One-shot behaviours used before `behavior`, in order.
    queue: VecDeque<Behavior>,
    /// Behaviour for requests naming one model, over everything else: a provider that lost
    /// one model and still serves the rest.
    per_model: HashMap<String, Behavior>,
    requests: Vec<Recorded>,
    probe_status: u16,
    probe_delay: Duration,
    models: Vec<String>,
    sse_chunks: usize,
    sse_interval: Duration,
    /// Off for load tests: recording every body would grow without bound.
    record: bool,
    /// Refuse, as the real API does, a body its wire format does not accept (`validate`).
    strict: bool,
    /// Serve Bedrock's InvokeModel paths, checking credentials this way.
    bedrock: Option<BedrockAuth>,
    /// Serve Google's token endpoint, metadata server and Vertex rawPredict.
    google: Option<GoogleMock>,
    /// Play AWS's credential services.
    aws: Option<AwsMock>,
    /// Temporary keys issued: (access key id, secret, session token, expiry).
    aws_issued: Vec<(String, String, String, std::time::Instant)>,
    /// Access tokens issued, with when each expires; `revoke_tokens` empties it.
    tokens: Vec<(String, std::time::Instant)>,
    tokens_issued: usize,
}

/// A running mock provider. Dropping it does not stop it; call `stop`.
#[derive(Clone)]
pub struct MockProvider {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    connections: Arc<AtomicUsize>,
    open_connections: Arc<AtomicUsize>,
    stop: Arc<tokio::sync::Notify>,
}

type MockBody = BoxBody<Bytes, std::io::Error>;

/// A response body fed from a channel; an `Err` item aborts the connection mid-body.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn full(b: impl Into<Bytes>) -> MockBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Counts a connection as open until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MockProvider {
    /// Start a mock on 127.0.0.1 with an OS-assigned port, on the current tokio runtime.
    pub async fn start(name: &str) -> std::io::Result<MockProvider> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?, name).await
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> std::io::Result<MockProvider> {
        // A deep accept queue: benchmarks open thousands of streams at once.
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener: TcpListener = socket.listen(8192)?;
        let addr = listener.local_addr()?;
        let mock = MockProvider {
            addr,
            state: Arc::new(Mutex::new(State {
                name: name.to_string(),
                behavior: Behavior::Ok,
                queue: VecDeque::new(),
                per_model: HashMap::new(),
                requests: Vec::new(),
                probe_status: 200,
                probe_delay: Duration::ZERO,
                models: Vec::new(),
                sse_chunks: 5,
                sse_interval: Duration::from_millis(10),
                record: true,
                strict: false,
                bedrock: None,
                google: None,
                aws: None,
                aws_issued: Vec::new(),
                tokens: Vec::new(),
                tokens_issued: 0,
            })),
            connections: Arc::new(AtomicUsize::new(0)),
            open_connections: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(tokio::sync::Notify::new()),
        };
        let m = mock.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = m.stop.notified() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                m.connections.fetch_add(1, Ordering::SeqCst);
                m.open_connections.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(m.open_connections.clone());
                let m2 = m.clone();
                let stop = m.stop.clone();
                tokio::spawn(async move {
                    let _guard = guard;
                    let svc = service_fn(move |req| {
                        let m3 = m2.clone();
                        async move { m3.handle(req).await }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.notified() => {}
                    }
                });
            }
        });
        Ok(mock)
    }

    /// Stop accepting and close every open connection: afterwards the port refuses connections.
    pub fn stop(&self) {
        self.stop.notify_waiters();
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_behavior(&self, b: Behavior) {
        self.lock().behavior = b;
    }

    /// Answer requests for `model` (the ID on the wire) this way until cleared with `None`.
    pub fn set_model_behavior(&self, model: &str, b: Option<Behavior>) {
        let mut s = self.lock();
        match b {
            Some(b) => s.per_model.insert(model.to_string(), b),
            None => s.per_model.remove(model),
        };
    }

    /// Use `b` for the next request only (queued after earlier one-shots).
    pub fn push_once(&self, b: Behavior) {
        self.lock().queue.push_back(b);
    }

    /// Check every completion request the way the real API does and answer 400 in its error
    /// shape when it would (see `validate`).
    pub fn set_strict(&self, strict: bool) {
        self.lock().strict = strict;
    }

    /// Play AWS Bedrock Runtime (`/model/{id}/invoke[-with-response-stream]`), checking every
    /// request's credentials with `auth` and its body as Bedrock does.
    pub fn set_bedrock(&self, auth: BedrockAuth) {
        self.lock().bedrock = Some(auth);
    }

    /// Play Google: token endpoint, metadata server, Vertex (see `GoogleMock`).
    pub fn set_google(&self, g: GoogleMock) {
        self.lock().google = Some(g);
    }

    /// Play STS and a container-credentials endpoint (see `AwsMock`).
    pub fn set_aws(&self, a: AwsMock) {
        self.lock().aws = Some(a);
    }

    /// Temporary AWS keys issued so far.
    pub fn aws_keys_issued(&self) -> usize {
        self.lock().aws_issued.len()
    }

    /// Forget every issued token: the next Vertex call with one answers 401.
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Access tokens issued so far (token endpoint and metadata server).
    pub fn tokens_issued(&self) -> usize {
        self.lock().tokens_issued
    }

    pub fn set_record(&self, record: bool) {
        self.lock().record = record;
    }

    pub fn set_probe_status(&self, status: u16) {
        self.lock().probe_status = status;
    }

    pub fn set_probe_delay(&self, d: Duration) {
        self.lock().probe_delay = d;
    }

    pub fn set_models(&self, models: &[&str]) {
        self.lock().models = models.iter().map(|s| s.to_string()).collect();
    }

    pub fn set_stream(&self, chunks: usize, interval: Duration) {
        let mut s = self.lock();
        s.sse_chunks = chunks;
        s.sse_interval = interval;
    }

    /// Requests received, probes excluded.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method != "GET")
            .cloned()
            .collect()
    }

    /// Probe (GET) requests received.
    pub fn probes(&self) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method == "GET")
            .cloned()
            .collect()
    }

    pub fn request_count(&self) -> usize {
        self.requests().len()
    }

    pub fn clear(&self) {
        self.lock().requests.clear();
    }

    pub fn connections_accepted(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn connections_open(&self) -> usize {
        self.open_connections.load(Ordering::SeqCst)
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<MockBody>, std::io::Error> {
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes()
            .to_vec();
        let recorded = Recorded {
            method: method.clone(),
            path: path.clone(),
            headers,
            body,
            at: std::time::Instant::now(),
        };
        let parsed = recorded.json();
        let aws = self.lock().aws.clone();
        if let Some(a) = aws {
            let sts = method == "POST"
                && path == "/"
                && String::from_utf8_lossy(&recorded.body)
                    .contains("Action=AssumeRoleWithWebIdentity");
            if sts || path.starts_with("/container-credentials") {
                let answer = self.aws_credentials(a, sts, &recorded);
                let mut s = self.lock();
                if s.record {
                    s.requests.push(recorded);
                }
                return Ok(answer);
            }
        }
        let google = self.lock().google.clone();
        if let Some(g) = google {
            if path == "/token"
                || path.starts_with("/computeMetadata/")
                || path.starts_with("/v1/projects/")
            {
                return self.google(g, &method, &path, recorded, parsed).await;
            }
        }
        let bedrock = self.lock().bedrock.clone();
        if let (Some(auth), true) = (bedrock, path.starts_with("/model/")) {
            return self.bedrock(auth, &method, &path, recorded, parsed).await;
        }
        let (behavior, name, probe, models, sse) = {
            let mut s = self.lock();
            if s.strict && method != "GET" {
                if let Err(message) = validate(&path, &parsed) {
                    let body = if path.contains("/messages") {
                        json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
                    } else {
                        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
                    };
                    return Response::builder()
                        .status(400)
                        .header("content-type", "application/json")
                        .body(full(body.to_string()))
                        .map_err(std::io::Error::other);
                }
            }
            if s.record {
                s.requests.push(recorded);
            }
            let model = parsed["model"].as_str().unwrap_or_default();
            let b = if method == "GET" {
                Behavior::Ok
            } else if let Some(b) = s.per_model.get(model) {
                b.clone()
            } else {
                s.queue.pop_front().unwrap_or_else(|| s.behavior.clone())
            };
            (
                b,
                s.name.clone(),
                (s.probe_status, s.probe_delay),
                s.models.clone(),
                (s.sse_chunks, s.sse_interval),
            )
        };
        if method == "GET" {
            tokio::time::sleep(probe.1).await;
            let data: Vec<Value> = models
                .iter()
                .map(|m| json!({"id": m, "object": "model"}))
                .collect();
            return Response::builder()
                .status(probe.0)
                .header("content-type", "application/json")
                .body(full(json!({"object": "list", "data": data}).to_string()))
                .map_err(std::io::Error::other);
        }
        let model = parsed["model"].as_str().unwrap_or("unknown").to_string();
        let stream = parsed["stream"].as_bool().unwrap_or(false);
        let anthropic = path.contains("/messages");
        match behavior {
            Behavior::Ok => Ok(answer(&name, &model, &path, anthropic, stream, sse, None)),
            Behavior::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(answer(&name, &model, &path, anthropic, stream, sse, None))
            }
            Behavior::StreamThenDie { chunks } => Ok(answer(
                &name,
                &model,
                &path,
                anthropic,
                true,
                sse,
                Some(chunks),
            )),
            Behavior::Status {
                status,
                body,
                retry_after,
            } => {
                let mut r = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .header("x-mock-provider", name);
                if let Some(s) = retry_after {
                    r = r.header("retry-after", s.to_string());
                }
                r.body(full(body)).map_err(std::io::Error::other)
            }
            Behavior::Redirect { status, location } => Response::builder()
                .status(status)
                .header("location", location)
                .header("content-type", "application/json")
                .header("x-mock-provider", name)
                .body(full(json!({"moved": true}).to_string()))
                .map_err(std::io::Error::other),
            // Bedrock's exception frames exist only on its own paths.
            Behavior::BedrockException { .. } => {
                Ok(answer(&name, &model, &path, anthropic, stream, sse, None))
            }
            Behavior::Json(body) => Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("x-mock-provider", name)
                .body(full(body))
                .map_err(std::io::Error::other),
            Behavior::Sse(events) => Ok(paced(
                events.into_iter().map(Bytes::from).collect(),
                "text/event-stream",
            )),
            Behavior::Script {
                content_type,
                parts,
                cut,
                content_length,
            } => Ok(scripted(&name, &content_type, parts, cut, content_length)),
            Behavior::Complete { text } => {
                let rest = match prefill_of(&parsed) {
                    Some(p) => text.strip_prefix(p.as_str()).unwrap_or(&text).to_string(),
                    None => text,
                };
                let events = text_stream(&name, &model, anthropic, &rest);
                Ok(paced(
                    events.into_iter().map(Bytes::from).collect(),
                    "text/event-stream",
                ))
            }
            Behavior::Hang => {
                std::future::pending::<()>().await;
                Err(std::io::Error::other("unreachable"))
            }
            Behavior::Reset => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "mock reset",
            )),
        }
    }
}

fn answer(
    name: &str,
    model: &str,
    path: &str,
    anthropic: bool,
    stream: bool,
    (chunks, interval): (usize, Duration),
    die_after: Option<usize>,
) -> Response<MockBody> {
    let text = format!("hello from {name}");
    if !stream {
        let v = if path.ends_with("/responses") {
            responses_object(model, "completed", &text, 5)
        } else if anthropic {
            json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                   "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                   "usage": {"input_tokens": 12, "output_tokens": 5}})
        } else if path.ends_with("/embeddings") {
            json!({"object": "list", "model": model,
                   "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                   "usage": {"prompt_tokens": 12, "total_tokens": 12}})
        } else {
            json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})
        };
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("x-mock-provider", name)
            .body(full(v.to_string()))
            .unwrap_or_else(|_| Response::new(full("")));
    }
    let (tx, rx) = mpsc::channel(16);
    let model = model.to_string();
    let responses = path.ends_with("/responses");
    tokio::spawn(async move {
        let events = if responses {
            responses_events(&model, chunks)
        } else {
            sse_events(&model, anthropic, chunks)
        };
        let total = events.len();
        for (i, ev) in events.into_iter().enumerate() {
            if let Some(n) = die_after {
                if i == n.min(total) {
                    let _ = tx
                        .send(Err(std::io::Error::other("mock stream died")))
                        .await;
                    return;
                }
            }
            if tx.send(Ok(Bytes::from(ev))).await.is_err() {
                return;
            }
            tokio::time::sleep(interval).await;
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("x-mock-provider", name)
        .body(BoxBody::new(ChannelBody(rx)))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// A Responses API response object (`POST /v1/responses`), as OpenAI documents it: one
/// assistant `message` item holding `text` as `output_text`, with usage.
pub fn responses_object(model: &str, status: &str, text: &str, output_tokens: usize) -> Value {
    let content = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "output_text", "text": text, "annotations": []}])
    };
    json!({
        "id": "resp_mock", "object": "response", "created_at": 1_741_476_542, "status": status,
        "error": null, "incomplete_details": null, "instructions": null,
        "max_output_tokens": null, "model": model,
        "output": if text.is_empty() { json!([]) } else { json!([{
            "id": "msg_mock", "type": "message", "status": "completed", "role": "assistant",
            "content": content}]) },
        "parallel_tool_calls": true, "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null}, "store": true, "temperature": 1.0,
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
        "truncation": "disabled",
        "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": output_tokens,
                  "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": 12 + output_tokens},
        "user": null, "metadata": {}
    })
}

/// A streamed Responses answer as OpenAI sends it: typed events (`event:` and a `type` field,
/// `sequence_number`s in order) from `response.created` to `response.completed`, and no
/// `data: [DONE]` (that is chat completions' terminator, not this API's).
pub fn responses_events(model: &str, chunks: usize) -> Vec<String> {
    let text: String = (0..chunks).map(|i| format!("tok{i} ")).collect();
    let mut seq = 0;
    let mut out = Vec::new();
    let mut push = |kind: &str, mut v: Value| {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(seq);
        seq += 1;
        out.push(format!("event: {kind}\ndata: {v}\n\n"));
    };
    let started = responses_object(model, "in_progress", "", 0);
    push("response.created", json!({"response": started}));
    push("response.in_progress", json!({"response": started}));
    let item = |status: &str, text: &str| {
        let content = if status == "in_progress" {
            json!([])
        } else {
            json!([{"type": "output_text", "text": text, "annotations": []}])
        };
        json!({"id": "msg_mock", "type": "message", "status": status, "role": "assistant", "content": content})
    };
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": item("in_progress", "")}),
    );
    let at = json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0});
    let with = |extra: Value| {
        let mut v = at.clone();
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        v
    };
    push(
        "response.content_part.added",
        with(json!({"part": {"type": "output_text", "text": "", "annotations": []}})),
    );
    for i in 0..chunks {
        push(
            "response.output_text.delta",
            with(json!({"delta": format!("tok{i} "), "logprobs": []})),
        );
    }
    push(
        "response.output_text.done",
        with(json!({"text": text, "logprobs": []})),
    );
    push(
        "response.content_part.done",
        with(json!({"part": {"type": "output_text", "text": text, "annotations": []}})),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": item("completed", &text)}),
    );
    push(
        "response.completed",
        json!({"response": responses_object(model, "completed", &text, chunks)}),
    );
    out
}

/// The events of a streamed answer with `chunks` content deltas, ending with usage and the
/// format's end marker.
pub fn sse_events(model: &str, anthropic: bool, chunks: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(chunks + 4);
    if anthropic {
        out.push(format!(
            "event: message_start\ndata: {}\n\n",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [], "usage": {"input_tokens": 12, "output_tokens": 0}}})
        ));
        for i in 0..chunks {
            out.push(format!(
                "event: content_block_delta\ndata: {}\n\n",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("tok{i} ")}})
            ));
        }
        out.push(format!(
            "event: message_delta\ndata: {}\n\n",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": chunks}})
        ));
        out.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    } else {
        for i in 0..chunks {
            out.push(format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]})
            ));
        }
        out.push(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}})
        ));
        out.push("data: [DONE]\n\n".to_string());
    }
    out
}

impl MockProvider {
    /// One Bedrock InvokeModel request: credentials, path, body, then the scripted behaviour.
    async fn bedrock(
        &self,
        auth: BedrockAuth,
        method: &str,
        path: &str,
        recorded: Recorded,
        parsed: Value,
    ) -> std::io::Result<Response<MockBody>> {
        let refuse = |status: u16, kind: &str, message: String| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("x-amzn-errortype", kind)
                .body(full(json!({"message": message}).to_string()))
                .map_err(std::io::Error::other)
        };
        let authorized = match &auth {
            BedrockAuth::SigV4 {
                access_key_id,
                secret_access_key,
            } => match super::sigv4_check::verify(
                method,
                path,
                &recorded.headers,
                &recorded.body,
                secret_access_key,
            ) {
                Ok(a) if &a.access_key_id != access_key_id => Err((
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.".to_string(),
                )),
                Ok(a) if a.service != "bedrock" => Err((
                    "InvalidSignatureException",
                    format!(
                        "Credential should be scoped to correct service: 'bedrock', not {:?}",
                        a.service
                    ),
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(("InvalidSignatureException", e)),
            },
            BedrockAuth::Issued => {
                let token = recorded
                    .header("x-amz-security-token")
                    .unwrap_or_default()
                    .to_string();
                let akid = recorded
                    .header("authorization")
                    .and_then(|a| super::sigv4_check::parse_authorization(a).ok())
                    .map(|a| a.access_key_id)
                    .unwrap_or_default();
                let issued = self
                    .lock()
                    .aws_issued
                    .iter()
                    .find(|(id, ..)| *id == akid)
                    .cloned();
                match issued {
                    None => Err((
                        "UnrecognizedClientException",
                        "The security token included in the request is invalid.".to_string(),
                    )),
                    Some((_, secret, session, until)) => {
                        if until <= std::time::Instant::now() {
                            Err((
                                "ExpiredTokenException",
                                "The security token included in the request is expired".to_string(),
                            ))
                        } else if session != token {
                            Err((
                                "UnrecognizedClientException",
                                "The security token included in the request is invalid."
                                    .to_string(),
                            ))
                        } else {
                            super::sigv4_check::verify(
                                method,
                                path,
                                &recorded.headers,
                                &recorded.body,
                                &secret,
                            )
                            .map(|_| ())
                            .map_err(|e| ("InvalidSignatureException", e))
                        }
                    }
                }
            }
            BedrockAuth::Bearer(token) => {
                if recorded.header("authorization") == Some(format!("Bearer {token}").as_str()) {
                    Ok(())
                } else {
                    Err(("UnrecognizedClientException", "Invalid API key".to_string()))
                }
            }
        };
        {
            let mut s = self.lock();
            if s.record {
                s.requests.push(recorded);
            }
        }
        if let Err((kind, message)) = authorized {
            return refuse(403, kind, message);
        }
        let rest = &path["/model/".len()..];
        let (raw_id, op) = rest.rsplit_once('/').unwrap_or((rest, ""));
        let model = percent_encoding::percent_decode_str(raw_id)
            .decode_utf8_lossy()
            .into_owned();
        let stream = match op {
            "invoke" => false,
            "invoke-with-response-stream" => true,
            _ => {
                return refuse(
                    404,
                    "UnknownOperationException",
                    format!("unknown operation {op:?}"),
                )
            }
        };
        if parsed.get("anthropic_version").and_then(Value::as_str) != Some("bedrock-2023-05-31") {
            return refuse(
                400,
                "ValidationException",
                "anthropic_version: bedrock-2023-05-31 is required".into(),
            );
        }
        for k in ["model", "stream"] {
            if parsed.get(k).is_some() {
                return refuse(
                    400,
                    "ValidationException",
                    format!("extraneous key [{k}] is not permitted"),
                );
            }
        }
        let mut as_messages = parsed.clone();
        as_messages
            .as_object_mut()
            .map(|o| o.remove("anthropic_version"));
        as_messages["model"] = json!(model);
        if let Err(m) = validate("/v1/messages", &as_messages) {
            return refuse(400, "ValidationException", m);
        }
        let behavior = {
            let mut s = self.lock();
            match s.per_model.get(&model) {
                Some(b) => b.clone(),
                None => s.queue.pop_front().unwrap_or_else(|| s.behavior.clone()),
            }
        };
        let name = self.lock().name.clone();
        let events = anthropic_stream_events(&model, &format!("hello from {name}"));
        match behavior {
            Behavior::Status { status, body, .. } => Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(full(body))
                .map_err(std::io::Error::other),
            Behavior::Ok if !stream => Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(full(
                    json!({"id": "msg_bdrk_mock", "type": "message", "role": "assistant", "model": model,
                           "content": [{"type": "text", "text": format!("hello from {name}")}],
                           "stop_reason": "end_turn", "stop_sequence": null,
                           "usage": {"input_tokens": 12, "output_tokens": 5}})
                    .to_string(),
                ))
                .map_err(std::io::Error::other),
            Behavior::Ok | Behavior::BedrockException { .. } => {
                let (n, exception) = match &behavior {
                    Behavior::BedrockException { after, kind } => (*after, Some(kind.clone())),
                    _ => (events.len(), None),
                };
                let mut frames: Vec<Bytes> = events.iter().take(n).map(bedrock_chunk).collect();
                if let Some(kind) = exception {
                    frames.push(bedrock_exception(&kind, "The model stream failed."));
                }
                Ok(paced(frames, "application/vnd.amazon.eventstream"))
            }
            other => Err(std::io::Error::other(format!(
                "mock bedrock does not play {other:?}"
            ))),
        }
    }
}

impl MockProvider {
    /// STS AssumeRoleWithWebIdentity (XML) or the container endpoint (JSON): checks the web
    /// identity token / authorization, issues fresh temporary keys.
    fn aws_credentials(&self, a: AwsMock, sts: bool, recorded: &Recorded) -> Response<MockBody> {
        let form = String::from_utf8_lossy(&recorded.body).to_string();
        let field = |k: &str| {
            form.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .map(|v| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
        };
        let refuse = |status: u16, body: String, ct: &str| {
            Response::builder()
                .status(status)
                .header("content-type", ct)
                .body(full(body))
                .unwrap_or_else(|_| Response::new(full("")))
        };
        if sts {
            if field("WebIdentityToken").as_deref() != Some(a.web_identity_token.as_str()) {
                return refuse(400, "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Incorrect token audience</Message></Error></ErrorResponse>".into(), "text/xml");
            }
            if field("RoleArn").as_deref() != Some(a.role_arn.as_str()) {
                return refuse(403, "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error></ErrorResponse>".into(), "text/xml");
            }
        } else if recorded.header("authorization") != Some(a.container_token.as_str()) {
            return refuse(
                401,
                r#"{"Message":"invalid authorization token"}"#.into(),
                "application/json",
            );
        }
        let mut s = self.lock();
        let n = s.aws_issued.len() + 1;
        let (akid, secret, token) = (
            format!("ASIAMOCK{n:08}"),
            format!("mock/secret+{n}/{}", rand::random::<u32>()),
            format!("mock-session-token-{n}-{}", rand::random::<u32>()),
        );
        s.aws_issued.push((
            akid.clone(),
            secret.clone(),
            token.clone(),
            std::time::Instant::now() + a.ttl,
        ));
        drop(s);
        let expiration = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(a.ttl.as_secs() as i64))
            .unwrap_or(jiff::Timestamp::now())
            .to_string();
        let (body, ct) = if sts {
            (format!("<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{akid}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken><Expiration>{expiration}</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"), "text/xml")
        } else {
            (json!({"AccessKeyId": akid, "SecretAccessKey": secret, "Token": token, "Expiration": expiration}).to_string(), "application/json")
        };
        refuse(200, body, ct)
    }

    fn issue_token(&self, ttl: Duration) -> Response<MockBody> {
        let mut s = self.lock();
        s.tokens_issued += 1;
        let token = format!("ya29.mock-{}-{}", s.tokens_issued, rand::random::<u32>());
        s.tokens
            .push((token.clone(), std::time::Instant::now() + ttl));
        drop(s);
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(full(
                json!({"access_token": token, "expires_in": ttl.as_secs(), "token_type": "Bearer"})
                    .to_string(),
            ))
            .unwrap_or_else(|_| Response::new(full("")))
    }

    /// Google's side: what the token endpoint, the metadata server and Vertex check.
    async fn google(
        &self,
        g: GoogleMock,
        method: &str,
        path: &str,
        recorded: Recorded,
        parsed: Value,
    ) -> std::io::Result<Response<MockBody>> {
        let json_answer = |status: u16, v: Value| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(full(v.to_string()))
                .map_err(std::io::Error::other)
        };
        {
            let mut s = self.lock();
            if s.record {
                s.requests.push(recorded.clone());
            }
        }
        if path == "/token" {
            let form = String::from_utf8_lossy(&recorded.body).to_string();
            let field = |k: &str| {
                form.split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .map(|v| {
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
            };
            if field("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
            {
                return json_answer(400, json!({"error": "unsupported_grant_type"}));
            }
            let aud = format!("{}/token", self.base_url());
            return match check_jwt(&field("assertion").unwrap_or_default(), &g, &aud) {
                Ok(()) => Ok(self.issue_token(g.token_ttl)),
                Err(e) => json_answer(
                    400,
                    json!({"error": "invalid_grant", "error_description": e}),
                ),
            };
        }
        if path.starts_with("/computeMetadata/v1/instance/service-accounts/default/token") {
            if recorded.header("metadata-flavor") != Some("Google") {
                return json_answer(
                    403,
                    json!({"error": "Missing required header: Metadata-Flavor"}),
                );
            }
            return Ok(self.issue_token(g.token_ttl));
        }
        // Vertex rawPredict / streamRawPredict.
        let token = recorded
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        let valid = {
            let s = self.lock();
            s.tokens
                .iter()
                .any(|(t, until)| *t == token && *until > std::time::Instant::now())
        };
        if !valid {
            return json_answer(
                401,
                json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token.", "status": "UNAUTHENTICATED"}}),
            );
        }
        if path.ends_with("/endpoints/openapi/chat/completions") {
            // Vertex's OpenAI-compatible surface: Model Garden IDs are publisher/model.
            let model = parsed["model"].as_str().unwrap_or_default().to_string();
            if !model.contains('/') {
                return json_answer(
                    400,
                    json!([{"error": {"code": 400, "message": format!("Invalid model {model:?}: use publisher/model, e.g. google/gemini-2.5-flash"), "status": "INVALID_ARGUMENT"}}]),
                );
            }
            if let Err(m) = validate("/v1/chat/completions", &parsed) {
                return json_answer(
                    400,
                    json!([{"error": {"code": 400, "message": m, "status": "INVALID_ARGUMENT"}}]),
                );
            }
            let name = self.lock().name.clone();
            let stream = parsed["stream"].as_bool().unwrap_or(false);
            return Ok(answer(
                &name,
                &model,
                path,
                false,
                stream,
                (5, Duration::from_millis(5)),
                None,
            ));
        }
        let Some((model_part, op)) = path.rsplit_once(':') else {
            return json_answer(
                404,
                json!({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}),
            );
        };
        let model = model_part
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let stream = match op {
            "rawPredict" => false,
            "streamRawPredict" => true,
            _ => {
                return json_answer(
                    404,
                    json!({"error": {"code": 404, "message": "unknown method", "status": "NOT_FOUND"}}),
                )
            }
        };
        if method != "POST" || !model_part.contains("/publishers/anthropic/models/") {
            return json_answer(
                404,
                json!({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}),
            );
        }
        if parsed.get("anthropic_version").and_then(Value::as_str) != Some("vertex-2023-10-16") {
            return json_answer(
                400,
                json!({"error": {"code": 400, "message": "anthropic_version: vertex-2023-10-16 is required", "status": "INVALID_ARGUMENT"}}),
            );
        }
        if parsed.get("model").is_some() {
            return json_answer(
                400,
                json!({"error": {"code": 400, "message": "model: Extra inputs are not permitted", "status": "INVALID_ARGUMENT"}}),
            );
        }
        let mut as_messages = parsed.clone();
        as_messages
            .as_object_mut()
            .map(|o| o.remove("anthropic_version"));
        as_messages["model"] = json!(model);
        if let Err(m) = validate("/v1/messages", &as_messages) {
            return json_answer(
                400,
                json!({"error": {"code": 400, "message": m, "status": "INVALID_ARGUMENT"}}),
            );
        }
        let name = self.lock().name.clone();
        let text = format!("hello from {name}");
        if !stream {
            return json_answer(
                200,
                json!({"id": "msg_vrtx_mock", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 12, "output_tokens": 5}}),
            );
        }
        let events: Vec<String> = anthropic_stream_events(&model, &text)
            .iter()
            .map(|e| {
                format!(
                    "event: {}\ndata: {e}\n\n",
                    e["type"].as_str().unwrap_or("event")
                )
            })
            .collect();
        Ok(paced(
            events.into_iter().map(Bytes::from).collect(),
            "text/event-stream",
        ))
    }
}

/// What Google's token endpoint checks of a JWT bearer assertion: an RS256 signature by the
/// service account's key (verified with its public key), and its claims: issuer, audience
/// (this token endpoint), the cloud-platform scope, a lifetime of at most an hour that has not
/// run out.
fn check_jwt(jwt: &str, g: &GoogleMock, aud: &str) -> Result<(), String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts[..] else {
        return Err("Invalid JWT: not three parts".into());
    };
    let header: Value = serde_json::from_slice(&b64.decode(h).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err("Invalid JWT: alg must be RS256".into());
    }
    let der: Vec<u8> = base64::engine::general_purpose::STANDARD
        .decode(
            g.private_key_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .map_err(|e| e.to_string())?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| e.to_string())?;
    use ring::signature::KeyPair;
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        key.public_key().as_ref().to_vec(),
    );
    public
        .verify(
            format!("{h}.{c}").as_bytes(),
            &b64.decode(sig).map_err(|e| e.to_string())?,
        )
        .map_err(|_| "Invalid JWT Signature.".to_string())?;
    let claims: Value = serde_json::from_slice(&b64.decode(c).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if claims["iss"] != g.client_email.as_str() {
        return Err("Invalid JWT: iss is not the service account".into());
    }
    if claims["aud"] != aud {
        return Err(format!("Invalid JWT: aud must be {aud}"));
    }
    if claims["scope"] != "https://www.googleapis.com/auth/cloud-platform" {
        return Err("Invalid JWT: scope".into());
    }
    if exp <= now || iat > now + 60 || exp - iat > 3600 {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.".into());
    }
    Ok(())
}

/// A 200 streaming `chunks` 5 ms apart (a scripted SSE or event stream).
/// The text of a request's final assistant turn (its prefill), when it ends with one.
fn prefill_of(body: &Value) -> Option<String> {
    let last = body["messages"].as_array()?.last()?;
    if last["role"] != "assistant" {
        return None;
    }
    match &last["content"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) => Some(
            blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<String>(),
        ),
        _ => None,
    }
}

/// A complete stream carrying `text` in word pieces, in the request's format.
fn text_stream(name: &str, model: &str, anthropic: bool, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let id = format!("{name}-stream");
    if anthropic {
        out.push(format!(
            "event: message_start\ndata: {}\n\n",
            json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 0}}})
        ));
        out.push(format!(
            "event: content_block_start\ndata: {}\n\n",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        ));
        for piece in text.split_inclusive(' ') {
            out.push(format!(
                "event: content_block_delta\ndata: {}\n\n",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
            ));
        }
        out.push(format!(
            "event: content_block_stop\ndata: {}\n\n",
            json!({"type": "content_block_stop", "index": 0})
        ));
        out.push(format!(
            "event: message_delta\ndata: {}\n\n",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 9}})
        ));
        out.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    } else {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": id, "object": "chat.completion.chunk", "created": 2, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        out.push(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
        for piece in text.split_inclusive(' ') {
            out.push(chunk(json!({"content": piece}), Value::Null));
        }
        out.push(chunk(json!({}), json!("stop")));
        out.push("data: [DONE]\n\n".to_string());
    }
    out
}

/// A 200 whose body parts come each after its delay, then end or are cut.
fn scripted(
    name: &str,
    content_type: &str,
    parts: Vec<(Duration, String)>,
    cut: bool,
    content_length: Option<usize>,
) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for (after, part) in parts {
            tokio::time::sleep(after).await;
            if tx.send(Ok(Bytes::from(part))).await.is_err() {
                return;
            }
        }
        if cut {
            // Let the last part leave the socket before the cut (an abort drops what is queued).
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(Err(std::io::Error::other("mock cut"))).await;
        }
    });
    let mut r = Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("x-mock-provider", name);
    if let Some(n) = content_length {
        r = r.header("content-length", n);
    }
    r.body(BoxBody::new(ChannelBody(rx)))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn paced(chunks: Vec<Bytes>, content_type: &str) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(c)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(BoxBody::new(ChannelBody(rx)))
        .unwrap_or_else(|_| Response::new(full("")))
}

/// A realistic Anthropic stream (the shape of the Messages API docs): message_start, one text
/// block of five deltas, message_delta with usage, message_stop.
pub fn anthropic_stream_events(model: &str, text: &str) -> Vec<Value> {
    let mut out = vec![
        json!({"type": "message_start", "message": {"id": "msg_bdrk_mock", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ];
    for word in text.split_inclusive(' ') {
        out.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}));
    }
    out.push(json!({"type": "content_block_stop", "index": 0}));
    out.push(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}}));
    out.push(json!({"type": "message_stop"}));
    out
}

/// One Bedrock `chunk` frame carrying an Anthropic event (base64 in `bytes`, CRCs computed).
pub fn bedrock_chunk(event: &Value) -> Bytes {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    use base64::Engine;
    let payload =
        json!({"bytes": base64::engine::general_purpose::STANDARD.encode(event.to_string())});
    let m = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String("chunk".into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    let _ = aws_smithy_eventstream::frame::write_message_to(&m, &mut out);
    Bytes::from(out)
}

/// One Bedrock `exception` frame (`modelStreamErrorException`, `throttlingException`, ...).
pub fn bedrock_exception(kind: &str, message: &str) -> Bytes {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let m = Message::new(json!({"message": message}).to_string().into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("exception".into()),
        ))
        .add_header(Header::new(
            ":exception-type",
            HeaderValue::String(kind.to_string().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    let _ = aws_smithy_eventstream::frame::write_message_to(&m, &mut out);
    Bytes::from(out)
}

/// What the real APIs check of a request body, enough that a body in the wrong format (or a
/// broken translation) is refused here as it would be there:
/// - Anthropic Messages: `max_tokens` required; only its documented top-level keys (it answers
///   "Extra inputs are not permitted"); roles user/assistant only (a `system` message role is
///   an error); every `tool_result` answers a `tool_use` id of the previous assistant turn;
///   tools need `input_schema`.
/// - OpenAI chat completions: only documented top-level keys ("Unrecognized request argument
///   supplied"); roles system/developer/user/assistant/tool; a `tool` message answers a
///   `tool_calls` id of the preceding assistant message; function arguments are JSON strings.
pub fn validate(path: &str, body: &Value) -> Result<(), String> {
    let obj = body.as_object().ok_or("body must be a JSON object")?;
    if path.ends_with("/responses") {
        // The Responses API: `input` (a string or items) instead of `messages`.
        match obj.get("input") {
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => return Err("input: must be a string or an array of items".into()),
            None if obj.contains_key("previous_response_id") => {}
            None => return Err("Missing required parameter: 'input'.".into()),
        }
        if !obj.get("model").is_some_and(Value::is_string) {
            return Err("Missing required parameter: 'model'.".into());
        }
        if obj.contains_key("messages") {
            return Err("Unknown parameter: 'messages'.".into());
        }
        return Ok(());
    }
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages: Field required")?;
    if path.contains("/messages") {
        const KEYS: &[&str] = &[
            "model",
            "messages",
            "system",
            "max_tokens",
            "stream",
            "temperature",
            "top_p",
            "top_k",
            "stop_sequences",
            "tools",
            "tool_choice",
            "metadata",
            "thinking",
            "service_tier",
            "container",
            "mcp_servers",
        ];
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("{k}: Extra inputs are not permitted"));
        }
        if obj.get("max_tokens").and_then(Value::as_u64).is_none() {
            return Err("max_tokens: Field required".into());
        }
        let mut last_tool_uses: Vec<String> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            if !matches!(role, "user" | "assistant") {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ));
            }
            let blocks = m
                .get("content")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if role == "user" {
                for b in &blocks {
                    if b["type"] == "tool_result" {
                        let id = b["tool_use_id"].as_str().unwrap_or_default();
                        if !last_tool_uses.iter().any(|u| u == id) {
                            return Err(format!("messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."));
                        }
                    }
                }
            }
            last_tool_uses = blocks
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .filter_map(|b| b["id"].as_str().map(str::to_string))
                .collect();
            if role == "assistant" {
                for b in blocks.iter().filter(|b| b["type"] == "tool_use") {
                    if !b["input"].is_object() {
                        return Err(format!(
                            "messages.{i}: tool_use.input: Input should be a valid dictionary"
                        ));
                    }
                }
            }
        }
        for (i, t) in obj
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if t.get("type").is_none() && !t["input_schema"].is_object() {
                return Err(format!("tools.{i}.custom.input_schema: Field required"));
            }
        }
        // A final assistant turn is a prefill: refused by Claude 4.6 and later, and never
        // allowed to end with whitespace (both as the Messages API answers).
        if let Some(prefill) = prefill_of(body) {
            let model = obj.get("model").and_then(Value::as_str).unwrap_or_default();
            if !crate::wire::anthropic::accepts_prefill(model) {
                return Err("This model does not support assistant message prefill. The conversation must end with a user message.".into());
            }
            if prefill.ends_with(char::is_whitespace) {
                return Err(
                    "messages: final assistant content cannot end with trailing whitespace".into(),
                );
            }
        }
        return Ok(());
    }
    if path.contains("/chat/completions") {
        const KEYS: &[&str] = &[
            "model",
            "messages",
            "stream",
            "stream_options",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "stop",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "user",
            "response_format",
            "n",
            "seed",
            "logprobs",
            "top_logprobs",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "metadata",
            "store",
            "service_tier",
            "modalities",
            "audio",
            "reasoning_effort",
            "prediction",
        ];
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("Unrecognized request argument supplied: {k}"));
        }
        let mut open_calls: Vec<String> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            match m.get("role").and_then(Value::as_str).unwrap_or_default() {
                "system" | "developer" | "user" => open_calls.clear(),
                "assistant" => {
                    open_calls.clear();
                    for c in m
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if !c["function"]["arguments"].is_string() {
                            return Err(format!(
                                "messages[{i}].tool_calls: arguments must be a string"
                            ));
                        }
                        open_calls.extend(c["id"].as_str().map(str::to_string));
                    }
                }
                "tool" => {
                    let id = m["tool_call_id"].as_str().unwrap_or_default();
                    if !open_calls.iter().any(|c| c == id) {
                        return Err("Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.".into());
                    }
                }
                other => return Err(format!("messages[{i}].role: invalid value {other:?}")),
            }
        }
        for t in obj
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if t["type"] != "function" || !t["function"]["name"].is_string() {
                return Err("tools: each tool needs type function and function.name".into());
            }
        }
    }
    Ok(())
}

/// A loopback address nothing listens on: connections to it are refused.
pub fn refused_addr() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let a = l.local_addr()?;
    drop(l);
    Ok(a)
}
