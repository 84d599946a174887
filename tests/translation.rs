//! Black-box tests of wire-format translation: the real binary, loopback providers that check
//! bodies the way the real APIs do (`MockProvider::set_strict`), assertions on both sides of the
//! proxy. An Anthropic client served by an OpenAI-format provider and the other way round, plain,
//! streaming and with tools; failover across formats; errors re-shaped; untranslatable requests.

mod common;

use common::*;
use serde_json::{json, Value};
use twinroute::testkit::client;

const ANTHROPIC_VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

/// `anthropic` (api: anthropic) and `oa` (api: openai) providers, both strict, with `models`
/// YAML appended.
async fn setup(models: &str) -> (MockProvider, MockProvider, Twinroute) {
    let an = MockProvider::start("an").await.unwrap();
    let oa = MockProvider::start("oa").await.unwrap();
    an.set_strict(true);
    oa.set_strict(true);
    let yaml = format!(
        "providers:\n  - {{name: anthropic, api: anthropic, base_url: \"{}\", probe: {{enabled: false}}, timeouts: {{connect_ms: 300, first_byte_ms: 2000}}}}\n  - {{name: oa, api: openai, base_url: \"{}\", probe: {{enabled: false}}, timeouts: {{connect_ms: 300, first_byte_ms: 2000}}}}\nmodels:\n{models}policy: {{backoff: {{base_ms: 1, max_ms: 5}}}}\n",
        an.base_url(),
        oa.base_url()
    );
    let t = Twinroute::start(&yaml, &[]).await;
    (an, oa, t)
}

fn sse_data(text: &str) -> Vec<(Option<String>, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut event = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            let v = if data == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(&data).unwrap_or_else(|e| panic!("bad event {data:?}: {e}"))
            };
            (event, v)
        })
        .collect()
}

