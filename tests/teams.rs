//! Black-box tests of teams: a client token names its team; the team's allow-list and budget
//! hold, concurrency cannot overrun the budget, and with `shared_state` two replicas enforce one
//! budget through a real `redis-server` (each serving its share while Redis is down).

mod common;

use common::redis::Redis;
use common::*;
use std::time::{Duration, SystemTime};
use twinroute::testkit::client;

/// Each answer of the mock costs exactly $0.004 (5 output tokens at $800 per million), and a
/// request asking for 5 tokens reserves exactly that.
fn config(p: &MockProvider, search_budget: f64, tail: &str) -> String {
    format!(
        "teams:\n  - name: search\n    tokens_env: SEARCH_TOKENS\n    models: [m]\n    budget: {{usd: {search_budget}, per: day}}\n  - name: ads\n    tokens_env: ADS_TOKENS\n    budget: {{usd: 1, per: day}}\n    limits: {{requests_per_minute: 10}}\nproviders:\n{}models:\n  - name: m\n    offerings: [{{provider: p, model: p-m, price: {{input_per_mtok: 0, output_per_mtok: 800}}}}]\n  - name: other\n    offerings: [{{provider: p, model: p-o, price: {{input_per_mtok: 0, output_per_mtok: 800}}}}]\npolicy: {{max_attempts: 1}}\n{tail}",
        provider("p", &p.base_url(), "")
    )
}

const ENV: [(&str, &str); 2] = [
    ("SEARCH_TOKENS", "search-token-1,search-token-2"),
    ("ADS_TOKENS", "ads-token-1"),
];
const SEARCH: (&str, &str) = ("authorization", "Bearer search-token-1");
const ADS: (&str, &str) = ("authorization", "Bearer ads-token-1");

fn ask(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
}

async fn chat(t: &Twinroute, body: &serde_json::Value, who: (&str, &str)) -> client::Reply {
    client::post_json(&t.url("/v1/chat/completions"), &[who], body)
        .await
        .unwrap()
}

