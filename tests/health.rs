//! Black-box tests of health steering: probes, circuit breaker, Retry-After cooldown,
//! latency-aware routing, drain, cost ceiling, and their reflection in /status and /metrics.

mod common;

use common::*;
use std::time::Duration;
use twinroute::testkit::client;

/// Providers a (cheaper, first in file order) and b serving model `m`. `a_extra`/`b_extra` are
/// appended to each provider's YAML map; `policy` to the policy map.
async fn setup(
    a_extra: &str,
    b_extra: &str,
    policy: &str,
) -> (MockProvider, MockProvider, Twinroute) {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let prov = |name: &str, url: String, extra: &str| {
        format!("  - {{name: {name}, api: openai, base_url: \"{url}\", timeouts: {{connect_ms: 300, first_byte_ms: 1000}}{extra}}}\n")
    };
    let yaml = format!(
        "admin_mutations: true\nproviders:\n{}{}models:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}\n      - {{provider: b, model: b-m, price: {{input_per_mtok: 1.1, output_per_mtok: 1.1}}}}\npolicy: {{max_attempts: 2, backoff: {{base_ms: 1, max_ms: 5}}{policy}}}\n",
        prov("a", a.base_url(), a_extra),
        prov("b", b.base_url(), b_extra),
    );
    (a, b, Twinroute::start(&yaml, &[]).await)
}

async fn served_by(t: &Twinroute) -> String {
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-twinroute-provider").unwrap_or("-").to_string()
}

