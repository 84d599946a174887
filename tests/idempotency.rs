//! Black-box tests of `Idempotency-Key`: one upstream call per key, duplicates in flight share
//! it (JSON and streams, late joiners from the first byte), a replay after success reaches no
//! provider, another body under the same key is a 422, keys are scoped to the client's token,
//! failures are not kept.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use twinroute::testkit::client;

/// Providers a and b serve model `m`; `head` is prepended to the config (top-level keys).
async fn setup(head: &str) -> (MockProvider, MockProvider, Twinroute) {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let yaml = format!(
        "{head}providers:\n{}{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}, {{provider: b, model: b-m}}]\npolicy: {{max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n",
        provider("a", &a.base_url(), ""),
        provider("b", &b.base_url(), ""),
    );
    (a, b, Twinroute::start(&yaml, &[]).await)
}

async fn keyed(
    t: &Twinroute,
    body: &serde_json::Value,
    key: &str,
    extra: &[(&str, &str)],
) -> client::Reply {
    let mut h = vec![("idempotency-key", key)];
    h.extend_from_slice(extra);
    client::post_json(&t.url("/v1/chat/completions"), &h, body)
        .await
        .unwrap()
}

/// Ten requests at once: every answer's body and the number of replays.
async fn ten_at_once(
    t: &Twinroute,
    body: serde_json::Value,
    key: &'static str,
) -> Vec<client::Reply> {
    let url = t.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                // Late joiners too: some arrive while the answer is already streaming.
                tokio::time::sleep(Duration::from_millis(i * 15)).await;
                client::post_json(&url, &[("idempotency-key", key)], &body)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_duplicates_in_flight_make_one_upstream_call_and_get_one_answer() {
    let (a, b, t) = setup("").await;
    // JSON: the answer takes 300 ms, so all ten arrive while it is in flight.
    a.set_behavior(Behavior::Delay(Duration::from_millis(300)));
    let replies = ten_at_once(&t, chat_body("m"), "key-json").await;
    assert_eq!(a.request_count() + b.request_count(), 1);
    let first = replies[0].text();
    assert!(first.contains("hello from a"));
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), first);
    }
    let replays = replies
        .iter()
        .filter(|r| r.header("x-twinroute-idempotent-replay") == Some("true"))
        .count();
    assert_eq!(replays, 9);
    // Each request keeps its own id.
    let mut ids: Vec<_> = replies
        .iter()
        .map(|r| r.header("x-twinroute-request-id").unwrap().to_string())
        .collect();
    // Sorted first: dedup only drops neighbours.
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);

    // SSE: 20 chunks 20 ms apart; joiners arriving mid-stream get it from its first byte.
    a.set_behavior(Behavior::Ok);
    a.set_stream(20, Duration::from_millis(20));
    a.clear();
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let replies = ten_at_once(&t, body, "key-sse").await;
    assert_eq!(a.request_count(), 1);
    let first = replies[0].text();
    assert!(
        first.contains("tok0 ") && first.contains("tok19 ") && first.ends_with("data: [DONE]\n\n")
    );
    for r in &replies {
        assert_eq!(r.text(), first);
        assert!(!r.broken);
    }
    t.wait_for_log("idempotent_replay=true").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reaches_no_provider_and_another_body_is_a_422() {
    let (a, _b, t) = setup("idempotency: {ttl_s: 60}\n").await;
    let r = keyed(&t, &chat_body("m"), "\"order-17\"", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-twinroute-idempotent-replay"), None);
    let again = keyed(&t, &chat_body("m"), "\"order-17\"", &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-twinroute-idempotent-replay"), Some("true"));
    assert_eq!(again.text(), r.text());
    assert_eq!(a.request_count(), 1, "the replay reached a provider");

    // Same key, another body: 422 in the API's own error shape, nothing upstream.
    let mut other = chat_body("m");
    other["temperature"] = json!(0.2);
    let r = keyed(&t, &other, "\"order-17\"", &[]).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["code"], "idempotency_key_reused");
    let anthropic = client::post_json(
        &t.url("/v1/messages"),
        &[
            ("idempotency-key", "order-17"),
            ("anthropic-version", "2023-06-01"),
        ],
        &json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(anthropic.status, 422, "another route is another request");
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(a.request_count(), 1);

    // A malformed key is the client's error.
    let r = keyed(&t, &chat_body("m"), "\"\"", &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(a.request_count(), 1);
    let s = t.status().await;
    assert!(s["idempotency"]["entries"].as_u64().unwrap() >= 1, "{s}");
    assert!(t
        .metrics()
        .await
        .contains("twinroute_idempotency_replays_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_to_the_client_token_and_failures_are_not_kept() {
    let a = MockProvider::start("a").await.unwrap();
    let yaml = format!(
        "client_tokens_env: TR_TOKENS\nproviders:\n{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}]\npolicy: {{max_attempts: 1}}\n",
        provider("a", &a.base_url(), ""),
    );
    let t = Twinroute::start(&yaml, &[("TR_TOKENS", "tenant-one-token,tenant-two-token")]).await;
    let one = [("authorization", "Bearer tenant-one-token")];
    let two = [("authorization", "Bearer tenant-two-token")];
    let r1 = keyed(&t, &chat_body("m"), "shared-key", &one).await;
    let r2 = keyed(&t, &chat_body("m"), "shared-key", &two).await;
    assert_eq!((r1.status, r2.status), (200, 200));
    assert_eq!(r2.header("x-twinroute-idempotent-replay"), None);
    assert_eq!(a.request_count(), 2, "two tenants shared an answer");
    let r1_again = keyed(&t, &chat_body("m"), "shared-key", &one).await;
    assert_eq!(
        r1_again.header("x-twinroute-idempotent-replay"),
        Some("true")
    );
    assert_eq!(a.request_count(), 2);

    // A failure is not kept: the retry after a 502 is a new try.
    a.set_behavior(Behavior::status(503));
    let r = keyed(&t, &chat_body("m"), "flaky", &one).await;
    assert_eq!(r.status, 502);
    a.set_behavior(Behavior::Ok);
    let r = keyed(&t, &chat_body("m"), "flaky", &one).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-idempotent-replay"), None);
    assert_eq!(a.request_count(), 4);
}

/// The client holds the whole 502 a moment before the leader lets its key go; a retry sent the
/// instant the failure arrives must be a new try, never the failure replayed. Eight clients at
/// once, 25 rounds each on new keys, each on its own model (its own failing-then-healthy
/// provider answer), so the retries land inside that moment often (a CI run hit it; the store's
/// unit tests in `serve::idempotency` pin the ordering itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sent_the_moment_a_failure_arrives_is_a_new_try() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 25;
    let a = std::sync::Arc::new(MockProvider::start("a").await.unwrap());
    let models: String = (0..CLIENTS)
        .map(|i| format!("  - name: m{i}\n    offerings: [{{provider: a, model: a-m{i}}}]\n"))
        .collect();
    let yaml = format!(
        "providers:\n{}models:\n{models}policy: {{max_attempts: 1}}\n",
        provider("a", &a.base_url(), ""),
    );
    let t = std::sync::Arc::new(Twinroute::start(&yaml, &[]).await);
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (a, t) = (a.clone(), t.clone());
        clients.push(tokio::spawn(async move {
            let (model, wire) = (format!("m{i}"), format!("a-m{i}"));
            for round in 0..ROUNDS {
                let key = format!("retry-{i}-{round}");
                a.set_model_behavior(&wire, Some(Behavior::status(503)));
                let failed = keyed(&t, &chat_body(&model), &key, &[]).await;
                assert_eq!(failed.status, 502, "{key}");
                a.set_model_behavior(&wire, None);
                let retry = keyed(&t, &chat_body(&model), &key, &[]).await;
                assert_eq!(retry.status, 200, "{key}: {}", retry.text());
                assert_eq!(retry.header("x-twinroute-idempotent-replay"), None, "{key}");
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(a.request_count(), 2 * CLIENTS * ROUNDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_retention_routes_keep_nothing_under_a_key() {
    let (a, _b, t) = setup("").await;
    let t2 = {
        let yaml = format!(
            "providers:\n{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}]\nroutes:\n  - name: private\n    match: {{headers: {{x-twinroute-route: private}}}}\n    zero_retention: true\n",
            provider("a", &a.base_url(), ""),
        );
        Twinroute::start(&yaml, &[]).await
    };
    drop(t);
    let private = [("x-twinroute-route", "private")];
    for _ in 0..2 {
        let r = keyed(&t2, &chat_body("m"), "k", &private).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-twinroute-idempotent-replay"), None);
    }
    assert_eq!(a.request_count(), 2, "a zero-retention answer was kept");
    assert_eq!(t2.status().await["idempotency"]["entries"], 0);
}
