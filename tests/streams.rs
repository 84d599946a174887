//! Black-box tests of streams that survive: the commit point (nothing reaches the client before
//! an answer's first content, or before a whole non-streaming body), `first_token_ms`, stall
//! detection with `stream_idle_ms`, in both client formats, against scripted loopback providers.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use twinroute::testkit::client;

const MS: fn(u64) -> Duration = Duration::from_millis;

/// Providers p (first) and q (twin) of model `m`, both of `api`; `p_timeouts` and `policy` are
/// spliced into p's timeouts map and the policy map.
async fn pair(
    api: &str,
    p_timeouts: &str,
    policy: &str,
) -> (MockProvider, MockProvider, Twinroute) {
    let p = MockProvider::start("p").await.unwrap();
    let q = MockProvider::start("q").await.unwrap();
    let yaml = format!(
        "providers:\n  - {{name: p, api: {api}, base_url: \"{}\", timeouts: {{connect_ms: 300, first_byte_ms: 1000{p_timeouts}}}, probe: {{enabled: false}}}}\n  - {{name: q, api: {api}, base_url: \"{}\", timeouts: {{connect_ms: 300, first_byte_ms: 1000}}, probe: {{enabled: false}}}}\nmodels:\n  - name: m\n    offerings: [{{provider: p, model: p-m}}, {{provider: q, model: q-m}}]\npolicy: {{max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}{policy}}}\n",
        p.base_url(),
        q.base_url()
    );
    (p, q, Twinroute::start(&yaml, &[]).await)
}

/// An OpenAI chunk event with this delta (and finish reason).
fn chunk(id: &str, delta: serde_json::Value, finish: Option<&str>) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": id, "object": "chat.completion.chunk", "created": 1, "model": "p-m",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    )
}

fn role(id: &str) -> String {
    chunk(id, json!({"role": "assistant", "content": ""}), None)
}

fn token(id: &str, i: usize) -> String {
    chunk(id, json!({"content": format!("t{i} ")}), None)
}

fn stream_body(model: &str) -> serde_json::Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