fn provider_status(s: &serde_json::Value, name: &str) -> serde_json::Value {
    s["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap()
}

/// The `/status` entry of one offering whose own health holds something against it (`Null` when
/// nothing does).
fn offering_status(s: &serde_json::Value, provider: &str, model: &str) -> serde_json::Value {
    s["offerings_out"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["provider"] == provider && o["model"] == model)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

const NO_PROBE: &str = ", probe: {enabled: false}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_probe_takes_a_provider_out_and_recovery_brings_it_back() {
    let probe = ", probe: {interval_ms: 100, timeout_ms: 80}";
    let (a, b, t) = setup(probe, probe, "").await;
    assert_eq!(served_by(&t).await, "a");
    a.set_probe_status(503);
    // Within two probe intervals a is out of rotation.
    tokio::time::sleep(Duration::from_millis(250)).await;
    a.clear();
    for _ in 0..5 {
        assert_eq!(served_by(&t).await, "b");
    }
    assert_eq!(a.request_count(), 0, "a got traffic while its probe failed");
    t.wait_for_log("skipped=\"a:probe_down\"").await;
    let s = t.status().await;
    assert_eq!(provider_status(&s, "a")["healthy"], false);
    assert_eq!(provider_status(&s, "a")["probe_up"], false);
    assert!(provider_status(&s, "a")["last_error"]
        .as_str()
        .unwrap()
        .contains("503"));
    assert!(t
        .metrics()
        .await
        .contains("twinroute_provider_healthy{provider=\"a\"} 0"));
    // Probes carry the provider's path and never a completion.
    assert!(a
        .probes()
        .iter()
        .all(|p| p.path == "/v1/models" && p.body.is_empty()));

    a.set_probe_status(200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(served_by(&t).await, "a");
    assert!(t
        .metrics()
        .await
        .contains("twinroute_provider_healthy{provider=\"a\"} 1"));
    let _ = b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_failures_then_admits_exactly_one_probation_request() {
    let (a, b, t) = setup(
        &format!("{NO_PROBE}, breaker: {{failures: 3, cooldown_ms: 700}}"),
        NO_PROBE,
        "",
    )
    .await;
    a.set_behavior(Behavior::status(500));
    for _ in 0..3 {
        assert_eq!(served_by(&t).await, "b");
    }
    assert_eq!(a.request_count(), 3);
    // 500s are the model's trouble there: the offering's breaker opens, not the provider's.
    let s = t.status().await;
    assert_eq!(offering_status(&s, "a", "a-m")["breaker"], "open", "{s}");
    assert_eq!(offering_status(&s, "a", "a-m")["reason"], "breaker_open");
    assert_eq!(provider_status(&s, "a")["breaker"], "closed");
    assert_eq!(provider_status(&s, "a")["healthy"], true);
    let _ = t.chat(&chat_body("m"), &[]).await;
    t.wait_for_log("skipped=\"a/a-m:breaker_open\"").await;
    let metrics = t.metrics().await;
    assert!(metrics.contains("twinroute_offering_breaker_state{model=\"a-m\",provider=\"a\"} 2"));
    assert!(metrics.contains("twinroute_offering_healthy{model=\"a-m\",provider=\"a\"} 0"));
    assert!(metrics.contains("twinroute_breaker_state{provider=\"a\"} 0"));
    // Open: a sees nothing, and requests pay no failover cost (one attempt).
    for _ in 0..5 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    }
    assert_eq!(a.request_count(), 3);

    tokio::time::sleep(Duration::from_millis(800)).await;
    a.set_behavior(Behavior::Delay(Duration::from_millis(300)));
    let before = a.request_count();
    let reqs: Vec<_> = (0..4)
        .map(|_| {
            let url = t.url("/v1/chat/completions");
            tokio::spawn(
                async move { client::post_json(&url, &[], &chat_body("m")).await.unwrap() },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        offering_status(&t.status().await, "a", "a-m")["breaker"],
        "half_open"
    );
    for r in reqs {
        assert_eq!(r.await.unwrap().status, 200);
    }
    assert_eq!(
        a.request_count() - before,
        1,
        "exactly one probation request"
    );
    // The probation succeeded: closed, a serves again.
    assert_eq!(
        offering_status(&t.status().await, "a", "a-m"),
        serde_json::Value::Null
    );
    assert_eq!(served_by(&t).await, "a");
    assert!(t
        .metrics()
        .await
        .contains("twinroute_offering_breaker_state{model=\"a-m\",provider=\"a\"} 0"));
    let _ = b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_probation_reopens_the_breaker() {
    let (a, _b, t) = setup(
        &format!("{NO_PROBE}, breaker: {{failures: 1, cooldown_ms: 300}}"),
        NO_PROBE,
        "",
    )
    .await;
    a.set_behavior(Behavior::status(503));
    assert_eq!(served_by(&t).await, "b");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(served_by(&t).await, "b"); // the probation, failed
    assert_eq!(a.request_count(), 2);
    // Reopened with doubled cooldown (600 ms): still closed to traffic after 400 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(served_by(&t).await, "b");
    assert_eq!(a.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_to_the_second_without_tripping_the_breaker() {
    let (a, _b, t) = setup(
        &format!("{NO_PROBE}, breaker: {{failures: 1, cooldown_ms: 60000}}"),
        NO_PROBE,
        "",
    )
    .await;
    a.push_once(Behavior::Status {
        status: 429,
        body: "{}".into(),
        retry_after: Some(1),
    });
    let started = std::time::Instant::now();
    assert_eq!(served_by(&t).await, "b");
    let s = offering_status(&t.status().await, "a", "a-m");
    assert_eq!(
        s["breaker"], "closed",
        "a Retry-After is not a breaker failure"
    );
    assert_eq!(s["reason"], "cooldown");
    assert!(s["remaining_ms"].as_u64().unwrap() > 800, "{s}");
    while started.elapsed() < Duration::from_millis(850) {
        assert_eq!(served_by(&t).await, "b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.request_count(), 1);
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(started.elapsed())).await;
    assert_eq!(served_by(&t).await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_retry_after_never_shortens_a_longer_one() {
    let (a, b, t) = setup(NO_PROBE, NO_PROBE, "").await;
    a.push_once(Behavior::Status {
        status: 503,
        body: "{}".into(),
        retry_after: Some(2),
    });
    assert_eq!(served_by(&t).await, "b");
    // Pinned request: a answers 429 with a shorter Retry-After.
    a.push_once(Behavior::Status {
        status: 429,
        body: "{}".into(),
        retry_after: Some(1),
    });
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-provider", "a")])
        .await;
    assert_eq!(r.status, 429);
    let remaining = offering_status(&t.status().await, "a", "a-m")["remaining_ms"]
        .as_u64()
        .unwrap();
    assert!(remaining > 1500, "shortened to {remaining} ms");
    let _ = b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_latency_moves_traffic_to_the_faster_provider() {
    let probe = ", probe: {interval_ms: 100, timeout_ms: 500}";
    let (a, b, t) = setup(probe, probe, ", strategy: prefer_latency").await;
    b.set_probe_delay(Duration::from_millis(40));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(served_by(&t).await, "a");
    assert_eq!(served_by(&t).await, "a");
    // a slows down: one slow answer raises its score at once (peak EWMA).
    a.set_behavior(Behavior::Delay(Duration::from_millis(250)));
    assert_eq!(served_by(&t).await, "a");
    let before = a.request_count();
    for _ in 0..5 {
        assert_eq!(served_by(&t).await, "b");
    }
    assert_eq!(a.request_count(), before);
    let s = t.status().await;
    assert!(
        provider_status(&s, "a")["latency_ms"].as_f64().unwrap()
            > provider_status(&s, "b")["latency_ms"].as_f64().unwrap()
    );
    assert_eq!(s["models"][0]["candidates"][0]["provider"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_undrain() {
    let (a, b, t) = setup(NO_PROBE, NO_PROBE, "").await;
    let r = client::send(
        "POST",
        &format!("{}/admin/providers/a/drain", t.admin),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..3 {
        assert_eq!(served_by(&t).await, "b");
    }
    assert_eq!(a.request_count(), 0);
    t.wait_for_log("skipped=\"a:drained\"").await;
    let s = provider_status(&t.status().await, "a");
    assert_eq!(
        (s["drained"].as_bool(), s["healthy"].as_bool()),
        (Some(true), Some(false))
    );
    // Fail open: with b down too, the drained provider is still tried rather than refusing.
    b.set_behavior(Behavior::status(503));
    let r = client::send(
        "POST",
        &format!("{}/admin/providers/b/drain", t.admin),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200);
    t.wait_for_log("fail_open=true").await;
    for p in ["a", "b"] {
        let r = client::send(
            "POST",
            &format!("{}/admin/providers/{p}/undrain", t.admin),
            &[],
            "",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }
    b.set_behavior(Behavior::Ok);
    assert_eq!(served_by(&t).await, "a");
    let r = client::send(
        "POST",
        &format!("{}/admin/providers/zz/drain", t.admin),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_ceiling_keeps_dear_providers_out_of_failover() {
    // b costs 1.1× a: inside a 1.2 ceiling, outside a 1.05 one.
    let (a, b, t) = setup(NO_PROBE, NO_PROBE, ", max_cost_multiplier: 1.05").await;
    a.set_behavior(Behavior::status(503));
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(b.request_count(), 0);
    let (a2, b2, t2) = setup(NO_PROBE, NO_PROBE, ", max_cost_multiplier: 1.2").await;
    a2.set_behavior(Behavior::status(503));
    assert_eq!(served_by(&t2).await, "b");
    assert_eq!(b2.request_count(), 1);
    let _ = (a, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_health_of_providers_it_did_not_change() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let yaml = |b_region: &str, a_first_byte: u64| {
        format!(
            "reload_poll_ms: 0\nproviders:\n  - {{name: a, api: openai, base_url: \"{}\", timeouts: {{first_byte_ms: {a_first_byte}}}{NO_PROBE}, breaker: {{failures: 1, cooldown_ms: 60000}}}}\n  - {{name: b, api: openai, base_url: \"{}\", region: {b_region}{NO_PROBE}}}\nmodels:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m}}\n      - {{provider: b, model: b-m}}\n",
            a.base_url(),
            b.base_url()
        )
    };
    let t = Twinroute::start(&yaml("us", 1000), &[]).await;
    // A reset before any answer: the endpoint's breaker opens.
    a.set_behavior(Behavior::Reset);
    assert_eq!(served_by(&t).await, "b");
    assert_eq!(provider_status(&t.status().await, "a")["breaker"], "open");
    a.set_behavior(Behavior::Ok);
    a.clear();

    // A reload that changes b, not a: a's breaker stays open and a gets no traffic.
    t.rewrite_config(&yaml("eu", 1000));
    t.signal("HUP");
    t.wait_for_log("config reloaded (SIGHUP)").await;
    assert_eq!(provider_status(&t.status().await, "a")["breaker"], "open");
    for _ in 0..3 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.header("x-twinroute-provider"), Some("b"));
        assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    }
    assert_eq!(a.request_count(), 0, "a took traffic with its breaker open");

    // A reload that changes a itself starts a's health afresh.
    t.rewrite_config(&yaml("eu", 900));
    t.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while provider_status(&t.status().await, "a")["breaker"] != "closed" {
        assert!(
            std::time::Instant::now() < deadline,
            "a's breaker never reset"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served_by(&t).await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_out_of_credit_fails_over_and_stays_out() {
    let (a, b, t) = setup(NO_PROBE, NO_PROBE, "").await;
    // OpenRouter's answer for exhausted credits.
    a.set_behavior(Behavior::Status {
        status: 402,
        body: r#"{"error":{"message":"Insufficient credits","code":402}}"#.into(),
        retry_after: None,
    });
    assert_eq!(served_by(&t).await, "b");
    t.wait_for_log("a:provider_account").await;
    a.set_behavior(Behavior::Ok);
    for _ in 0..3 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.header("x-twinroute-provider"), Some("b"));
        assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    }
    assert_eq!(
        a.request_count(),
        1,
        "a was tried again while its account is empty"
    );
    let s = provider_status(&t.status().await, "a");
    assert_eq!(s["healthy"], false);
    assert!(s["cooldown_remaining_ms"].as_u64().unwrap() > 60_000, "{s}");
    let _ = b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insufficient_quota_429_is_an_account_problem_not_a_rate_limit() {
    let (a, b, t) = setup(NO_PROBE, NO_PROBE, "").await;
    a.set_behavior(Behavior::Status {
        status: 429,
        body: r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#.into(),
        retry_after: None,
    });
    assert_eq!(served_by(&t).await, "b");
    t.wait_for_log("a:provider_account").await;
    a.set_behavior(Behavior::Ok);
    assert_eq!(served_by(&t).await, "b");
    assert_eq!(a.request_count(), 1);
    // An ordinary rate limit on b (no Retry-After) is a blip: b is tried again next time.
    b.set_behavior(Behavior::Status {
        status: 429,
        body: r#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#.into(),
        retry_after: None,
    });
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    b.set_behavior(Behavior::Ok);
    assert_eq!(served_by(&t).await, "b");
}

/// `same_offering_retries: 1`: a 500-once offering answers on the retry, the twin is never
/// called; `max_retry_after_wait_ms: 3000`: a 429 with Retry-After 1 is waited out on the same
/// offering, one with Retry-After 10 goes to the twin at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_blips_are_retried_on_the_same_offering_when_the_policy_asks() {
    let (a, b, t) = setup(
        NO_PROBE,
        NO_PROBE,
        ", same_offering_retries: 1, max_retry_after_wait_ms: 3000, request_timeout_ms: 5000",
    )
    .await;
    a.push_once(Behavior::status(500));
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("2"));
    assert_eq!((a.request_count(), b.request_count()), (2, 0));

    a.push_once(Behavior::Status {
        status: 429,
        body: r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#.into(),
        retry_after: Some(1),
    });
    let started = std::time::Instant::now();
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("a"), "{}", r.text());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(b.request_count(), 0);

    a.push_once(Behavior::Status {
        status: 429,
        body: r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#.into(),
        retry_after: Some(10),
    });
    let started = std::time::Instant::now();
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    assert!(started.elapsed() < Duration::from_millis(500));
}
