//! Black-box tests of health at the right grain: one model's trouble on a provider costs that
//! offering (the model there), not the provider; a sick host costs the provider for every model;
//! and a recovered offering is back within one capped breaker cooldown.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Provider p serves models A and B (as p-a, p-b); twin q serves both (q-a, q-b), second in
/// order. `p_extra` is appended to p's YAML map.
async fn two_models(p_extra: &str) -> (MockProvider, MockProvider, Twinroute) {
    let p = MockProvider::start("p").await.unwrap();
    let q = MockProvider::start("q").await.unwrap();
    let yaml = format!(
        "providers:\n{}{}models:\n  - name: A\n    offerings:\n      - {{provider: p, model: p-a}}\n      - {{provider: q, model: q-a}}\n  - name: B\n    offerings:\n      - {{provider: p, model: p-b}}\n      - {{provider: q, model: q-b}}\npolicy: {{max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n",
        provider("p", &p.base_url(), p_extra),
        provider("q", &q.base_url(), ""),
    );
    (p, q, Twinroute::start(&yaml, &[]).await)
}

/// Send one chat request for `model`; assert it succeeded and return (provider, attempts).
async fn send(t: &Twinroute, model: &str) -> (String, String) {
    let r = t.chat(&chat_body(model), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    (
        r.header("x-twinroute-provider").unwrap_or("-").to_string(),
        r.header("x-twinroute-attempts").unwrap_or("-").to_string(),
    )
}

fn pair(provider: &str, attempts: u32) -> (String, String) {
    (provider.to_string(), attempts.to_string())
}

fn find(list: &serde_json::Value, f: impl Fn(&serde_json::Value) -> bool) -> &serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| f(v))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_trouble_costs_its_offering_and_a_sick_host_costs_the_provider() {
    let (p, q, t) = two_models(", breaker: {failures: 3, cooldown_ms: 60000}").await;

    // A is rate limited on p with a Retry-After: A fails over, B on p is untouched.
    p.set_model_behavior(
        "p-a",
        Some(Behavior::Status {
            status: 429,
            body: r#"{"error":{"message":"Rate limit reached for p-a on requests per min","type":"requests","code":"rate_limit_exceeded"}}"#.into(),
            retry_after: Some(1),
        }),
    );
    assert_eq!(send(&t, "A").await, pair("q", 2));
    for _ in 0..3 {
        assert_eq!(send(&t, "B").await, pair("p", 1), "B skipped p for A's 429");
    }
    // A's next request skips p without trying it: the offering is cooling, not the provider.
    assert_eq!(send(&t, "A").await, pair("q", 1));
    t.wait_for_log("skipped=\"p/p-a:cooldown\"").await;
    assert_eq!(count_model(&p, "p-a"), 1);

    // Once the Retry-After passed, A on p answers 503s: three requests open A's breaker there.
    p.set_model_behavior("p-a", Some(Behavior::status(503)));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert_eq!(send(&t, "A").await, pair("q", 2));
    }
    assert_eq!(count_model(&p, "p-a"), 4);
    let s = t.status().await;
    let a_on_p = find(&s["offerings_out"], |o| o["model"] == "p-a");
    assert_eq!(a_on_p["breaker"], "open", "{s}");
    assert_eq!(a_on_p["reason"], "breaker_open");
    let p_status = find(&s["providers"], |v| v["name"] == "p");
    assert_eq!(p_status["breaker"], "closed", "{s}");
    assert_eq!(p_status["healthy"], true);
    for _ in 0..3 {
        assert_eq!(send(&t, "A").await, pair("q", 1));
        assert_eq!(
            send(&t, "B").await,
            pair("p", 1),
            "A's breaker kept B off p"
        );
    }
    assert_eq!(
        count_model(&p, "p-a"),
        4,
        "p got A with its offering breaker open"
    );
    t.wait_for_log("skipped=\"p/p-a:breaker_open\"").await;
    assert_eq!(count_model(&q, "q-b"), 0, "B never needed its twin");

    // A sick host (connections refused) costs the provider: both models move to q, and after
    // three failures the endpoint's breaker keeps p out for B without trying it.
    p.stop();
    for _ in 0..3 {
        assert_eq!(send(&t, "B").await, pair("q", 2));
    }
    let s = t.status().await;
    let p_status = find(&s["providers"], |v| v["name"] == "p");
    assert_eq!(p_status["breaker"], "open", "{s}");
    assert_eq!(p_status["healthy"], false);
    assert_eq!(send(&t, "B").await, pair("q", 1));
    t.wait_for_log("skipped=\"p:breaker_open\"").await;
    assert_eq!(send(&t, "A").await, pair("q", 1));
    assert!(t
        .metrics()
        .await
        .contains("twinroute_offering_healthy{model=\"p-b\",provider=\"p\"} 1"));
}

/// A's offering on p is down for 3.5 s, then healthy; a request every 200 ms. The breaker's
/// default cooldowns (5 s growing to a 30 s cap) are scaled down 25-fold here (200 ms growing to
/// 1.2 s): A is served by q throughout the outage, by p again within one capped cooldown of its
/// recovery, and p sees only a bounded number of probation requests meanwhile. (3.5 s puts a
/// failed probation shortly before the recovery: uncapped doubling would then wait 2.4-3.2 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_offering_is_back_within_one_capped_cooldown() {
    let cap = Duration::from_millis(1200);
    let (p, _q, t) =
        two_models(", breaker: {failures: 2, cooldown_ms: 200, max_cooldown_ms: 1200}").await;
    p.set_model_behavior("p-a", Some(Behavior::status(503)));
    let outage = Duration::from_millis(3500);
    let interval = Duration::from_millis(200);
    let start = Instant::now();
    let mut recovered_at: Option<Instant> = None;
    let mut during_outage = 0;
    let back_at = loop {
        let tick = Instant::now();
        if recovered_at.is_none() && start.elapsed() >= outage {
            during_outage = count_model(&p, "p-a");
            p.set_model_behavior("p-a", None);
            recovered_at = Some(Instant::now());
        }
        let (provider, _) = send(&t, "A").await;
        match recovered_at {
            None => assert_eq!(provider, "q", "p answered A during its outage"),
            Some(_) if provider == "p" => break Instant::now(),
            Some(at) => assert!(
                at.elapsed() < cap * 3,
                "A never came back to p after its recovery"
            ),
        }
        tokio::time::sleep(interval.saturating_sub(tick.elapsed())).await;
    };
    let lag = back_at - recovered_at.unwrap();
    assert!(
        lag <= cap + interval + Duration::from_millis(50),
        "back {lag:?} after recovery; the cap is {cap:?}"
    );
    // Two failures open the breaker; then one probation per open period (200, 400, 800, then
    // 1200 ms, each jittered to no less than 3/4): 2 + 5 of the outage's 18 requests at most,
    // one more for drift in the request grid.
    assert!(
        (3..=8).contains(&during_outage),
        "{during_outage} requests reached p's A during the outage"
    );
    // B was never touched by A's breaker.
    assert_eq!(send(&t, "B").await, pair("p", 1));
}