async fn chat_stream(t: &Twinroute) -> client::Reply {
    client::post_json(&t.url("/v1/chat/completions"), &[], &stream_body("m"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_content_within_first_token_ms_fails_over_with_nothing_sent() {
    let (p, q, t) = pair("openai", ", first_token_ms: 500", "").await;
    // Header and role chunk at once, the first token only after 2 s.
    p.set_behavior(Behavior::sse_script(
        vec![
            (MS(0), role("chatcmpl-p")),
            (MS(2000), token("chatcmpl-p", 0)),
            (MS(0), "data: [DONE]\n\n".into()),
        ],
        false,
    ));
    let r = chat_stream(&t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("q"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("2"));
    let text = r.text();
    assert!(
        !text.contains("chatcmpl-p"),
        "p's held bytes reached the client: {text}"
    );
    assert!(
        text.contains("tok0") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    // The client's first byte came from q, right after the 500 ms first-token timeout.
    let first = r.chunks[0].0;
    assert!(
        first >= MS(450) && first < MS(1500),
        "first byte at {first:?}"
    );
    t.wait_for_log("failovers=\"p:first_token_timeout\"").await;
    let _ = q;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_streams_are_held_until_their_first_content_delta() {
    let (p, _q, t) = pair("anthropic", ", first_token_ms: 400", "").await;
    let ev = |name: &str, v: serde_json::Value| format!("event: {name}\ndata: {v}\n\n");
    p.set_behavior(Behavior::sse_script(
        vec![
            (
                MS(0),
                message_start("msg_p", "p-m"),
            ),
            (MS(0), ev("ping", json!({"type": "ping"}))),
            (
                MS(0),
                ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            ),
            (
                MS(1500),
                ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "late"}})),
            ),
        ],
        false,
    ));
    let body = json!({"model": "m", "stream": true, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[("anthropic-version", "2023-06-01")],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("q"));
    let text = r.text();
    assert!(
        !text.contains("msg_p") && text.contains("msg_mock"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .ends_with(r#"data: {"type":"message_stop"}"#),
        "{text}"
    );

    // An error event before any content (an overloaded model) fails over too.
    p.set_behavior(Behavior::sse_script(
        vec![
            (
                MS(0),
                message_start("msg_p2", "p-m"),
            ),
            (
                MS(10),
                ev("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
            ),
        ],
        false,
    ));
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[("anthropic-version", "2023-06-01")],
        &body,
    )
    .await
    .unwrap();
    assert_eq!(r.header("x-twinroute-provider"), Some("q"), "{}", r.text());
    assert!(!r.text().contains("msg_p2"));
    t.wait_for_log("failovers=\"p:status_5xx\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_after_its_content_ends_with_an_error_event_within_a_second() {
    let (p, q, t) = pair("openai", ", stream_idle_ms: 500", "").await;
    let mut parts = vec![(MS(0), role("chatcmpl-p"))];
    parts.extend((0..20).map(|i| (MS(10), token("chatcmpl-p", i))));
    // Then silence, far longer than stream_idle_ms.
    parts.push((MS(5000), token("chatcmpl-p", 20)));
    p.set_behavior(Behavior::sse_script(parts, false));
    let r = chat_stream(&t).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("p"));
    let text = r.text();
    assert!(text.contains("t19 ") && !text.contains("t20 "), "{text}");
    assert!(
        text.trim_end().ends_with(r#""code":"upstream_stream_broken","message":"upstream provider p ended the stream unexpectedly","type":"api_error"}}"#),
        "{text}"
    );
    // The error event came within a second of the last token (500 ms of silence, then the cut).
    let last_token = r
        .chunks
        .iter()
        .rev()
        .find(|(_, c)| String::from_utf8_lossy(c).contains("t19 "))
        .unwrap()
        .0;
    let gap = r.elapsed - last_token;
    assert!(
        gap >= MS(450) && gap < MS(1000),
        "error event {gap:?} after the stall"
    );
    t.wait_for_log("stream_stall").await;
    // Counted against the offering's health like any failure.
    let s = t.status().await;
    let out = &s["offerings_out"];
    assert!(
        out.as_array().unwrap().is_empty() || out[0]["last_error"] == "stream_stall",
        "{s}"
    );
    assert!(s["providers"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("stream_stall"));
    let _ = q;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streaming_answer_cut_mid_body_is_served_whole_by_the_twin() {
    let (p, q, t) = pair("openai", "", "").await;
    let full = json!({"id": "chatcmpl-p", "object": "chat.completion", "created": 1, "model": "p-m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a long answer ".repeat(200)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 400, "total_tokens": 403}})
    .to_string();
    let half = full[..full.len() / 2].to_string();
    p.set_behavior(Behavior::Script {
        content_type: "application/json".into(),
        parts: vec![(MS(0), half)],
        cut: true,
        content_length: Some(full.len()),
    });
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("q"));
    assert!(!r.broken);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "hello from q");
    t.wait_for_log("failovers=\"p:truncated\"").await;

    // A whole answer is delivered as it was sent, with its length.
    p.set_behavior(Behavior::Script {
        content_type: "application/json".into(),
        parts: vec![
            (MS(0), full[..100].to_string()),
            (MS(50), full[100..].to_string()),
        ],
        cut: false,
        content_length: Some(full.len()),
    });
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("p"));
    assert_eq!(r.text(), full);
    let _ = q;
}

/// p (first) and q (twin) of model `m` under `stream_recovery: continue`: p of `p_api` with
/// `p_timeouts` spliced into its timeouts; q of `q_api` serving `q_offering` (its offering map
/// without the provider). Both mocks strict: they refuse what the real APIs refuse.
async fn recovering(
    p_api: &str,
    p_timeouts: &str,
    q_api: &str,
    q_offering: &str,
) -> (MockProvider, MockProvider, Twinroute) {
    let p = MockProvider::start("p").await.unwrap();
    let q = MockProvider::start("q").await.unwrap();
    p.set_strict(true);
    q.set_strict(true);
    let yaml = format!(
        "providers:\n  - {{name: p, api: {p_api}, base_url: \"{}\", timeouts: {{connect_ms: 300, first_byte_ms: 1000{p_timeouts}}}, probe: {{enabled: false}}}}\n  - {{name: q, api: {q_api}, base_url: \"{}\", timeouts: {{connect_ms: 300, first_byte_ms: 1000}}, probe: {{enabled: false}}}}\nmodels:\n  - name: m\n    offerings: [{{provider: p, model: p-m}}, {{provider: q, {q_offering}}}]\npolicy: {{max_attempts: 3, backoff: {{base_ms: 1, max_ms: 2}}, stream_recovery: continue}}\n",
        p.base_url(),
        q.base_url()
    );
    (p, q, Twinroute::start(&yaml, &[]).await)
}

/// A recovery case: p of Anthropic's API breaks its stream as `p_breaks`; q (`q_offering`)
/// completes whatever prefill it gets.
async fn recovery_case(
    q_offering: &str,
    p_breaks: Behavior,
) -> (MockProvider, MockProvider, Twinroute) {
    let (p, q, t) = recovering("anthropic", "", "anthropic", q_offering).await;
    p.set_behavior(p_breaks);
    q.set_behavior(Behavior::Complete {
        text: full_answer(),
    });
    (p, q, t)
}

/// The answer both providers would give: 60 tokens.
fn full_answer() -> String {
    (0..60).map(|i| format!("t{i} ")).collect()
}

fn anthropic_event(name: &str, v: serde_json::Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// The `message_start` event of an Anthropic stream with this message id and model.
fn message_start(id: &str, model: &str) -> String {
    anthropic_event(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 0}}}),
    )
}

/// The first `n` tokens of the full answer as an Anthropic stream that is then cut.
fn anthropic_cut_after(n: usize) -> Behavior {
    let mut parts = vec![
        (MS(0), message_start("msg_p", "p-m")),
        (
            MS(0),
            anthropic_event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
        ),
    ];
    for i in 0..n {
        parts.push((
            MS(2),
            anthropic_event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("t{i} ")}})),
        ));
    }
    Behavior::sse_script(parts, true)
}

