//! Black-box tests of what a hostile provider and a careless config found (the hardening issue),
//! one test per finding: zero retention decided from every provider a request could reach; a
//! background job run under its own client's scope; what a job file keeps and who may read it;
//! a cached answer never crossing what a request accepts; redirects never followed nor passed
//! on; idempotency keyed by route; an endless stream event bounded in time and memory; a joiner
//! not cut off when the leader's client leaves; no key or token in the log at trace level.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twinroute::testkit::client;

fn state_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "twinroute-hardening-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ask(prompt: &str) -> serde_json::Value {
    json!({"model": "m", "messages": [{"role": "user", "content": prompt}]})
}

async fn post(t: &Twinroute, body: &serde_json::Value, headers: &[(&str, &str)]) -> client::Reply {
    client::post_json(&t.url("/v1/chat/completions"), headers, body)
        .await
        .unwrap()
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_file() {
            out.extend(std::fs::read(e.path()).unwrap_or_default());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const BG: (&str, &str) = ("x-twinroute-priority", "background");
const ASYNC: (&str, &str) = ("prefer", "respond-async");

/// Finding 1: a provider with `zero_retention: true` (not the route) keeps the request out of
/// the cache, idempotency and the queue, even while that provider is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_retention_provider_keeps_the_request_out_of_every_store() {
    let z = MockProvider::start("z").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let dir = state_dir();
    let yaml = format!(
        "state_dir: \"{}\"\nproviders:\n{}{}models:\n  - name: m\n    offerings: [{{provider: z, model: z-m}}, {{provider: b, model: b-m}}]\n    policy: {{cache: {{ttl_s: 300}}}}\n  - name: plain\n    offerings: [{{provider: b, model: b-plain}}]\n    policy: {{cache: {{ttl_s: 300}}}}\npolicy: {{max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n",
        dir.display(),
        provider("z", &z.base_url(), ", zero_retention: true"),
        provider("b", &b.base_url(), ""),
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let calls = || z.request_count() + b.request_count();

    // The same prompt twice: both reach a provider, neither says cache.
    for _ in 0..2 {
        let r = post(&t, &ask("private prompt"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-twinroute-cache"), None);
    }
    assert_eq!(calls(), 2, "a cached answer was served");
    // An Idempotency-Key is not replayed: nothing of the answer was kept.
    for _ in 0..2 {
        let r = post(&t, &ask("keyed"), &[("idempotency-key", "k-1")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-twinroute-idempotent-replay"), None);
    }
    assert_eq!(calls(), 4, "an idempotent replay was served");

    // Background work while both are down: failed now, never written to disk.
    z.set_behavior(Behavior::status(503));
    b.set_behavior(Behavior::status(503));
    let secret_prompt = "queue-me-never-4f1c";
    let r = post(&t, &ask(secret_prompt), &[BG, ASYNC]).await;
    assert_eq!(r.status, 502, "queued: {}", r.text());
    assert_eq!(t.status().await["queue"]["depth"], 0);
    assert!(!contains(&all_bytes(&dir), secret_prompt.as_bytes()));

    // The control: a model no zero-retention provider serves is cached as before.
    b.set_behavior(Behavior::Ok);
    let plain = json!({"model": "plain", "messages": [{"role": "user", "content": "p"}]});
    post(&t, &plain, &[]).await;
    let hit = post(&t, &plain, &[]).await;
    assert_eq!(hit.header("x-twinroute-cache"), Some("hit"));
}

/// Findings 2 and 3: two tenants queue the same prompt; each job runs under its own client's
/// scope (neither is answered from the other's cached answer); the job file keeps no header
/// outside the allowlist, is mode 0600, and holds no bare hash of a client token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_under_their_own_clients_scope_and_keep_only_what_they_need() {
    use std::os::unix::fs::PermissionsExt;
    let a = MockProvider::start("a").await.unwrap();
    a.set_behavior(Behavior::status(503));
    let dir = state_dir();
    let yaml = format!(
        "client_tokens_env: HT_TOKENS\nstate_dir: \"{}\"\nqueue: {{drain_per_s: 20, retry_max_ms: 200}}\nproviders:\n{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}]\n    policy: {{cache: {{ttl_s: 300}}}}\npolicy: {{max_attempts: 1}}\n",
        dir.display(),
        provider("a", &a.base_url(), ""),
    );
    let t = Twinroute::start(&yaml, &[("HT_TOKENS", "tenant-aaa-token,tenant-bbb-token")]).await;
    let ta = ("authorization", "Bearer tenant-aaa-token");
    let tb = ("authorization", "Bearer tenant-bbb-token");
    let extra = [
        ("x-custom-secret", "custom-secret-value-93"),
        ("anthropic-api-key", "anthropic-key-value-17"),
    ];
    let mut locations = Vec::new();
    for who in [ta, tb] {
        let r = post(
            &t,
            &ask("same prompt"),
            &[who, BG, ASYNC, extra[0], extra[1]],
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.text());
        locations.push(r.header("location").unwrap().to_string());
    }
    // The provider comes back, answering each call differently.
    let answer = |text: &str| {
        Behavior::Json(
            json!({"id": "c", "object": "chat.completion", "created": 1, "model": "a-m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
            .to_string(),
        )
    };
    a.clear();
    a.push_once(answer("first answer"));
    a.push_once(answer("second answer"));
    a.set_behavior(Behavior::Ok);
    let mut texts = Vec::new();
    for (who, loc) in [ta, tb].iter().zip(&locations) {
        let started = Instant::now();
        let done = loop {
            let r = client::send("GET", &t.url(loc), &[*who], "").await.unwrap();
            if r.status == 200 {
                break r;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{}", r.text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        texts.push(done.json()["choices"][0]["message"]["content"].clone());
    }
    assert_eq!(
        a.request_count(),
        2,
        "one job was answered from the other's cache"
    );
    assert_ne!(texts[0], texts[1], "{texts:?}");
    // What is on disk (the finished jobs are kept): no header outside the allowlist, no token, no bare hash of one.
    let disk = all_bytes(&dir);
    assert!(contains(&disk, b"same prompt"), "the job is on disk");
    for (_, v) in extra {
        assert!(!contains(&disk, v.as_bytes()), "{v} was written to disk");
    }
    for token in ["tenant-aaa-token", "tenant-bbb-token"] {
        use sha2::Digest;
        assert!(!contains(&disk, token.as_bytes()));
        let bare = sha2::Sha256::digest(token.as_bytes());
        assert!(
            !contains(&disk, &bare),
            "an unsalted hash of a token is on disk"
        );
    }
    for f in ["jobs.redb", "scope.key"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }

    // The jobs' runs carried neither the custom header nor the key-looking one upstream.
    for r in a.requests() {
        assert!(r.header("x-custom-secret").is_none());
        assert!(r.header("anthropic-api-key").is_none());
    }
}

/// Finding 4: an answer an equivalent gave (or another provider, or another region) is never a
/// hit for a request that would not have taken it; a hit says who answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_answer_never_crosses_what_the_request_accepts() {
    let p = MockProvider::start("p").await.unwrap();
    p.set_behavior(Behavior::status(503));
    let q = MockProvider::start("q").await.unwrap();
    let oa = MockProvider::start("oa").await.unwrap();
    let oa2 = MockProvider::start("oa2").await.unwrap();
    let yaml = format!(
        "providers:\n{}{}{}{}models:\n  - name: primary\n    equivalents: [{{model: alt, grade: 0.9}}]\n    offerings: [{{provider: p, model: p-m}}]\n    policy: {{cache: {{ttl_s: 300}}}}\n  - name: alt\n    offerings: [{{provider: q, model: q-alt}}]\n  - name: m\n    offerings: [{{provider: oa, model: oa-m}}, {{provider: oa2, model: oa2-m}}]\n    policy: {{strategy: ordered, cache: {{ttl_s: 300}}}}\npolicy: {{max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n",
        provider("p", &p.base_url(), ""),
        provider("q", &q.base_url(), ""),
        provider("oa", &oa.base_url(), ", region: us"),
        provider("oa2", &oa2.base_url(), ", region: eu"),
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let prompt = json!({"model": "primary", "messages": [{"role": "user", "content": "x"}]});
    let eq = ("x-twinroute-allow-equivalents", "true");
    let r = post(&t, &prompt, &[eq]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-twinroute-equivalent").is_some());
    assert_eq!(r.header("x-twinroute-cache"), Some("miss"));
    // Fail closed stays closed: no header, or `false`, is not served the equivalent's answer.
    for headers in [vec![], vec![("x-twinroute-allow-equivalents", "false")]] {
        let r = post(&t, &prompt, &headers).await;
        assert_ne!(r.header("x-twinroute-cache"), Some("hit"), "{headers:?}");
        assert_eq!(r.status, 502, "{}", r.text());
    }
    // The same acceptance is a hit, and says an equivalent answered, and who.
    let hit = post(&t, &prompt, &[eq]).await;
    assert_eq!(hit.header("x-twinroute-cache"), Some("hit"));
    assert_eq!(
        hit.header("x-twinroute-equivalent"),
        r.header("x-twinroute-equivalent")
    );
    assert_eq!(hit.header("x-twinroute-provider"), Some("q"));
    assert_eq!(hit.header("x-twinroute-model"), Some("q-alt"));

    // Pinned provider and region: another answer.
    let m = ask("y");
    let first = post(&t, &m, &[]).await;
    assert_eq!(first.header("x-twinroute-provider"), Some("oa"));
    for headers in [
        vec![("x-twinroute-provider", "oa2")],
        vec![("x-twinroute-region", "eu")],
    ] {
        let r = post(&t, &m, &headers).await;
        assert_eq!(r.header("x-twinroute-cache"), Some("miss"), "{headers:?}");
        assert_eq!(r.header("x-twinroute-provider"), Some("oa2"), "{headers:?}");
    }
    assert_eq!(oa2.request_count(), 2);
    assert_eq!(oa.request_count(), 1);
}

/// Finding 5: a 3xx is never followed and never passed on: the next candidate answers, and
/// with none left the client gets a 502 without the redirect's `Location`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_redirect_is_a_failed_attempt() {
    let evil = MockProvider::start("evil").await.unwrap();
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let redirect = Behavior::Redirect {
        status: 307,
        location: format!("{}/v1/chat/completions", evil.base_url()),
    };
    a.set_behavior(redirect.clone());
    let yaml = format!(
        "providers:\n{}{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}, {{provider: b, model: b-m}}]\n  - name: solo\n    offerings: [{{provider: a, model: a-solo}}]\npolicy: {{strategy: ordered, max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n",
        provider("a", &a.base_url(), ""),
        provider("b", &b.base_url(), ""),
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let r = post(&t, &ask("hi"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("2"));
    // Only the redirecting provider: a 502 naming the reason, no Location, on the client's
    // own route and on a translated one.
    let solo =
        json!({"model": "solo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&t, &solo, &[]).await;
    assert_eq!(r.status, 502);
    assert!(r.header("location").is_none());
    assert!(r.text().contains("upstream_redirect"), "{}", r.text());
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[("anthropic-version", "2023-06-01")],
        &solo,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.header("location").is_none());
    assert_eq!(r.json()["type"], "error");
    assert_eq!(evil.request_count(), 0);
    t.wait_for_log("upstream_redirect").await;
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("outcome=\"upstream_redirect\""),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("attempts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Finding 6 (and two keys at once): the same key and body on another per-feature route is
/// another request (422), and two Idempotency-Key headers are a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_bound_to_its_route() {
    let a = MockProvider::start("a").await.unwrap();
    let yaml = format!(
        "providers:\n{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}]\nroutes:\n  - name: other\n    match: {{headers: {{x-twinroute-route: other}}}}\n    policy: {{max_attempts: 1}}\n",
        provider("a", &a.base_url(), ""),
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let key = ("idempotency-key", "order-9");
    assert_eq!(post(&t, &ask("q"), &[key]).await.status, 200);
    let r = post(&t, &ask("q"), &[key, ("x-twinroute-route", "other")]).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "idempotency_key_reused");
    assert_eq!(a.request_count(), 1);
    // Which of two keys the client meant is not ours to guess.
    let r = client::send(
        "POST",
        &t.url("/v1/chat/completions"),
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "k1"),
            ("idempotency-key", "k2"),
        ],
        ask("q").to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(a.request_count(), 1);
}

/// The process's CPU seconds so far and its RSS in bytes.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    (ticks / 100.0, rss_kb * 1024)
}

/// Finding 7: after one content event, a 50 MB `data:` line with no end costs under a second of
/// CPU and leaves RSS within a few MB; the client's stream ends with the error event. A whole
/// answer over `max_response_body_bytes` is a failed attempt: the twin answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_stream_event_is_bounded_in_time_and_memory() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let yaml = format!(
        "max_response_body_bytes: 65536\nproviders:\n  - {{name: a, api: openai, base_url: \"{}\", timeouts: {{connect_ms: 300, first_byte_ms: 400, stream_idle_ms: 5000}}, probe: {{enabled: false}}}}\n{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}, {{provider: b, model: b-m}}]\npolicy: {{strategy: ordered, max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n",
        a.base_url(),
        provider("b", &b.base_url(), ""),
    );
    let t = Twinroute::start(&yaml, &[]).await;
    // Warm up (pools, allocator, the stream path) so RSS compares like with like.
    let mut warm = ask("warm");
    for stream in [false, true, false, true] {
        warm["stream"] = json!(stream);
        post(&t, &warm, &[]).await;
    }
    let content = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"a-m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n";
    let mut parts = vec![
        (Duration::ZERO, content.to_string()),
        (Duration::ZERO, "data: ".into()),
    ];
    let piece = "x".repeat(64 << 10);
    for _ in 0..800 {
        parts.push((Duration::ZERO, piece.clone()));
    }
    a.push_once(Behavior::sse_script(parts, false));
    let (cpu0, rss0) = usage(t.pid());
    let started = Instant::now();
    let mut body = ask("long");
    body["stream"] = json!(true);
    let r = post(&t, &body, &[]).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("\"content\":\"hi\""));
    assert!(
        text.contains("upstream_stream_broken"),
        "no error event: {}",
        &text[..text.len().min(400)]
    );
    assert!(text.len() < 1 << 20, "the long line reached the client");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (cpu1, rss1) = usage(t.pid());
    eprintln!(
        "long line: {:.3} s CPU, RSS {} -> {} KB",
        cpu1 - cpu0,
        rss0 >> 10,
        rss1 >> 10
    );
    assert!(
        cpu1 - cpu0 < 1.0,
        "{:.2} s of CPU for a 50 MB line",
        cpu1 - cpu0
    );
    assert!(
        rss1 < rss0 + 3 * 1024 * 1024,
        "RSS {} MB -> {} MB",
        rss0 >> 20,
        rss1 >> 20
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    t.wait_for_log("response_too_large").await;

    // A whole answer over max_response_body_bytes: not relayed, the twin answers.
    let huge = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "a-m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "y".repeat(200_000)}, "finish_reason": "stop"}]});
    a.push_once(Behavior::Json(huge.to_string()));
    let r = post(&t, &ask("big"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-twinroute-provider"),
        Some("b"),
        "{}",
        r.text().len()
    );
    t.wait_for_log("a:response_too_large").await;
}

/// Finding 8: the leader's client leaves mid-stream while a duplicate follows: the duplicate
/// still gets the whole stream, and the provider was called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_is_not_cut_off_when_the_leaders_client_leaves() {
    let a = MockProvider::start("a").await.unwrap();
    a.set_stream(20, Duration::from_millis(50));
    let yaml = format!(
        "providers:\n{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}]\n",
        provider("a", &a.base_url(), ""),
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let mut body = ask("stream me");
    body["stream"] = json!(true);
    let body = body.to_string();
    // The leader, on a raw socket it can drop mid-stream.
    let addr = t.base.trim_start_matches("http://").to_string();
    let mut leader = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nidempotency-key: stream-k\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    leader.write_all(req.as_bytes()).await.unwrap();
    let mut first = [0u8; 512];
    let n = leader.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // A duplicate joins, then the leader's client hangs up.
    let joiner = {
        let url = t.url("/v1/chat/completions");
        let body = body.clone();
        tokio::spawn(async move {
            client::send(
                "POST",
                &url,
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", "stream-k"),
                ],
                body,
            )
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(leader);
    let r = joiner.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-twinroute-idempotent-replay"), Some("true"));
    let text = r.text();
    assert!(!r.broken, "the joiner's body was cut");
    assert!(text.contains("tok19 "), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    assert_eq!(a.request_count(), 1);
    t.wait_for_log("client_left=true").await;
}

/// Finding 9: at `RUST_LOG=trace` no provider key, static header value or client token (a
/// wrong one included) reaches the log, on OpenAI and Anthropic providers and their probes
/// (the harness scans everything the process printed when it is dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_at_trace_level() {
    let oa = MockProvider::start("oa").await.unwrap();
    let an = MockProvider::start("an").await.unwrap();
    let yaml = format!(
        "client_tokens_env: TR_TOKENS\nproviders:\n  - {{name: oa, api: openai, base_url: \"{}\", api_key_env: TR_OA_KEY, headers: {{x-static-secret: static-header-secret-81}}, timeouts: {{connect_ms: 300, first_byte_ms: 400}}, probe: {{enabled: true, interval_ms: 100}}}}\n  - {{name: an, api: anthropic, base_url: \"{}\", api_key_env: TR_AN_KEY, timeouts: {{connect_ms: 300, first_byte_ms: 400}}, probe: {{enabled: true, interval_ms: 100}}}}\nmodels:\n  - name: m\n    offerings: [{{provider: oa, model: oa-m}}, {{provider: an, model: an-m}}]\n",
        oa.base_url(),
        an.base_url(),
    );
    let t = Twinroute::start(
        &yaml,
        &[
            ("RUST_LOG", "trace"),
            ("TR_TOKENS", "client-token-trace-5521"),
            ("TR_OA_KEY", "sk-openai-trace-key-7731"),
            ("TR_AN_KEY", "sk-ant-trace-key-9902"),
        ],
    )
    .await;
    let good = ("authorization", "Bearer client-token-trace-5521");
    let r = post(&t, &ask("hi"), &[good]).await;
    assert_eq!(r.status, 200);
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[
            ("x-api-key", "client-token-trace-5521"),
            ("anthropic-version", "2023-06-01"),
        ],
        &json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let wrong = "Bearer wrong-token-trace-3310";
    assert_eq!(
        post(&t, &ask("hi"), &[("authorization", wrong)])
            .await
            .status,
        401
    );
    // Probes ran with the keys.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!oa.probes().is_empty() && !an.probes().is_empty());
    let logs = t.logs();
    assert!(logs.contains("DEBUG"), "the log ran below info");
    // twinroute itself logs nothing at trace: a TRACE line is another crate's (Pingora's print
    // request headers), which `observe::redact_log` must have dropped.
    assert!(
        !logs.contains("TRACE"),
        "a trace record of another crate reached the log"
    );
    assert!(!logs.contains("static-header-secret-81"));
    assert!(!logs.contains("wrong-token-trace-3310"));
    // The provider saw the key (the scan above is not vacuous).
    assert_eq!(
        oa.requests()[0].header("authorization"),
        Some("Bearer sk-openai-trace-key-7731")
    );
}

/// The smaller findings: a provider's error body echoing its key is redacted before it reaches
/// the client; a control header that is not text is a 400; a region is not echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_lose_the_key_and_unreadable_control_headers_are_refused() {
    let a = MockProvider::start("a").await.unwrap();
    let yaml = format!(
        "providers:\n  - {{name: a, api: openai, base_url: \"{}\", api_key_env: SM_KEY, timeouts: {{connect_ms: 300, first_byte_ms: 400}}, probe: {{enabled: false}}}}\nmodels:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}]\n",
        a.base_url(),
    );
    let t = Twinroute::start(&yaml, &[("SM_KEY", "sk-echoed-key-4417")]).await;
    a.push_once(Behavior::Status {
        status: 400,
        body: json!({"error": {"message": "Invalid value for temperature; key sk-echoed-key-4417 on file", "type": "invalid_request_error"}}).to_string(),
        retry_after: None,
    });
    let r = post(&t, &ask("x"), &[]).await;
    assert_eq!(r.status, 400);
    assert!(!r.text().contains("sk-echoed-key-4417"), "{}", r.text());
    assert!(r.text().contains("[REDACTED]"), "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("temperature"));

    // A pin twinroute cannot read is refused, not ignored.
    let mut raw = tokio::net::TcpStream::connect(t.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let body = ask("x").to_string();
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-twinroute-provider: ",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&[0xc3, 0xa9, 0xff]);
    req.extend_from_slice(b"\r\n\r\n");
    req.extend_from_slice(body.as_bytes());
    raw.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), raw.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("x-twinroute-provider"), "{got}");

    // A region no provider has: 400 without the value echoed.
    let r = post(
        &t,
        &ask("x"),
        &[("x-twinroute-region", "sk-pasted-into-region")],
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(!r.text().contains("sk-pasted-into-region"));
    // This request's own access line, not the first 400's above.
    let id = r.header("x-twinroute-request-id").unwrap().to_string();
    let logs = t.wait_for_log(&format!("request id={id}")).await;
    assert!(!logs.contains("sk-pasted-into-region"));
}

/// A DELETE on a job whose run is under way says so honestly (`cancel_requested`), abandons the
/// run (its stream stops, the answer is not kept) and the job is gone for its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_job_abandons_its_run_and_says_so() {
    let a = MockProvider::start("a").await.unwrap();
    a.set_behavior(Behavior::status(503));
    let dir = state_dir();
    let yaml = format!(
        "state_dir: \"{}\"\nqueue: {{drain_per_s: 20, retry_max_ms: 100}}\nproviders:\n  - {{name: a, api: openai, base_url: \"{}\", timeouts: {{connect_ms: 300, first_byte_ms: 400, stream_idle_ms: 5000}}, probe: {{enabled: false}}}}\nmodels:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}]\npolicy: {{max_attempts: 1}}\n",
        dir.display(),
        a.base_url(),
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let mut body = ask("slow job");
    body["stream"] = json!(true);
    let r = post(&t, &body, &[BG, ASYNC]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let loc = r.header("location").unwrap().to_string();
    // The provider comes back with a slow stream: the job's run is under way for seconds.
    a.set_stream(40, Duration::from_millis(100));
    a.set_behavior(Behavior::Ok);
    let started = Instant::now();
    loop {
        let g = client::send("GET", &t.url(&loc), &[], "").await.unwrap();
        if g.json()["status"] == "running" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{}", g.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let del = client::send("DELETE", &t.url(&loc), &[], "").await.unwrap();
    assert_eq!(del.status, 200);
    assert_eq!(del.json()["status"], "cancel_requested", "{}", del.text());
    assert!(del.json()["detail"]
        .as_str()
        .unwrap()
        .contains("may still complete"));
    assert_eq!(
        client::send("GET", &t.url(&loc), &[], "")
            .await
            .unwrap()
            .status,
        404
    );
    t.wait_for_log("run abandoned").await;
    // The run's stream was dropped: the provider saw its client leave long before 40 chunks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.connections_open(),
        0,
        "the abandoned run still holds the provider"
    );
    assert_eq!(t.status().await["queue"]["depth"], 0);
}
