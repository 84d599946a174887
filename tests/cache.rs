//! Black-box tests of the prompt cache: a hit reaches no provider; streamed and whole answers
//! share an entry; errors, empty answers and cut streams are never kept; stale-if-error serves
//! a recent answer when every provider is down, and not past its window; Cache-Control.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use twinroute::testkit::client;

/// Providers a and b serve model `m`, whose policy caches with `cache` (a YAML map).
async fn setup(cache: &str) -> (MockProvider, MockProvider, Twinroute) {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let yaml = format!(
        "providers:\n{}{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}, {{provider: b, model: b-m}}]\n    policy: {{cache: {cache}}}\npolicy: {{max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n",
        provider("a", &a.base_url(), ""),
        provider("b", &b.base_url(), ""),
    );
    (a, b, Twinroute::start(&yaml, &[]).await)
}

fn ask(prompt: &str, stream: bool) -> serde_json::Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": prompt}]})
}

async fn chat(t: &Twinroute, body: &serde_json::Value, headers: &[(&str, &str)]) -> client::Reply {
    client::post_json(&t.url("/v1/chat/completions"), headers, body)
        .await
        .unwrap()
}

fn calls(a: &MockProvider, b: &MockProvider) -> usize {
    a.request_count() + b.request_count()
}

/// The text of an OpenAI stream.
fn streamed_text(body: &str) -> String {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_reaches_no_provider_and_streams_share_entries_with_whole_answers() {
    let (a, b, t) = setup("{ttl_s: 60}").await;
    let r = chat(&t, &ask("one", false), &[]).await;
    assert_eq!(r.header("x-twinroute-cache"), Some("miss"));
    assert_eq!(calls(&a, &b), 1);
    // Keys written in another order are the same request.
    let reordered = json!({"messages": [{"content": "one", "role": "user"}], "model": "m"});
    let hit = chat(&t, &reordered, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-twinroute-cache"), Some("hit"));
    assert!(hit.header("age").is_some());
    assert_eq!(hit.json(), r.json());
    assert_eq!(calls(&a, &b), 1, "a hit reached a provider");

    // The same prompt as a stream: served from the entry as a well-formed stream.
    let s = chat(&t, &ask("one", true), &[]).await;
    assert_eq!(s.header("x-twinroute-cache"), Some("hit"));
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let text = s.text();
    assert_eq!(streamed_text(&text), "hello from a");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(calls(&a, &b), 1);

    // A streamed answer is kept too, and serves a whole-answer request.
    a.set_stream(5, Duration::from_millis(2));
    let s = chat(&t, &ask("two", true), &[]).await;
    assert_eq!(s.header("x-twinroute-cache"), Some("miss"));
    let streamed = streamed_text(&s.text());
    assert_eq!(calls(&a, &b), 2);
    let whole = chat(&t, &ask("two", false), &[]).await;
    assert_eq!(
        whole.header("x-twinroute-cache"),
        Some("hit"),
        "{}",
        whole.text()
    );
    assert_eq!(whole.json()["choices"][0]["message"]["content"], streamed);
    assert_eq!(calls(&a, &b), 2);
    t.wait_for_log("cache=hit").await;
    let st = t.status().await;
    assert_eq!(st["cache"]["entries"], 2, "{st}");
    assert!(t
        .metrics()
        .await
        .contains("twinroute_cache_lookups_total{outcome=\"hit\"} 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_empty_answers_and_cut_streams_are_never_kept() {
    let (a, b, t) = setup("{ttl_s: 60}").await;
    // Every provider failing: a 502, not kept.
    a.set_behavior(Behavior::status(503));
    b.set_behavior(Behavior::status(503));
    assert_eq!(chat(&t, &ask("e", false), &[]).await.status, 502);
    a.set_behavior(Behavior::Ok);
    b.set_behavior(Behavior::Ok);
    let r = chat(&t, &ask("e", false), &[]).await;
    assert_eq!(r.header("x-twinroute-cache"), Some("miss"));

    // An empty completion.
    let empty = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "a-m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]});
    a.push_once(Behavior::Json(empty.to_string()));
    chat(&t, &ask("empty", false), &[]).await;
    let r = chat(&t, &ask("empty", false), &[]).await;
    assert_eq!(
        r.header("x-twinroute-cache"),
        Some("miss"),
        "an empty answer was kept"
    );

    // A stream cut mid-way (after its first content: it reached the client, broken).
    a.push_once(Behavior::StreamThenDie { chunks: 2 });
    let cut = chat(&t, &ask("cut", true), &[]).await;
    assert!(
        cut.text().contains("upstream_stream_broken"),
        "{}",
        cut.text()
    );
    let r = chat(&t, &ask("cut", true), &[]).await;
    assert_eq!(
        r.header("x-twinroute-cache"),
        Some("miss"),
        "a cut stream was kept"
    );

    // Cache-Control: no-store keeps nothing; no-cache skips the read.
    let before = calls(&a, &b);
    chat(&t, &ask("private", false), &[("cache-control", "no-store")]).await;
    let r = chat(&t, &ask("private", false), &[]).await;
    assert_eq!(r.header("x-twinroute-cache"), Some("miss"));
    let r = chat(&t, &ask("private", false), &[("cache-control", "no-cache")]).await;
    assert_eq!(r.header("x-twinroute-cache"), Some("bypass"));
    assert_eq!(calls(&a, &b), before + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_a_recent_answer_when_every_provider_is_down() {
    let (a, b, t) = setup("{ttl_s: 1, stale_if_error_s: 2}").await;
    let fresh = chat(&t, &ask("s", false), &[]).await;
    assert_eq!(fresh.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past its TTL with providers up: a miss, answered upstream (and kept afresh).
    let r = chat(&t, &ask("s", false), &[]).await;
    assert_eq!(r.header("x-twinroute-cache"), Some("miss"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.set_behavior(Behavior::status(503));
    b.set_behavior(Behavior::status(503));
    let stale = chat(&t, &ask("s", false), &[]).await;
    assert_eq!(stale.status, 200, "{}", stale.text());
    assert_eq!(stale.header("x-twinroute-cache"), Some("stale"));
    assert!(stale.header("age").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(
        stale.json()["choices"][0]["message"]["content"],
        "hello from a"
    );
    t.wait_for_log("cache=stale").await;
    // Past the stale window: the error.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = chat(&t, &ask("s", false), &[]).await;
    assert_eq!(r.status, 502);
}