fn seconds_to_utc_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_refuses_the_request_that_would_overrun_it_in_both_error_shapes() {
    let p = MockProvider::start("p").await.unwrap();
    let t = Twinroute::start(&config(&p, 0.010, ""), &ENV).await;
    for _ in 0..2 {
        let r = chat(&t, &ask("m"), SEARCH).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // $0.008 spent; the third may cost $0.004 and the budget is $0.010.
    let r = chat(&t, &ask("m"), SEARCH).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("team search") && msg.contains("$0.008000") && msg.contains("per day"),
        "{msg}"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        retry.abs_diff(seconds_to_utc_midnight()) <= 5,
        "Retry-After {retry}"
    );
    assert_eq!(p.request_count(), 2);
    // The same refusal in Anthropic's shape on its route.
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[("x-api-key", "search-token-2"), ("anthropic-version", "2023-06-01")],
        &serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("budget"));
    // Another team is unaffected; a model outside the allow-list is a 403; no team is a 401.
    assert_eq!(chat(&t, &ask("m"), ADS).await.status, 200);
    let r = chat(&t, &ask("other"), SEARCH).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_allowed");
    assert_eq!(chat(&t, &ask("other"), ADS).await.status, 200);
    let r = chat(&t, &ask("m"), ("authorization", "Bearer nobody")).await;
    assert_eq!(r.status, 401);
    assert_eq!(p.request_count(), 4);
    t.wait_for_log("team=\"search\"").await;
    let m = t.metrics().await;
    assert!(
        m.contains("twinroute_team_spend_usd{team=\"search\"} 0.008"),
        "{m}"
    );
    assert!(
        m.contains("twinroute_team_rejections_total{reason=\"budget\",team=\"search\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("twinroute_team_rejections_total{reason=\"model\",team=\"search\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("twinroute_team_requests_total{model=\"m\",status=\"429\",team=\"search\"} 2"),
        "{m}"
    );
    // No token reached the log.
    assert!(!t.logs().contains("search-token"));

    // Each team sees its own quota: exactly what the test spent.
    let usage = |who: (&'static str, &'static str)| {
        let url = t.url("/v1/twinroute/usage");
        async move {
            client::send("GET", &url, &[who], bytes::Bytes::new())
                .await
                .unwrap()
        }
    };
    let u = usage(SEARCH).await;
    assert_eq!(u.status, 200, "{}", u.text());
    let u = u.json();
    assert_eq!(u["team"], "search");
    assert_eq!(u["budget"]["spent_usd"], 0.008);
    assert_eq!(u["budget"]["reserved_usd"], 0.0);
    assert_eq!(u["budget"]["remaining_usd"], 0.002);
    assert_eq!(u["budget"]["per"], "day");
    assert!(
        u["budget"]["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z"),
        "{u}"
    );
    let u = usage(ADS).await.json();
    assert_eq!(u["team"], "ads");
    assert_eq!(u["budget"]["spent_usd"], 0.008);
    assert_eq!(u["limits"]["requests_per_minute"]["limit"], 10);
    assert_eq!(u["limits"]["requests_per_minute"]["remaining"], 8, "{u}");
    // The admin's /status lists every team.
    let s = t.status().await;
    assert_eq!(s["teams"].as_array().unwrap().len(), 2, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_cannot_overrun_a_budget_that_fits_five() {
    let p = MockProvider::start("p").await.unwrap();
    p.set_behavior(Behavior::Delay(Duration::from_millis(200)));
    let t = Twinroute::start(&config(&p, 0.020, ""), &ENV).await;
    let url = t.url("/v1/chat/completions");
    let body = ask("m");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { client::post_json(&url, &[SEARCH], &body).await.unwrap() })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!(ok + refused, 20, "an answer other than 200 or 429");
    assert!(
        p.request_count() <= 5,
        "{} reached the provider",
        p.request_count()
    );
    assert_eq!(ok, p.request_count());
    assert!(ok >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_enforce_one_budget_and_their_shares_while_it_is_down() {
    let mut redis = Redis::start();
    let p = MockProvider::start("p").await.unwrap();
    let shared = format!(
        "shared_state: {{redis_url: \"{}\", namespace: teams, replicas: 2, timeout_ms: 50}}\n",
        redis.url()
    );
    let cfg = config(&p, 0.020, &shared);
    let a = Twinroute::start(&cfg, &ENV).await;
    let b = Twinroute::start(&cfg, &ENV).await;
    for t in [&a, &b] {
        for _ in 0..250 {
            if t.status().await["shared_state"]["following"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // $0.020 fits five requests of $0.004, across both replicas together.
    let mut ok = 0;
    for i in 0..10 {
        let t = if i % 2 == 0 { &a } else { &b };
        let r = chat(t, &ask("m"), SEARCH).await;
        assert!(r.status == 200 || r.status == 429, "{}", r.text());
        ok += usize::from(r.status == 200);
    }
    assert_eq!(
        ok, 5,
        "the fleet served {ok} requests of a budget that fits 5"
    );
    assert_eq!(p.request_count(), 5);
    // One rate limit for the fleet too: 10 requests per minute across both replicas.
    let mut ok = 0;
    for i in 0..30 {
        let r = chat(if i % 2 == 0 { &a } else { &b }, &ask("m"), ADS).await;
        ok += usize::from(r.status == 200);
    }
    assert!(
        (10..=11).contains(&ok),
        "the fleet let {ok} of 30 through at 10 per minute"
    );

    // Redis gone: each replica serves its share ($0.010: two requests) on its own count, and
    // refuses the rest as over budget, never with another error.
    redis.kill();
    p.clear();
    let mut per_replica = [0usize; 2];
    for i in 0..12 {
        let r = chat(if i % 2 == 0 { &a } else { &b }, &ask("m"), SEARCH).await;
        match r.status {
            200 => per_replica[i % 2] += 1,
            429 => assert_eq!(r.json()["error"]["code"], "budget_exceeded"),
            s => panic!("status {s} with Redis down: {}", r.text()),
        }
    }
    assert_eq!(
        per_replica,
        [2, 2],
        "each replica serves its share of the budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_charged_the_usage_it_reports() {
    let p = MockProvider::start("p").await.unwrap();
    // A long answer: 60 chunks, then usage {completion_tokens: 60}.
    p.set_stream(60, Duration::from_millis(1));
    let t = Twinroute::start(&config(&p, 0.010, ""), &ENV).await;
    let mut body = ask("m");
    body["stream"] = serde_json::json!(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let r = chat(&t, &body, ADS).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("\"completion_tokens\":60"),
        "{}",
        r.text()
    );
    // 60 tokens at $800 per million: $0.048, not the $0.004 reserved for max_tokens 5.
    let m = t.metrics().await;
    assert!(
        m.contains("twinroute_team_spend_usd{team=\"ads\"} 0.048"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_gets_a_minutes_worth_of_requests_and_tokens_are_limited_too() {
    let p = MockProvider::start("p").await.unwrap();
    let yaml = format!(
        "teams:\n  - name: burst\n    tokens_env: SEARCH_TOKENS\n    limits: {{requests_per_minute: 60}}\n  - name: wordy\n    tokens_env: ADS_TOKENS\n    limits: {{tokens_per_minute: 1000}}\nproviders:\n{}models:\n  - name: m\n    offerings: [{{provider: p, model: p-m}}]\npolicy: {{max_attempts: 1}}\n",
        provider("p", &p.base_url(), "")
    );
    let t = Twinroute::start(&yaml, &ENV).await;
    let (mut ok, mut refused) = (0, 0);
    let mut last_remaining = 60;
    for _ in 0..100 {
        let r = chat(&t, &ask("m"), SEARCH).await;
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("60"));
        let remaining: u64 = r
            .header("x-ratelimit-remaining-requests")
            .unwrap()
            .parse()
            .unwrap();
        // Counting down one a request (a refill of one a second may hold it level once).
        assert!(
            remaining <= last_remaining,
            "{remaining} after {last_remaining}"
        );
        last_remaining = remaining;
        assert!(r.header("x-ratelimit-reset-requests").is_some());
        match r.status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
                assert_eq!(r.header("retry-after"), Some("1"), "{}", r.text());
                assert!(r.json()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("60 requests per minute"));
            }
            s => panic!("status {s}"),
        }
    }
    assert_eq!(last_remaining, 0);
    // Anthropic's names on its route.
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[("x-api-key", "search-token-1"), ("anthropic-version", "2023-06-01")],
        &serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.header("anthropic-ratelimit-requests-limit"), Some("60"));
    assert_eq!(
        r.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    assert!(r
        .header("anthropic-ratelimit-requests-reset")
        .unwrap()
        .ends_with('Z'));
    assert!(r.header("x-ratelimit-limit-requests").is_none());
    // A minute's worth at once, plus the refill (one a second) while the burst ran.
    assert!(
        (60..=63).contains(&ok),
        "{ok} of a burst of 100 at 60 per minute"
    );
    assert_eq!(ok + refused, 100);
    assert_eq!(p.request_count(), ok);

    // Tokens: each request is estimated at its size / 4 plus max_tokens (5), then counted at
    // its usage (17 tokens); a 1,000-token minute holds about 58 of them.
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..100 {
        match chat(&t, &ask("m"), ADS).await.status {
            200 => ok += 1,
            429 => refused += 1,
            s => panic!("status {s}"),
        }
    }
    assert!(
        (50..=64).contains(&ok),
        "{ok} requests of 17 tokens in a 1,000-token minute"
    );
    assert_eq!(ok + refused, 100);
    let m = t.metrics().await;
    assert!(
        m.contains("twinroute_team_rejections_total{reason=\"rate\",team=\"burst\"}"),
        "{m}"
    );
}
