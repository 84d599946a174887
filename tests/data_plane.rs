//! Black-box tests of the failover data plane: the real binary, real loopback HTTP servers
//! playing providers, assertions on what crosses the wire.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use twinroute::testkit::client;

const KEY_A: &str = "sk-test-alpha-0123456789";
const KEY_B: &str = "sk-test-beta-9876543210";

/// Two OpenAI-style providers a (us) and b (eu) serving model `m`, a first.
async fn two_providers(policy: &str) -> (MockProvider, MockProvider, Twinroute) {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let yaml = format!(
        "providers:\n{}{}models:\n  - name: m\n    aliases: [m-alias]\n    offerings:\n      - {{provider: a, model: a/m-large, price: {{input_per_mtok: 2, output_per_mtok: 2}}}}\n      - {{provider: b, model: b-m-large, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}\npolicy: {{max_attempts: 3, backoff: {{base_ms: 5, max_ms: 20}}{policy}}}\n",
        provider("a", &a.base_url(), ", api_key_env: KEY_A, region: us"),
        provider("b", &format!("{}/v1", b.base_url()), ", api_key_env: KEY_B, region: eu"),
    );
    let t = Twinroute::start(&yaml, &[("KEY_A", KEY_A), ("KEY_B", KEY_B)]).await;
    (a, b, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_model_and_injects_the_providers_key() {
    let (a, b, t) = two_providers("").await;
    let r = t
        .chat(
            &json!({"messages": [{"role": "user", "content": "hi", "model": "nested-stays"}], "model": "m", "temperature": 0.2}),
            &[("authorization", "Bearer client-own-key"), ("x-api-key", "client-x"), ("x-twinroute-strategy", "ordered"), ("x-custom", "kept")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    assert_eq!(r.header("x-twinroute-model"), Some("a/m-large"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    let seen = a.requests();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {KEY_A}").as_str())
    );
    assert_eq!(req.header("x-api-key"), None);
    assert_eq!(req.header("x-twinroute-strategy"), None);
    assert_eq!(req.header("x-custom"), Some("kept"));
    assert_eq!(
        req.header("content-length"),
        Some(req.body.len().to_string().as_str())
    );
    let body = req.json();
    assert_eq!(body["model"], "a/m-large");
    assert_eq!(body["messages"][0]["model"], "nested-stays");
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(b.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_and_provider_ids_resolve_to_the_same_model() {
    let (a, _b, t) = two_providers("").await;
    for name in ["m", "m-alias", "a/m-large", "b-m-large"] {
        let r = t.chat(&chat_body(name), &[]).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.header("x-twinroute-model"), Some("a/m-large"), "{name}");
    }
    assert!(a
        .requests()
        .iter()
        .all(|r| r.json()["model"] == "a/m-large"));
}

async fn assert_fails_over(fault: Behavior, reason: &str) {
    let (a, b, t) = two_providers("").await;
    a.set_behavior(fault);
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200, "{reason}: {}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("b"), "{reason}");
    assert_eq!(r.header("x-twinroute-model"), Some("b-m-large"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("2"));
    assert_eq!(a.request_count(), 1, "{reason}: a saw the first attempt");
    let at_b = b.requests();
    assert_eq!(at_b.len(), 1);
    assert_eq!(at_b[0].path, "/v1/chat/completions");
    assert_eq!(
        at_b[0].header("authorization"),
        Some(format!("Bearer {KEY_B}").as_str())
    );
    assert_eq!(at_b[0].json()["model"], "b-m-large");
    let metrics = t.metrics().await;
    let line = format!("twinroute_failovers_total{{from_provider=\"a\",model=\"m\",reason=\"{reason}\",to_provider=\"b\"}} 1");
    assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_on_503() {
    assert_fails_over(Behavior::status(503), "status_5xx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_on_429() {
    assert_fails_over(Behavior::status(429), "status_429").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_on_reset_before_response() {
    assert_fails_over(Behavior::Reset, "reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_on_first_byte_timeout() {
    let started = std::time::Instant::now();
    assert_fails_over(Behavior::Hang, "first_byte_timeout").await;
    // first_byte_ms is 400: the failover costs that, not a stack of timeouts.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_on_connection_refused() {
    let dead = refused_addr().unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let yaml = format!(
        "providers:\n{}{}models:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m}}\n      - {{provider: b, model: b-m}}\n",
        provider("a", &format!("http://{dead}"), ""),
        provider("b", &b.base_url(), ""),
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("2"));
    assert!(t.metrics().await.contains("reason=\"connect_failure\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_returned_as_is_without_failover() {
    let (a, b, t) = two_providers("").await;
    let err = r#"{"error":{"message":"temperature must be <= 2","type":"invalid_request_error","code":"bad_param"}}"#;
    a.set_behavior(Behavior::Status {
        status: 400,
        body: err.into(),
        retry_after: None,
    });
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), err);
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    assert_eq!(b.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_silent_gives_504_within_the_deadline() {
    let (a, b, t) = two_providers(", request_timeout_ms: 700").await;
    a.set_behavior(Behavior::Hang);
    b.set_behavior(Behavior::Hang);
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.elapsed < Duration::from_millis(1500),
        "took {:?}",
        r.elapsed
    );
    assert!(
        r.elapsed >= Duration::from_millis(650),
        "took {:?}",
        r.elapsed
    );
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("a: first_byte_timeout"), "{msg}");
    assert_eq!(r.json()["error"]["type"], "api_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_failures_list_each_attempt_and_rate_limits_give_429() {
    let (a, b, t) = two_providers("").await;
    a.set_behavior(Behavior::status(503));
    b.set_behavior(Behavior::status(502));
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 502);
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("a: status_5xx (503); b: status_5xx (502); a: status_5xx (503)"),
        "{msg}"
    );
    assert_eq!(r.header("x-twinroute-attempts"), Some("3"));

    a.set_behavior(Behavior::Status {
        status: 429,
        body: "{}".into(),
        retry_after: Some(7),
    });
    b.set_behavior(Behavior::Status {
        status: 429,
        body: "{}".into(),
        retry_after: Some(3),
    });
    // Retry-After puts both in cooldown; a fresh model name avoids nothing, so fail open proves
    // both are still tried.
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_chunk_by_chunk_and_fails_over_before_the_first_byte() {
    let (a, b, t) = two_providers("").await;
    a.set_behavior(Behavior::Reset);
    b.set_stream(8, Duration::from_millis(60));
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    let r = t.chat(&body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let text = r.text();
    assert_eq!(
        text,
        twinroute::testkit::mock::sse_events("b-m-large", false, 8).concat()
    );
    // Unbuffered: the first event arrived long before the last (8 × 60 ms apart at the source).
    let first = r.chunks.first().unwrap().0;
    let last = r.chunks.last().unwrap().0;
    assert!(r.chunks.len() >= 5, "only {} chunks", r.chunks.len());
    assert!(
        last - first >= Duration::from_millis(300),
        "first {first:?} last {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_broken_mid_way_ends_with_an_error_event() {
    let (a, _b, t) = two_providers("").await;
    a.set_behavior(Behavior::StreamThenDie { chunks: 2 });
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    let r = t.chat(&body, &[]).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("tok1"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let last_event = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(last_event.starts_with("data: {\"error\""), "{last_event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_provider_gets_the_request_and_never_fails_over() {
    let (a, b, t) = two_providers("").await;
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-provider", "b")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    assert_eq!(a.request_count(), 0);
    assert_eq!(b.requests()[0].header("x-twinroute-provider"), None);

    b.set_behavior(Behavior::status(503));
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-provider", "b")])
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(a.request_count(), 0);

    for bad in ["nobody", "a, b", "../a", "a\tb"] {
        let r = t
            .chat(&chat_body("m"), &[("x-twinroute-provider", bad)])
            .await;
        assert_eq!(r.status, 400, "{bad:?}");
        let msg = r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(msg.contains("configured: a, b"), "{msg}");
    }
    assert_eq!(a.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_header_keeps_only_that_regions_providers() {
    let (a, b, t) = two_providers("").await;
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-region", "eu")])
        .await;
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    a.set_behavior(Behavior::status(503));
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-region", "us")])
        .await;
    // Only a is in us: it gets every attempt (max_attempts 3), b is never tried.
    assert_eq!(r.status, 502);
    assert_eq!(b.request_count(), 1);
    assert_eq!(a.request_count(), 3);
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-region", "ap")])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(a.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_cost_sends_to_the_cheapest_first() {
    let (a, b, t) = two_providers(", strategy: prefer_cost").await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-strategy", "ordered")])
        .await;
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-strategy", "fastest")])
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_api_shaped_errors_and_reach_no_provider() {
    let (a, b, t) = two_providers("").await;
    let chat = t.url("/v1/chat/completions");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not json", b"{not json".to_vec(), 400, "not a valid JSON"),
        ("array", b"[1,2]".to_vec(), 400, "JSON object"),
        ("no model", br#"{"messages":[]}"#.to_vec(), 400, "model"),
        (
            "model number",
            br#"{"model":7}"#.to_vec(),
            400,
            "must be a string",
        ),
        (
            "duplicate model",
            br#"{"model":"m","model":"m"}"#.to_vec(),
            400,
            "duplicate",
        ),
        (
            "unknown model",
            br#"{"model":"gpt-unknown-9"}"#.to_vec(),
            404,
            "gpt-unknown-9",
        ),
        ("not utf8", b"{\"model\":\"\xff\"}".to_vec(), 400, "UTF-8"),
    ];
    for (name, body, status, needle) in cases {
        let r = client::send("POST", &chat, &[("content-type", "application/json")], body)
            .await
            .unwrap();
        assert_eq!(r.status, status, "{name}: {}", r.text());
        let v = r.json();
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: not OpenAI error shape: {}", r.text()));
        assert!(msg.contains(needle), "{name}: {msg}");
        assert!(v["error"]["type"].is_string(), "{name}");
    }
    // Unknown path and wrong method.
    let r = client::post_json(&t.url("/v1/models/x"), &[], &chat_body("m"))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    let r = client::get(&chat).await.unwrap();
    assert_eq!(r.status, 405);
    // Anthropic route: Anthropic's error shape.
    let r = client::send("POST", &t.url("/v1/messages"), &[], b"nope".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    // Compressed bodies are refused clearly.
    let r = client::send(
        "POST",
        &chat,
        &[("content-encoding", "gzip")],
        b"\x1f\x8b".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 415);
    assert_eq!(a.request_count() + b.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413() {
    let a = MockProvider::start("a").await.unwrap();
    let yaml = format!(
        "max_body_bytes: 1000\nproviders:\n{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}]\n",
        provider("a", &a.base_url(), "")
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let r = t.chat(&big, &[]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("max_body_bytes"));
    // Chunked (no Content-Length): counted while reading.
    let r = client::send(
        "POST",
        &t.url("/v1/messages"),
        &[("transfer-encoding", "chunked")],
        big.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "request_too_large");
    assert_eq!(a.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1mb_body_fails_over_byte_for_byte() {
    let (a, b, t) = two_providers("").await;
    a.set_behavior(Behavior::status(500));
    let filler: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let original = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{filler}\"}}],\"model\":\"m\",\"max_tokens\":5}}"
    );
    assert!(original.len() > 1 << 20);
    let r = client::send(
        "POST",
        &t.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        original.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    let got_a = &a.requests()[0].body;
    let got_b = &b.requests()[0].body;
    assert_eq!(
        String::from_utf8_lossy(got_a),
        original.replace("\"model\":\"m\"", "\"model\":\"a/m-large\"")
    );
    assert_eq!(
        String::from_utf8_lossy(got_b),
        original.replace("\"model\":\"m\"", "\"model\":\"b-m-large\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_wire_format_with_x_api_key() {
    let c = MockProvider::start("c").await.unwrap();
    let yaml = format!(
        "providers:\n  - {{name: c, api: anthropic, base_url: \"{}\", api_key_env: ANTHROPIC_KEY, probe: {{enabled: false}}}}\nmodels:\n  - name: claude-haiku-4-5\n    offerings: [{{provider: c, model: claude-haiku-4-5-20251001}}]\n",
        c.base_url()
    );
    let t = Twinroute::start(&yaml, &[("ANTHROPIC_KEY", "sk-ant-test-secret")]).await;
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[
            ("x-api-key", "client-key"),
            ("anthropic-version", "2023-06-01"),
        ],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    let req = &c.requests()[0];
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.header("x-api-key"), Some("sk-ant-test-secret"));
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.json()["model"], "claude-haiku-4-5-20251001");
    // An OpenAI client of the Anthropic model is served through translation (tests/translation.rs
    // has the field-by-field checks).
    let r = t.chat(&chat_body("claude-haiku-4-5"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-twinroute-translated"),
        Some("openai->anthropic")
    );
    assert_eq!(r.json()["object"], "chat.completion");
    // Anthropic streaming passes through too.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let r = client::post_json(&t.url("/v1/messages"), &[], &sbody)
        .await
        .unwrap();
    assert_eq!(
        r.text(),
        twinroute::testkit::mock::sse_events("claude-haiku-4-5-20251001", true, 5).concat()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_deployment_path_and_api_key() {
    let z = MockProvider::start("z").await.unwrap();
    let yaml = format!(
        "providers:\n  - {{name: z, api: azure, base_url: \"{}\", api_key_env: AZ_KEY, api_version: \"2024-10-21\", probe: {{enabled: false}}}}\nmodels:\n  - name: gpt-4o-mini\n    offerings: [{{provider: z, model: my-4o-mini-prod}}]\n",
        z.base_url()
    );
    // At trace level: no key in the log even there.
    let t = Twinroute::start(&yaml, &[("AZ_KEY", "az-secret-key"), ("RUST_LOG", "trace")]).await;
    let r = t
        .chat(
            &chat_body("gpt-4o-mini"),
            &[("authorization", "Bearer client")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let req = &z.requests()[0];
    assert_eq!(
        req.path,
        "/openai/deployments/my-4o-mini-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(req.header("api-key"), Some("az-secret-key"));
    assert_eq!(req.header("authorization"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_route() {
    let (a, _b, t) = two_providers("").await;
    let r = client::post_json(
        &t.url("/v1/embeddings"),
        &[],
        &json!({"model": "m", "input": "hello"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "list");
    assert_eq!(a.requests()[0].path, "/v1/embeddings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_reach_the_log() {
    let (a, b, t) = two_providers("").await;
    a.set_behavior(Behavior::Status {
        status: 503,
        body: "{}".into(),
        retry_after: Some(1),
    });
    let _ = t
        .chat(
            &chat_body("m"),
            &[("authorization", "Bearer client-secret-abc")],
        )
        .await;
    b.set_behavior(Behavior::Reset);
    let _ = t.chat(&chat_body("m"), &[]).await;
    let _ = t.chat(&json!({"model": "nope"}), &[]).await;
    let _ = t
        .chat(&chat_body("m"), &[("x-twinroute-provider", KEY_A)])
        .await;
    // Wait for all four access lines, so the last request's line is checked too.
    let mut logs = t.logs();
    for _ in 0..100 {
        if logs.matches("request id=").count() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        logs = t.logs();
    }
    assert!(
        logs.matches("request id=").count() >= 4,
        "access log missing:\n{logs}"
    );
    for secret in [KEY_A, KEY_B, "client-secret-abc"] {
        assert!(!logs.contains(secret), "{secret} leaked into the log");
    }
    // Not in the status page either.
    let status = t.status().await.to_string();
    assert!(!status.contains(KEY_A) && !status.contains(KEY_B));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_names_each_failover_reason() {
    let (a, _b, t) = two_providers("").await;
    a.set_behavior(Behavior::status(503));
    let r = t.chat(&chat_body("m-alias"), &[]).await;
    assert_eq!(r.status, 200);
    let id = r.header("x-twinroute-request-id").unwrap().to_string();
    let logs = t.wait_for_log(&format!("request id={id}")).await;
    let line = logs
        .lines()
        .find(|l| l.contains(&format!("request id={id}")))
        .unwrap_or_else(|| panic!("no access line:\n{logs}"));
    for part in [
        "requested_model=\"m-alias\"",
        "model=\"m\"",
        "provider=\"b\"",
        "status=200",
        "attempts=2",
        "failovers=\"a:status_5xx\"",
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let (_a, _b, t) = two_providers("").await;
    assert_eq!(
        client::get(&format!("{}/healthz", t.admin))
            .await
            .unwrap()
            .status,
        200
    );
    let s: Value = t.status().await;
    assert_eq!(s["providers"][0]["name"], "a");
    assert_eq!(s["providers"][0]["breaker"], "closed");
    assert_eq!(s["models"][0]["candidates"][0]["provider"], "a");
    assert!(t
        .metrics()
        .await
        .contains("twinroute_breaker_state{provider=\"a\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_feeds_token_and_cost_metrics_and_the_log() {
    let (a, _b, t) = two_providers("").await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200);
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    a.set_stream(7, Duration::from_millis(1));
    let r = t.chat(&body, &[]).await;
    assert_eq!(r.status, 200);
    let id = r.header("x-twinroute-request-id").unwrap().to_string();
    let logs = t.wait_for_log(&format!("request id={id}")).await;
    let line = logs
        .lines()
        .find(|l| l.contains(&format!("request id={id}")))
        .unwrap();
    assert!(line.contains("tokens_in=12 tokens_out=7"), "{line}");
    let m = t.metrics().await;
    // 12 + 12 input, 5 + 7 output at $2/Mtok each way.
    assert!(
        m.contains("twinroute_tokens_total{kind=\"input\",model=\"m\",provider=\"a\"} 24"),
        "{m}"
    );
    assert!(
        m.contains("twinroute_tokens_total{kind=\"output\",model=\"m\",provider=\"a\"} 12"),
        "{m}"
    );
    assert!(
        m.contains("twinroute_cost_usd_total{model=\"m\",provider=\"a\"} 0.000072"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_overloaded_529_fails_over_to_the_twin() {
    let c = MockProvider::start("c").await.unwrap();
    let d = MockProvider::start("d").await.unwrap();
    let yaml = format!(
        "providers:\n  - {{name: c, api: anthropic, base_url: \"{}\", probe: {{enabled: false}}}}\n  - {{name: d, api: anthropic, base_url: \"{}\", probe: {{enabled: false}}}}\nmodels:\n  - name: claude-haiku-4-5\n    offerings: [{{provider: c, model: claude-haiku-4-5-20251001}}, {{provider: d, model: claude-haiku-4-5}}]\npolicy: {{backoff: {{base_ms: 1, max_ms: 5}}}}\n",
        c.base_url(),
        d.base_url()
    );
    let t = Twinroute::start(&yaml, &[]).await;
    // Anthropic's overload answer, as its API sends it.
    c.set_behavior(Behavior::Status {
        status: 529,
        body: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            .into(),
        retry_after: None,
    });
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[("anthropic-version", "2023-06-01")],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    assert_eq!(r.header("x-twinroute-provider"), Some("d"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("2"));
    assert_eq!((c.request_count(), d.request_count()), (1, 1));
    assert_eq!(d.requests()[0].json()["model"], "claude-haiku-4-5");
    t.wait_for_log("c:status_5xx").await;
}

/// Events the provider sends back to back arrive at twinroute together, and are joined into
/// fewer client writes (`forward::join_ready`); none may be lost, repeated or reordered, and the
/// end of the body read right behind them must still end the stream — for a stream passed on
/// as it is and for one translated to another API's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_stream_events_arrives_whole_and_in_order() {
    let (a, _b, t) = two_providers("").await;
    let n = 3000;
    a.set_stream(n, Duration::ZERO);
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    let r = t.chat(&body, &[]).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let content: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    let expected: String = (0..n).map(|i| format!("tok{i} ")).collect();
    assert_eq!(content, expected);
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "{}",
        &text[text.len() - 200..]
    );

    // The same burst, translated for an Anthropic Messages client.
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[("anthropic-version", "2023-06-01")],
        &json!({"model": "m", "max_tokens": 16, "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let content: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["type"] == "content_block_delta")
        .filter_map(|v| v["delta"]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(content, expected);
    assert!(
        text.contains("event: message_stop"),
        "{}",
        &text[text.len() - 300..]
    );
}