const CLAUDE_ON_OPENAI: &str = "  - name: claude-sonnet-4-5\n    offerings: [{provider: oa, model: anthropic/claude-sonnet-4.5}]\n";
const GPT_ON_ANTHROPIC: &str =
    "  - name: gpt-4o\n    offerings: [{provider: anthropic, model: claude-sonnet-4-5-20250929}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_client_is_served_by_an_openai_format_provider() {
    let (_an, oa, t) = setup(CLAUDE_ON_OPENAI).await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "system": "Be brief.",
                      "messages": [{"role": "user", "content": "Hello"}], "metadata": {"user_id": "u-1"}});
    let r = client::post_json(&t.url("/v1/messages"), &[ANTHROPIC_VERSION], &body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-twinroute-translated"),
        Some("anthropic->openai")
    );
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "hello from oa"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"], json!({"input_tokens": 12, "output_tokens": 5}));
    assert_eq!(v["model"], "anthropic/claude-sonnet-4.5");
    let req = &oa.requests()[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.json(),
        json!({"model": "anthropic/claude-sonnet-4.5", "max_tokens": 64, "user": "u-1",
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]})
    );
    t.wait_for_log("translated=anthropic->openai").await;
    assert!(t
        .metrics()
        .await
        .contains("twinroute_translations_total{direction=\"anthropic->openai\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_stream_from_an_openai_provider_is_well_formed() {
    let (_an, oa, t) = setup(CLAUDE_ON_OPENAI).await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "Hello"}]});
    let r = client::post_json(&t.url("/v1/messages"), &[ANTHROPIC_VERSION], &body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    // Delivered event by event as the provider streamed (5 chunks 10 ms apart), not at the end.
    assert!(r.chunks.len() >= 3, "{} body chunks", r.chunks.len());
    let events = sse_data(&r.text());
    let kinds: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(&kinds[1..2], ["content_block_start"]);
    assert_eq!(
        kinds[kinds.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    // Every event's `type` is its event name, as the Anthropic SDK's parser expects.
    for (e, v) in &events {
        assert_eq!(v["type"].as_str(), e.as_deref());
    }
    let text: String = events
        .iter()
        .filter_map(|(_, v)| v.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 tok4 ");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 5);
    assert_eq!(delta["usage"]["input_tokens"], 12);
    // The provider was asked for usage in its stream.
    let sent = oa.requests()[0].json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_tool_call_and_its_result_cross_to_an_openai_provider() {
    let (_an, oa, t) = setup(CLAUDE_ON_OPENAI).await;
    let answer = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/translate/openai_response_tools.json"
    ))
    .unwrap();
    oa.set_behavior(Behavior::Json(answer));
    let body = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 256,
        "tools": [{"name": "get_current_weather", "description": "Weather now",
                   "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": false},
        "messages": [
            {"role": "user", "content": "Weather in Rome?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_current_weather", "input": {"location": "Rome"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "21C, sunny"},
                {"type": "text", "text": "And Boston and Paris?"}]}
        ]
    });
    let r = client::post_json(&t.url("/v1/messages"), &[ANTHROPIC_VERSION], &body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"],
        json!([
            {"type": "tool_use", "id": "call_abc123", "name": "get_current_weather", "input": {"location": "Boston, MA"}},
            {"type": "tool_use", "id": "call_def456", "name": "get_current_weather", "input": {"location": "Paris, France"}}
        ])
    );
    // What the provider got passed its own checks (tool message after its tool_calls) and
    // carries the ids and the arguments as a JSON string.
    let sent = oa.requests()[0].json();
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_01", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Rome\"}"}}]})
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": "toolu_01", "content": "21C, sunny"})
    );
    assert_eq!(
        sent["messages"][3],
        json!({"role": "user", "content": [{"type": "text", "text": "And Boston and Paris?"}]})
    );
    assert_eq!(
        sent["tools"][0]["function"]["parameters"]["required"],
        json!(["location"])
    );
    assert_eq!(sent["tool_choice"], "auto");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_client_is_served_by_an_anthropic_provider() {
    let (an, _oa, t) = setup(GPT_ON_ANTHROPIC).await;
    let r = t
        .chat(
            &json!({"model": "gpt-4o", "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "stop": "END"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-twinroute-translated"),
        Some("openai->anthropic")
    );
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "hello from an");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})
    );
    let req = &an.requests()[0];
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    // Messages requires max_tokens: the provider's default stands in.
    assert_eq!(
        req.json(),
        json!({"model": "claude-sonnet-4-5-20250929", "max_tokens": 4096, "system": "Be brief.",
               "stop_sequences": ["END"], "messages": [{"role": "user", "content": "Hi"}]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_stream_with_usage_and_tool_calls_from_an_anthropic_provider() {
    let (an, _oa, t) = setup(GPT_ON_ANTHROPIC).await;
    let stream = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/translate/anthropic_stream_tools.txt"
    ))
    .unwrap();
    let events: Vec<String> = stream.split_inclusive("\n\n").map(str::to_string).collect();
    an.set_behavior(Behavior::Sse(events));
    let body = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Weather in SF?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}],
        "tool_choice": "required", "parallel_tool_calls": false, "max_completion_tokens": 300});
    let r = t.chat(&body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let chunks = sse_data(&r.text());
    assert_eq!(chunks.last().unwrap().1, json!("[DONE]"));
    let chunks: Vec<&Value> = chunks[..chunks.len() - 1].iter().map(|(_, v)| v).collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "Okay, let's check the weather for San Francisco, CA:");
    let args: String = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/arguments"))
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 472);
    assert_eq!(usage["usage"]["completion_tokens"], 89);
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(finish, ["tool_calls"]);
    let sent = an.requests()[0].json();
    assert_eq!(sent["max_tokens"], 300);
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");
    assert!(sent.get("stream_options").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tool_calls_from_an_anthropic_provider_reach_an_openai_client() {
    let (an, _oa, t) = setup(GPT_ON_ANTHROPIC).await;
    let answer = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/translate/anthropic_response_tools.json"
    ))
    .unwrap();
    an.set_behavior(Behavior::Json(answer));
    let body: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/translate/openai_request_tools.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let r = t.chat(&body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["id"], "call_def456");
    assert_eq!(
        calls[1]["function"]["arguments"],
        "{\"location\":\"Paris, France\"}"
    );
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    // The request with two tool results passed the provider's own tool_result check.
    let sent = an.requests()[0].json();
    assert_eq!(
        sent["messages"][2]["content"][1]["tool_use_id"],
        "call_def456"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_same_format_twin_fails_over_to_the_other_format() {
    let models = "  - name: claude-sonnet-4-5\n    offerings:\n      - {provider: anthropic, model: claude-sonnet-4-5-20250929}\n      - {provider: oa, model: anthropic/claude-sonnet-4.5}\n  - name: gpt-4o\n    equivalents: [{model: claude-sonnet-4-5, grade: 0.9}]\n    offerings: [{provider: oa, model: gpt-4o}]\n    policy: {allow_equivalents: true}\n";
    let (an, oa, t) = setup(models).await;
    an.set_behavior(Behavior::Status {
        status: 529,
        body: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            .into(),
        retry_after: None,
    });
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}]});
    let r = client::post_json(&t.url("/v1/messages"), &[ANTHROPIC_VERSION], &body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("oa"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("2"));
    assert_eq!(
        r.header("x-twinroute-translated"),
        Some("anthropic->openai")
    );
    assert_eq!(r.json()["type"], "message");
    // An OpenAI client of gpt-4o whose twin fails degrades to Claude on the Anthropic format...
    oa.set_behavior(Behavior::status(503));
    an.set_behavior(Behavior::Ok);
    let r = t
        .chat(
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("anthropic"));
    assert_eq!(
        r.header("x-twinroute-translated"),
        Some("openai->anthropic")
    );
    assert_eq!(
        r.header("x-twinroute-equivalent"),
        Some("claude-sonnet-4-5;grade=0.9")
    );
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "hello from an"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_reaches_the_client_in_its_own_shape() {
    let (an, oa, t) = setup(&format!("{CLAUDE_ON_OPENAI}{GPT_ON_ANTHROPIC}")).await;
    oa.set_behavior(Behavior::Status {
        status: 400,
        body: r#"{"error":{"message":"Invalid 'messages[1].content': string too long.","type":"invalid_request_error","param":"messages[1].content","code":"string_above_max_length"}}"#.into(),
        retry_after: None,
    });
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 32, "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let r = client::post_json(&t.url("/v1/messages"), &[ANTHROPIC_VERSION], &body)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Invalid 'messages[1].content': string too long."}})
    );
    // The strict Anthropic mock refuses what its API refuses; the OpenAI client gets that in
    // OpenAI's shape, with the status kept.
    an.set_behavior(Behavior::Status {
        status: 403,
        body: r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#.into(),
        retry_after: None,
    });
    let r = t
        .chat(&json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}), &[("x-twinroute-provider", "anthropic")])
        .await;
    // A 403 not about a model is the injected key's problem: failed over (pinned: one attempt).
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("auth_failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untranslatable_requests_skip_the_other_format_or_are_refused_naming_the_feature() {
    let models = "  - name: gpt-4o\n    offerings:\n      - {provider: anthropic, model: claude-sonnet-4-5-20250929}\n      - {provider: oa, model: gpt-4o}\n  - name: claude-only\n    offerings: [{provider: anthropic, model: claude-haiku-4-5}]\n";
    let (an, oa, t) = setup(models).await;
    // logprobs cannot be carried to Messages: the Anthropic offering is skipped.
    let r = t
        .chat(&json!({"model": "gpt-4o", "logprobs": true, "messages": [{"role": "user", "content": "Hi"}]}), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("oa"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    assert_eq!(an.request_count(), 0);
    // Without it, file order puts the Anthropic offering first, translated.
    let r = t
        .chat(
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.header("x-twinroute-provider"), Some("anthropic"));
    // Only the other format left: a 400 in the client's own shape naming what cannot go.
    let r = t
        .chat(&json!({"model": "claude-only", "n": 3, "logprobs": true, "messages": [{"role": "user", "content": "Hi"}]}), &[])
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("logprobs") && msg.contains("n"), "{msg}");
    assert_eq!(an.request_count(), 1);
    // An Anthropic document block toward an OpenAI-only model: refused in Anthropic's shape.
    let models2 = "  - name: gpt-only\n    offerings: [{provider: oa, model: gpt-4o}]\n";
    let (_an2, oa2, t2) = setup(models2).await;
    let body = json!({"model": "gpt-only", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}]});
    let r = client::post_json(&t2.url("/v1/messages"), &[ANTHROPIC_VERSION], &body)
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("document content block"));
    assert_eq!(oa2.request_count(), 0);
    let _ = oa;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_models_lists_the_catalog_in_both_shapes() {
    let (_an, _oa, t) = setup(&format!(
        "{CLAUDE_ON_OPENAI}  - name: gpt-4o\n    aliases: [gpt-4o-latest]\n    offerings: [{{provider: oa, model: gpt-4o-2024-08-06}}]\n"
    ))
    .await;
    let r = client::get(&t.url("/v1/models")).await.unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude-sonnet-4-5", "gpt-4o", "gpt-4o-latest"]);
    assert_eq!(v["data"][0]["object"], "model");
    let r = client::send("GET", &t.url("/v1/models"), &[ANTHROPIC_VERSION], "")
        .await
        .unwrap();
    let v = r.json();
    assert_eq!(v["has_more"], false);
    assert_eq!(v["data"][1]["type"], "model");
    assert_eq!(v["first_id"], "claude-sonnet-4-5");
    assert_eq!(v["last_id"], "gpt-4o-latest");
    let r = client::get(&t.url("/v1/models/gpt-4o")).await.unwrap();
    assert_eq!(r.json()["id"], "gpt-4o");
    let r = client::get(&t.url("/v1/models/nope")).await.unwrap();
    assert_eq!(r.status, 404);
}

/// An offering declares what it lacks (`lacks: [images]`, a host without vision): requests
/// using it skip that offering, or get a 400 naming it when nothing else is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offerings_that_lack_a_feature_are_skipped_for_requests_using_it() {
    let models = "  - name: gpt-4o\n    offerings:\n      - {provider: oa, model: text-only, lacks: [images]}\n      - {provider: anthropic, model: claude-sonnet-4-5-20250929}\n  - name: no-tools\n    offerings: [{provider: oa, model: plain, lacks: [tools]}]\n";
    let (an, oa, t) = setup(models).await;
    let image = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]});
    let r = t.chat(&image, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("anthropic"));
    assert_eq!(oa.request_count(), 0);
    assert_eq!(
        an.requests()[0].json()["messages"][0]["content"][1]["type"],
        "image"
    );
    let r = t.chat(&chat_body("gpt-4o"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("oa"));
    let tools = json!({"model": "no-tools", "messages": [{"role": "user", "content": "Hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]});
    let r = t.chat(&tools, &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tools"));
    assert_eq!(oa.request_count(), 1);
}
