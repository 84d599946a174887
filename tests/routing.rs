//! Black-box tests of routing policy: fail closed vs degrade to a graded equivalent, context
//! fit and context-length failover, weighted traffic split, per-feature routes, `check`.

mod common;

use common::*;

/// Twins a and b serve `m` (8k window); c serves the equivalent `big` (128k, grade 0.9).
async fn setup(policy: &str, tail: &str) -> (MockProvider, MockProvider, MockProvider, Twinroute) {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let c = MockProvider::start("c").await.unwrap();
    let yaml = format!(
        "providers:\n{}{}{}models:\n  - name: m\n    context_tokens: 8000\n    equivalents: [{{model: big, grade: 0.9}}]\n    offerings:\n      - {{provider: a, model: a-m}}\n      - {{provider: b, model: b-m}}\n  - name: big\n    context_tokens: 128000\n    offerings:\n      - {{provider: c, model: c-big}}\npolicy: {{max_attempts: 3, backoff: {{base_ms: 1, max_ms: 2}}{policy}}}\n{tail}",
        provider("a", &a.base_url(), ""),
        provider("b", &b.base_url(), ""),
        provider("c", &c.base_url(), ""),
    );
    (a, b, c, Twinroute::start(&yaml, &[]).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_down_fail_closed_by_default() {
    let (a, b, c, t) = setup("", "").await;
    a.set_behavior(Behavior::status(503));
    b.set_behavior(Behavior::status(503));
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        c.request_count(),
        0,
        "a different model answered without permission"
    );
    assert_eq!(r.header("x-twinroute-equivalent"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_down_degrade_to_the_equivalent_and_say_so() {
    let (a, b, c, t) = setup(", allow_equivalents: true", "").await;
    a.set_behavior(Behavior::status(503));
    b.set_behavior(Behavior::status(500));
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("c"));
    assert_eq!(r.header("x-twinroute-model"), Some("c-big"));
    assert_eq!(r.header("x-twinroute-equivalent"), Some("big;grade=0.9"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("3"));
    assert_eq!(c.requests()[0].json()["model"], "c-big");
    t.wait_for_log("degraded=\"big;grade=0.9\"").await;
    assert!(t
        .metrics()
        .await
        .contains("twinroute_degraded_total{equivalent=\"big\",model=\"m\"} 1"));
    // Twins are always tried first: each twin got the request before c did.
    assert_eq!((a.request_count(), b.request_count()), (1, 1));

    // The request header turns equivalents off for one request: fail closed again.
    let r = t
        .chat(
            &chat_body("m"),
            &[("x-twinroute-allow-equivalents", "false")],
        )
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(c.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_turns_equivalents_on() {
    let (a, b, c, t) = setup("", "").await;
    a.set_behavior(Behavior::status(503));
    b.set_behavior(Behavior::status(503));
    let r = t
        .chat(
            &chat_body("m"),
            &[("x-twinroute-allow-equivalents", "true")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-equivalent"), Some("big;grade=0.9"));
    assert_eq!(c.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_error_moves_to_a_larger_model() {
    let (a, b, c, t) = setup(", allow_equivalents: true", "").await;
    let too_long = r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9100 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    let overflow = Behavior::Status {
        status: 400,
        body: too_long.into(),
        retry_after: None,
    };
    a.set_behavior(overflow.clone());
    b.set_behavior(overflow.clone());
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("c"));
    assert_eq!(r.header("x-twinroute-equivalent"), Some("big;grade=0.9"));
    // b has the same window as a: the context error skips it, straight to the larger model.
    assert_eq!(b.request_count(), 0);
    let logs = t
        .wait_for_log("failovers=\"a:context_length_exceeded\"")
        .await;
    assert!(logs.contains("degraded="));

    // Without a larger model allowed, the provider's own 400 reaches the client untouched.
    let r = t
        .chat(
            &chat_body("m"),
            &[("x-twinroute-allow-equivalents", "false")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), too_long);
    assert_eq!(c.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_fit_skips_models_that_cannot_hold_the_request() {
    let (a, _b, c, t) = setup(", allow_equivalents: true", "").await;
    // ~12k tokens of prompt (bytes / 4) does not fit m's 8k window.
    let mut body = chat_body("m");
    body["messages"][0]["content"] = "x".repeat(48_000).into();
    let r = t.chat(&body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("c"));
    assert_eq!(a.request_count(), 0);
    // max_tokens counts too.
    let mut body = chat_body("m");
    body["max_tokens"] = 9000.into();
    let r = t.chat(&body, &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("c"));
    assert_eq!(c.request_count(), 2);
    // Nothing holds it: a 400 that says how big it is and what the largest window is.
    body["max_tokens"] = 500_000.into();
    let r = t.chat(&body, &[]).await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("128000"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_90_10_within_3_percent_over_2000_requests() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_record(false);
    b.set_record(false);
    let yaml = format!(
        "providers:\n{}{}models:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m, weight: 90}}\n      - {{provider: b, model: b-m, weight: 10}}\npolicy: {{strategy: weighted}}\n",
        provider("a", &a.base_url(), ""),
        provider("b", &b.base_url(), ""),
    );
    let t = std::sync::Arc::new(Twinroute::start(&yaml, &[]).await);
    let n = 2000;
    let workers = 16;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut to_a = 0;
            for _ in 0..n / workers {
                let r = t.chat(&chat_body("m"), &[]).await;
                assert_eq!(r.status, 200);
                if r.header("x-twinroute-provider") == Some("a") {
                    to_a += 1;
                }
            }
            to_a
        }));
    }
    let mut to_a = 0;
    for task in tasks {
        to_a += task.await.unwrap();
    }
    let share = to_a as f64 / n as f64;
    println!("weighted split: {to_a}/{n} to a ({:.1}%)", share * 100.0);
    assert!((0.87..=0.93).contains(&share), "a got {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routes_with_different_policies_on_the_same_model() {
    let routes = "routes:\n  - name: support-bot\n    match: {headers: {x-twinroute-route: support-bot}}\n    policy: {max_attempts: 1}\n  - name: batch\n    match: {headers: {x-twinroute-route: batch}}\n    policy: {allow_equivalents: true}\n";
    let (a, b, c, t) = setup("", routes).await;
    a.set_behavior(Behavior::status(503));
    // Default policy: fails over to b.
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    // support-bot: one attempt, the client hears about it at once.
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-route", "support-bot")])
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    t.wait_for_log("route=\"support-bot\"").await;
    // batch: may degrade when the twins are out.
    b.set_behavior(Behavior::status(503));
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-route", "batch")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("c"));
    assert_eq!(c.request_count(), 1);
    // A route name nobody configured is a clear 400, not a silent default.
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-route", "suport-bot")])
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("support-bot, batch"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_routes_equivalents_and_warnings() {
    let dir = std::env::temp_dir().join(format!("twinroute-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("routes.yaml");
    std::fs::write(
        &path,
        r#"
providers:
  - {name: a, api: openai, base_url: "http://127.0.0.1:1"}
  - {name: claude, api: anthropic, base_url: "http://127.0.0.1:2", api_key_env: CHECK_KEY}
models:
  - name: m
    equivalents: [{model: big, grade: 0.9}, {model: small, grade: 0.5}]
    offerings:
      - {provider: a, model: a-m}
      - {provider: claude, model: claude-m}
  - name: big
    offerings: [{provider: a, model: a-big}]
  - name: small
    offerings: [{provider: a, model: a-small}]
routes:
  - name: embed
    match: {paths: [/v1/embeddings]}
    policy: {allow_equivalents: true}
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twinroute"))
        .args(["check", "--config"])
        .arg(&path)
        .env("CHECK_KEY", "sk-x")
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("route embed (paths: /v1/embeddings"), "{s}");
    assert!(s.contains("a-big") && s.contains("≈ big grade 0.9"), "{s}");
    assert!(s.contains("provider a: no api_key_env"), "{s}");
    assert!(
        s.contains("equivalent small has grade 0.5 below min_grade 0.8"),
        "{s}"
    );
    assert!(
        s.contains("route embed: /v1/embeddings cannot be served by claude for model m"),
        "{s}"
    );
    // A grade outside (0, 1] is a config error naming its key path.
    std::fs::write(
        &path,
        "providers:\n  - {name: a, api: openai, base_url: \"http://127.0.0.1:1\"}\nmodels:\n  - name: m\n    equivalents: [{model: n, grade: 1.5}]\n    offerings: [{provider: a, model: x}]\n  - name: n\n    offerings: [{provider: a, model: y}]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twinroute"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("models[0].equivalents[0].grade"), "{err}");
}
