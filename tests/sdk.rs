//! The real OpenAI and Anthropic Python SDKs against the real binary, through translation: each
//! SDK's own parser (typed objects, stream accumulators, typed exceptions) must accept what the
//! other format's provider answered. `tests/sdk/translate_sdk.py` holds the client side;
//! `scripts/setup.sh` installs the pinned SDKs (`tests/sdk/requirements.txt`).

mod common;

use common::*;
use std::process::Command;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/translate/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn run(base: &str) {
    run_script("translate_sdk.py", base);
}

fn run_script(name: &str, base: &str) {
    let script = format!("{}/tests/sdk/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args([script.as_str(), base])
        .output()
        .expect("python3 runs (scripts/setup.sh installs the SDKs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{stdout}\n{stderr}\n(needs: pip install -r tests/sdk/requirements.txt)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_sdks_accept_translated_answers() {
    let an = MockProvider::start("an").await.unwrap();
    let oa = MockProvider::start("oa").await.unwrap();
    an.set_strict(true);
    oa.set_strict(true);
    // One model per scenario, each answered by its script.
    oa.set_model_behavior(
        "oa-tools",
        Some(Behavior::Json(fixture("openai_response_tools.json"))),
    );
    oa.set_model_behavior(
        "oa-broken",
        Some(Behavior::Status {
            status: 400,
            body: r#"{"error":{"message":"Invalid 'messages[1].content': string too long.","type":"invalid_request_error","param":null,"code":"string_above_max_length"}}"#.into(),
            retry_after: None,
        }),
    );
    let events: Vec<String> = fixture("anthropic_stream_tools.txt")
        .split_inclusive("\n\n")
        .map(str::to_string)
        .collect();
    an.set_model_behavior("an-stream", Some(Behavior::Sse(events)));
    an.set_model_behavior(
        "an-tools",
        Some(Behavior::Json(fixture("anthropic_response_tools.json"))),
    );
    let yaml = format!(
        "providers:\n  - {{name: anthropic, api: anthropic, base_url: \"{}\", probe: {{enabled: false}}}}\n  - {{name: oa, api: openai, base_url: \"{}\", probe: {{enabled: false}}}}\nmodels:\n  - name: claude-sonnet-4-5\n    offerings: [{{provider: oa, model: anthropic/claude-sonnet-4.5}}]\n  - name: claude-tools\n    offerings: [{{provider: oa, model: oa-tools}}]\n  - name: claude-broken\n    offerings: [{{provider: oa, model: oa-broken}}]\n  - name: gpt-4o\n    offerings: [{{provider: anthropic, model: claude-sonnet-4-5-20250929}}]\n  - name: gpt-stream-tools\n    offerings: [{{provider: anthropic, model: an-stream}}]\n  - name: gpt-tools\n    offerings: [{{provider: anthropic, model: an-tools}}]\npolicy: {{max_attempts: 1}}\n",
        an.base_url(),
        oa.base_url()
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let base = t.url("");
    tokio::task::spawn_blocking(move || run(&base))
        .await
        .unwrap();
    t.wait_for_log("translated=openai->anthropic").await;
    t.wait_for_log("translated=anthropic->openai").await;
    assert!(oa.request_count() >= 4 && an.request_count() >= 3);
}

/// The Responses API streamed as OpenAI streams it (typed events ending with
/// `response.completed`, no `data: [DONE]`) reaches the real SDK whole, not as a 502 for a
/// "truncated" stream; a Responses stream cut mid-answer ends with the Responses API's own
/// `error` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responses_api_streams_through_to_the_real_sdk() {
    let oa = MockProvider::start("oa").await.unwrap();
    oa.set_strict(true);
    let yaml = format!(
        "providers:\n  - {{name: oa, api: openai, base_url: \"{}\", probe: {{enabled: false}}}}\nmodels:\n  - name: gpt-resp\n    offerings: [{{provider: oa, model: oa-resp}}]\n  - name: gpt-cut\n    offerings: [{{provider: oa, model: oa-cut}}]\npolicy: {{max_attempts: 1}}\n",
        oa.base_url()
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let base = t.url("");
    tokio::task::spawn_blocking(move || run_script("responses_sdk.py", &base))
        .await
        .unwrap();
    assert!(!t.logs().contains("truncated"), "{}", t.logs());
    assert_eq!(oa.request_count(), 3);
    assert!(oa.requests().iter().all(|r| r.path == "/v1/responses"));

    // Cut after three of its events: the client's stream ends with the Responses error event.
    oa.set_model_behavior("oa-cut", Some(Behavior::StreamThenDie { chunks: 6 }));
    let r = twinroute::testkit::client::post_json(
        &t.url("/v1/responses"),
        &[],
        &serde_json::json!({"model": "gpt-cut", "input": "Hello", "stream": true}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("event: response.output_text.delta"), "{text}");
    assert!(
        text.ends_with("\n\n")
            && text.contains("event: error\ndata: {")
            && text.contains("\"type\":\"error\""),
        "{text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
}