/// The visible text of a client stream of either format, and its events' data.
fn client_text(body: &str) -> (String, Vec<serde_json::Value>) {
    let mut text = String::new();
    let mut events = Vec::new();
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if v["type"] == "content_block_delta" {
            text.push_str(v["delta"]["text"].as_str().unwrap_or(""));
        }
        events.push(v);
    }
    (text, events)
}

fn messages_body() -> serde_json::Value {
    json!({"model": "m", "stream": true, "max_tokens": 500, "messages": [{"role": "user", "content": "count to 59"}]})
}

async fn messages_stream(t: &Twinroute) -> client::Reply {
    client::post_json(
        &t.url("/v1/messages"),
        &[("anthropic-version", "2023-06-01")],
        &messages_body(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_after_40_of_60_tokens_is_completed_from_the_twin() {
    let (_p, q, t) =
        recovery_case("model: claude-sonnet-4-5-20250929", anthropic_cut_after(40)).await;
    let r = messages_stream(&t).await;
    assert_eq!(r.status, 200);
    assert!(!r.broken);
    let body = r.text();
    let (text, events) = client_text(&body);
    assert_eq!(text, full_answer(), "{body}");
    // One message: p's message_start only, one text block (index 0), q's stop reason.
    let starts: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "message_start")
        .collect();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0]["message"]["id"], "msg_p");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "content_block_start")
            .count(),
        1
    );
    assert!(events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .all(|e| e["index"] == 0));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "message_stop")
            .count(),
        1
    );
    assert!(body.contains(": twinroute completed this stream from q after p broke it"));
    // Usage covers both calls as far as each reported it: p's input 12 and q's 12; q's output 9
    // (p was cut before it reported any).
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 24, "output_tokens": 9}),
        "{body}"
    );
    // The twin received exactly the 40 tokens sent, as the prefill (without the trailing space
    // the real API refuses).
    let sent_to_q = q.requests()[0].json();
    let last = sent_to_q["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "assistant");
    let forty: String = (0..40).map(|i| format!("t{i} ")).collect();
    assert_eq!(last["content"], forty.trim_end());
    t.wait_for_log("stream_recovery=completed:q").await;
    assert!(t
        .metrics()
        .await
        .contains("twinroute_stream_recoveries_total{outcome=\"completed\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_stream_that_stalls_is_completed_by_claude_through_translation() {
    let (p, q, t) = recovering(
        "openai",
        ", stream_idle_ms: 500",
        "anthropic",
        "model: claude-sonnet-4-5-20250929",
    )
    .await;
    let mut parts = vec![(MS(0), role("chatcmpl-p"))];
    parts.extend((0..20).map(|i| (MS(5), token("chatcmpl-p", i))));
    parts.push((MS(5000), token("chatcmpl-p", 20)));
    p.set_behavior(Behavior::sse_script(parts, false));
    q.set_behavior(Behavior::Complete {
        text: full_answer(),
    });
    let r = chat_stream(&t).await;
    let body = r.text();
    let (text, events) = client_text(&body);
    assert_eq!(text, full_answer(), "{body}");
    // One role chunk, every chunk carries the first part's id and model, one [DONE] at the end.
    let roles = events
        .iter()
        .filter(|e| e["choices"][0]["delta"]["role"].is_string())
        .count();
    assert_eq!(roles, 1, "{body}");
    assert!(events
        .iter()
        .filter(|e| e["id"].is_string())
        .all(|e| e["id"] == "chatcmpl-p" && e["model"] == "p-m"));
    // [DONE] once, at the end; only the SSE comment saying who completed it follows.
    assert!(
        body.ends_with(
            "data: [DONE]\n\n: twinroute completed this stream from q after p broke it\n\n"
        ),
        "{body}"
    );
    assert_eq!(body.matches("data: [DONE]").count(), 1);
    // Completed within a second of the stall (500 ms of silence, then the twin's answer).
    let stall_at = r
        .chunks
        .iter()
        .find(|(_, c)| String::from_utf8_lossy(c).contains("t19 "))
        .unwrap()
        .0;
    assert!(
        r.elapsed - stall_at < MS(1000),
        "{:?}",
        r.elapsed - stall_at
    );
    t.wait_for_log("stream_recovery=completed:q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_that_refuses_prefill_leaves_the_error_event_naming_the_cut() {
    // An operator marked q as taking prefill, but its model (Claude 4.6) refuses it.
    let (_p, _q, t) = recovery_case(
        "model: claude-opus-4-6, prefill: true",
        anthropic_cut_after(10),
    )
    .await;
    let r = messages_stream(&t).await;
    let body = r.text();
    t.wait_for_log("q refused the continuation (400)").await;
    assert!(
        body.trim_end().ends_with(r#"{"error":{"message":"upstream provider p ended the stream unexpectedly","type":"api_error"},"type":"error"}"#),
        "{body}"
    );
    assert!(
        !body.contains("prefill"),
        "the continuation's 400 reached the client: {body}"
    );
    t.wait_for_log("stream_recovery=failed:p").await;

    // Without the operator's word, a model known to refuse prefill is not even tried.
    let (_p, q, t) = recovery_case("model: claude-opus-4-6", anthropic_cut_after(10)).await;
    let r = messages_stream(&t).await;
    assert!(r
        .text()
        .contains("upstream provider p ended the stream unexpectedly"));
    assert_eq!(q.request_count(), 0);
    assert!(t
        .metrics()
        .await
        .contains("twinroute_stream_recoveries_total{outcome=\"no_candidate\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_inside_a_tool_call_is_never_continued() {
    let tool_call_cut = Behavior::sse_script(
        vec![
            (MS(0), message_start("msg_p", "p-m")),
            (
                MS(0),
                anthropic_event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}}),
                ),
            ),
            (
                MS(5),
                anthropic_event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"q\": \"wea"}}),
                ),
            ),
        ],
        true,
    );
    let (_p, q, t) = recovery_case("model: claude-sonnet-4-5-20250929", tool_call_cut).await;
    let r = messages_stream(&t).await;
    let body = r.text();
    assert!(body.contains("input_json_delta"));
    assert!(
        body.trim_end().ends_with(r#"{"error":{"message":"upstream provider p ended the stream unexpectedly","type":"api_error"},"type":"error"}"#),
        "{body}"
    );
    assert_eq!(q.request_count(), 0);
    assert!(t
        .metrics()
        .await
        .contains("twinroute_stream_recoveries_total{outcome=\"not_continuable\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_event_is_dropped_and_a_missing_done_is_supplied() {
    let (p, _q, t) = pair("openai", "", "").await;
    p.set_behavior(Behavior::sse_script(
        vec![
            (MS(0), role("chatcmpl-p")),
            (MS(5), token("chatcmpl-p", 0)),
            (
                MS(5),
                "data: {\"choices\": [{\"delta\": {\"content\": \"oops\"\n\n".into(),
            ),
            (MS(5), token("chatcmpl-p", 1)),
            (MS(5), chunk("chatcmpl-p", json!({}), Some("stop"))),
            // Closed cleanly without data: [DONE].
        ],
        false,
    ));
    let r = chat_stream(&t).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("p"));
    let body = r.text();
    assert!(!body.contains("oops"), "{body}");
    let (text, _) = client_text(&body);
    assert_eq!(text, "t0 t1 ");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    t.wait_for_log("dropped a stream event whose data is not JSON")
        .await;
    assert!(t
        .metrics()
        .await
        .contains("twinroute_stream_events_dropped_total{provider=\"p\"} 1"));

    // Closed cleanly before any finish: a truncation, said with the error event.
    p.set_behavior(Behavior::sse_script(
        vec![(MS(0), role("chatcmpl-p")), (MS(5), token("chatcmpl-p", 0))],
        false,
    ));
    let r = chat_stream(&t).await;
    assert!(
        r.text()
            .contains("upstream provider p ended the stream unexpectedly"),
        "{}",
        r.text()
    );
}

/// The real SDKs' stream parsers accept a spliced stream as one answer, and raise on one that
/// nothing could complete (`tests/sdk/recovery_sdk.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_sdks_read_a_completed_stream_as_one_answer() {
    let p = MockProvider::start("p").await.unwrap();
    let po = MockProvider::start("po").await.unwrap();
    let q = MockProvider::start("q").await.unwrap();
    q.set_strict(true);
    p.set_model_behavior("p-claude", Some(anthropic_cut_after(40)));
    p.set_model_behavior("p-refused", Some(anthropic_cut_after(10)));
    let mut parts = vec![(MS(0), role("chatcmpl-p"))];
    parts.extend((0..20).map(|i| (MS(2), token("chatcmpl-p", i))));
    po.set_model_behavior("p-gpt", Some(Behavior::sse_script(parts, true)));
    q.set_behavior(Behavior::Complete {
        text: full_answer(),
    });
    let yaml = format!(
        "providers:\n  - {{name: p, api: anthropic, base_url: \"{}\", probe: {{enabled: false}}}}\n  - {{name: po, api: openai, base_url: \"{}\", probe: {{enabled: false}}}}\n  - {{name: q, api: anthropic, base_url: \"{}\", probe: {{enabled: false}}}}\nmodels:\n  - name: recover-claude\n    offerings: [{{provider: p, model: p-claude}}, {{provider: q, model: claude-sonnet-4-5-20250929}}]\n  - name: recover-gpt\n    offerings: [{{provider: po, model: p-gpt}}, {{provider: q, model: claude-sonnet-4-5}}]\n  - name: recover-refused\n    offerings: [{{provider: p, model: p-refused}}, {{provider: q, model: claude-opus-4-6, prefill: true}}]\npolicy: {{max_attempts: 3, stream_recovery: continue}}\n",
        p.base_url(),
        po.base_url(),
        q.base_url()
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let base = t.url("");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/recovery_sdk.py"),
                &base,
            ])
            .output()
            .expect("python3 runs (scripts/setup.sh installs the SDKs)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.wait_for_log("stream_recovery=completed:q").await;
    t.wait_for_log("stream_recovery=failed:p").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_that_breaks_too_ends_with_the_error_event_naming_the_first_break() {
    let (_p, q, t) =
        recovery_case("model: claude-sonnet-4-5-20250929", anthropic_cut_after(10)).await;
    // The twin starts the continuation, then is cut as well.
    q.set_behavior(Behavior::sse_script(
        vec![
            (
                MS(0),
                message_start("msg_q", "q-m"),
            ),
            (
                MS(0),
                anthropic_event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " t10"}})),
            ),
        ],
        true,
    ));
    let r = messages_stream(&t).await;
    let body = r.text();
    let (text, _) = client_text(&body);
    let eleven: String = (0..11).map(|i| format!("t{i} ")).collect();
    assert_eq!(text, eleven.trim_end(), "{body}");
    assert!(
        body.trim_end().ends_with(r#"{"error":{"message":"upstream provider p ended the stream unexpectedly","type":"api_error"},"type":"error"}"#),
        "{body}"
    );
    t.wait_for_log("stream_recovery=failed:p").await;
}
