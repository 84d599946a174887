//! Black-box tests of health-checked endpoint pools: one provider with several endpoints
//! (regions, keys) on pingora-load-balancing, per-endpoint probes and breakers.

mod common;

use common::*;
use std::time::Duration;

/// Provider `a` with endpoints a1 (us, key K1) and a2 (eu, key K2); provider `b` as a twin.
async fn setup(extra: &str) -> (MockProvider, MockProvider, MockProvider, Twinroute) {
    let a1 = MockProvider::start("a1").await.unwrap();
    let a2 = MockProvider::start("a2").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let yaml = format!(
        "providers:\n  - name: a\n    api: openai\n    api_key_env: K1\n    endpoints:\n      - {{url: \"{}\", region: us}}\n      - {{url: \"{}\", region: eu, api_key_env: K2}}\n    timeouts: {{connect_ms: 300, first_byte_ms: 400}}\n{extra}{}models:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m}}\n      - {{provider: b, model: b-m}}\npolicy: {{max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n",
        a1.base_url(),
        a2.base_url(),
        provider("b", &b.base_url(), ""),
    );
    let t = Twinroute::start(&yaml, &[("K1", "sk-one"), ("K2", "sk-two")]).await;
    (a1, a2, b, t)
}

fn endpoint(s: &serde_json::Value, i: usize) -> serde_json::Value {
    s["providers"][0]["endpoints"][i].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_share_traffic_each_with_its_own_key() {
    let (a1, a2, b, t) = setup("    probe: {enabled: false}\n").await;
    for _ in 0..10 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    }
    // Weighted round robin over two equal endpoints: an even split.
    assert_eq!((a1.request_count(), a2.request_count()), (5, 5));
    assert_eq!(b.request_count(), 0);
    assert_eq!(
        a1.requests()[0].header("authorization"),
        Some("Bearer sk-one")
    );
    assert_eq!(
        a2.requests()[0].header("authorization"),
        Some("Bearer sk-two")
    );
    // Region pinning picks the endpoint too.
    a1.clear();
    a2.clear();
    for _ in 0..4 {
        let r = t
            .chat(&chat_body("m"), &[("x-twinroute-region", "eu")])
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!((a1.request_count(), a2.request_count()), (0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_probe_moves_traffic_to_the_other_endpoint() {
    let (a1, a2, b, t) = setup("    probe: {interval_ms: 100, timeout_ms: 80}\n").await;
    a1.set_probe_status(503);
    tokio::time::sleep(Duration::from_millis(250)).await;
    a1.clear();
    a2.clear();
    for _ in 0..6 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    }
    assert_eq!((a1.request_count(), a2.request_count()), (0, 6));
    assert_eq!(b.request_count(), 0);
    let s = t.status().await;
    assert_eq!(endpoint(&s, 0)["probe_up"], false, "{s}");
    assert_eq!(endpoint(&s, 1)["probe_up"], true);
    assert_eq!(s["providers"][0]["healthy"], true);
    t.wait_for_log("endpoint").await;

    // Both endpoints down: the provider is out, the twin serves.
    a2.set_probe_status(503);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    assert_eq!(t.status().await["providers"][0]["healthy"], false);

    // Back: traffic returns without anyone touching anything.
    a1.set_probe_status(200);
    a2.set_probe_status(200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_has_its_own_breaker() {
    let (a1, a2, _b, t) =
        setup("    probe: {enabled: false}\n    breaker: {failures: 1, cooldown_ms: 60000}\n")
            .await;
    a2.set_behavior(Behavior::Reset);
    // Round robin reaches a2 within two requests; its failure opens only its breaker.
    for _ in 0..2 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(a2.request_count(), 1);
    let s = t.status().await;
    assert_eq!(endpoint(&s, 1)["breaker"], "open", "{s}");
    assert_eq!(endpoint(&s, 0)["breaker"], "closed");
    assert_eq!(s["providers"][0]["breaker"], "closed");
    assert_eq!(s["providers"][0]["healthy"], true);
    a1.clear();
    for _ in 0..6 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.header("x-twinroute-provider"), Some("a"));
        assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    }
    assert_eq!(a1.request_count(), 6);
    assert_eq!(a2.request_count(), 1);
}

/// A model failing at one endpoint of a pool (a deployment down in one region) is held out
/// there only: the other endpoint keeps serving it, and both hosts stay in for other models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_breaker_at_one_endpoint_leaves_the_others_serving_it() {
    let (a1, a2, _b, t) =
        setup("    probe: {enabled: false}\n    breaker: {failures: 1, cooldown_ms: 60000}\n")
            .await;
    a2.set_behavior(Behavior::status(500));
    for _ in 0..2 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(a2.request_count(), 1);
    let s = t.status().await;
    // The host answered: its breaker stays closed; the model is held out at a2 alone.
    assert_eq!(endpoint(&s, 1)["breaker"], "closed", "{s}");
    let out = &s["offerings_out"][0];
    assert_eq!(out["model"], "a-m", "{s}");
    assert_eq!(out["reason"], serde_json::Value::Null, "not out everywhere");
    assert_eq!(out["held_out_at"].as_array().unwrap().len(), 1);
    assert_eq!(out["held_out_at"][0], endpoint(&s, 1)["url"]);
    a1.clear();
    for _ in 0..6 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.header("x-twinroute-provider"), Some("a"));
        assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    }
    assert_eq!((a1.request_count(), a2.request_count()), (6, 1));
}
