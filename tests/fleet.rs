//! Black-box tests of the fleet (`shared_state`): several real twinroute processes and a real
//! `redis-server` (a single node, and a Cluster of three masters), mock providers on loopback.
//! What one replica learns about an upstream (a breaker's count and opening, a Retry-After, a
//! drain) every replica acts on; a half-open breaker is probed once for the fleet; Redis killed
//! or frozen fails no request.

mod common;

use common::redis::{Redis, RedisCluster};
use common::*;
use std::time::{Duration, Instant};
use twinroute::testkit::client;

/// p and q both serve model M (p first); `p_extra` goes into p's YAML map, `tail` after the
/// models (shared_state, admin settings).
fn yaml(p: &MockProvider, q: &MockProvider, p_extra: &str, tail: &str) -> String {
    format!(
        "providers:\n{}{}models:\n  - name: M\n    offerings:\n      - {{provider: p, model: p-m}}\n      - {{provider: q, model: q-m}}\npolicy: {{max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n{tail}",
        provider("p", &p.base_url(), p_extra),
        provider("q", &q.base_url(), ""),
    )
}

fn shared(url: &str, namespace: &str, cluster: bool) -> String {
    format!(
        "shared_state: {{redis_url: \"{url}\", namespace: {namespace}, cluster: {cluster}, timeout_ms: 50}}\nadmin_mutations: true\n"
    )
}

async fn mocks() -> (MockProvider, MockProvider) {
    (
        MockProvider::start("p").await.unwrap(),
        MockProvider::start("q").await.unwrap(),
    )
}

/// `n` replicas of one config (and `env`), each following the fleet's stream before it is
/// returned.
async fn replicas_with(n: usize, config: &str, env: &[(&str, &str)]) -> Vec<Twinroute> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Twinroute::start(config, env).await);
    }
    if config.contains("shared_state") {
        for t in &out {
            following(t, Duration::from_secs(5)).await;
        }
    }
    out
}

async fn replicas(n: usize, config: &str) -> Vec<Twinroute> {
    replicas_with(n, config, &[]).await
}

/// `POST /admin/providers/p/drain?scope=fleet` on `t`.
async fn fleet_drain(t: &Twinroute) -> client::Reply {
    let url = format!("{}/admin/providers/p/drain?scope=fleet", t.admin);
    client::post_json(&url, &[], &serde_json::json!({}))
        .await
        .unwrap()
}

/// Wait until `t` follows the fleet's stream (joined, or rejoined after an outage).
async fn following(t: &Twinroute, limit: Duration) {
    wait_until(limit, || async {
        t.status().await["shared_state"]["following"] == true
    })
    .await
    .unwrap_or_else(|| panic!("a replica did not (re)join the fleet: {}", t.logs()));
}

/// Poll `check` every 20 ms until it holds; `Some(elapsed)`, or `None` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, check: F) -> Option<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// One request for M; it must succeed. The provider that answered.
async fn send(t: &Twinroute) -> String {
    let r = t.chat(&chat_body("M"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-twinroute-provider").unwrap_or("-").to_string()
}

/// p answers 503 to M; `rounds` requests spread round-robin over three replicas (`shared`
/// configured or not). How many of them reached p.
async fn failures_reaching_p(shared_tail: &str, rounds: usize) -> usize {
    let (p, q) = mocks().await;
    p.set_model_behavior("p-m", Some(Behavior::status(503)));
    let config = yaml(
        &p,
        &q,
        ", breaker: {failures: 3, cooldown_ms: 60000}",
        shared_tail,
    );
    let fleet = replicas(3, &config).await;
    for i in 0..rounds {
        assert_eq!(send(&fleet[i % 3]).await, "q");
    }
    count_model(&p, "p-m")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_opens_a_breaker_after_its_failures_in_all_not_per_replica() {
    let redis = Redis::start();
    let shared_p = failures_reaching_p(&shared(&redis.url(), "breakers", false), 15).await;
    assert!(
        (3..=4).contains(&shared_p),
        "p got {shared_p} requests with a fleet breaker of 3 failures (at most failures + 1)"
    );
    // The same traffic without shared_state: every replica learns alone, three times over.
    let alone_p = failures_reaching_p("", 15).await;
    assert_eq!(alone_p, 9, "three replicas alone each send p 3 failures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_shares_breakers_as_one_node_does() {
    let cluster = RedisCluster::start();
    let p_got = failures_reaching_p(&shared(&cluster.url(), "cluster", true), 15).await;
    assert!(
        (3..=4).contains(&p_got),
        "p got {p_got} requests on a Cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_breaker_is_probed_once_per_cooldown_for_the_fleet_and_recovery_reaches_all() {
    let redis = Redis::start();
    let (p, q) = mocks().await;
    p.set_model_behavior("p-m", Some(Behavior::status(503)));
    let breaker = ", breaker: {failures: 2, cooldown_ms: 500, max_cooldown_ms: 500}";
    let config = yaml(&p, &q, breaker, &shared(&redis.url(), "probation", false));
    let fleet = replicas(3, &config).await;
    for i in 0..6 {
        send(&fleet[i % 3]).await;
    }
    let opened_at = count_model(&p, "p-m");
    assert!(
        opened_at <= 3,
        "p got {opened_at} before the fleet's breaker opened"
    );

    // Still failing: 1.6 s of traffic to all three replicas at once is about three cooldowns,
    // so about three probations (each open period is jittered to 3/4..1 of the cooldown), not
    // three per replica: the replicas' breakers turn half-open together, and the fleet lets one
    // of them probe.
    let start = Instant::now();
    let mut ticks = 0;
    while start.elapsed() < Duration::from_millis(1600) {
        tokio::join!(send(&fleet[0]), send(&fleet[1]), send(&fleet[2]));
        ticks += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let probes = count_model(&p, "p-m") - opened_at;
    assert!(
        (1..=5).contains(&probes),
        "{probes} probation requests in 1.6 s of 500 ms cooldowns over three replicas ({ticks} ticks)"
    );

    // p recovers: within one cooldown (and a little) every replica is back on it.
    p.set_model_behavior("p-m", None);
    let recovered = Instant::now();
    let mut back = [false; 3];
    let mut i = 0;
    while !back.iter().all(|b| *b) && recovered.elapsed() < Duration::from_secs(3) {
        if send(&fleet[i % 3]).await == "p" {
            back[i % 3] = true;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = recovered.elapsed();
    assert!(back.iter().all(|b| *b), "not every replica came back on p");
    assert!(
        took < Duration::from_millis(900),
        "every replica back on p {took:?} after it recovered (cooldown 500 ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_seen_by_one_replica_keeps_the_others_off_that_model() {
    let redis = Redis::start();
    let (p, q) = mocks().await;
    p.set_model_behavior(
        "p-m",
        Some(Behavior::Status {
            status: 429,
            body: r#"{"error":{"message":"Rate limit reached for p-m","type":"requests","code":"rate_limit_exceeded"}}"#.into(),
            retry_after: Some(30),
        }),
    );
    let config = yaml(&p, &q, "", &shared(&redis.url(), "cooldowns", false));
    let fleet = replicas(2, &config).await;
    assert_eq!(send(&fleet[0]).await, "q");
    assert_eq!(count_model(&p, "p-m"), 1);
    let learned = wait_until(Duration::from_secs(1), || async {
        fleet[1].status().await["offerings_out"]
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o["model"] == "p-m"))
    })
    .await;
    assert!(
        learned.is_some(),
        "replica B did not learn A's Retry-After within 1 s"
    );
    let r = fleet[1].chat(&chat_body("M"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-twinroute-provider"), Some("q"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("1"), "B tried p");
    assert_eq!(count_model(&p, "p-m"), 1, "B sent a request to p");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_drain_reaches_every_replica_within_a_second_and_namespaces_stay_apart() {
    let redis = Redis::start();
    let (p, q) = mocks().await;
    let config = yaml(&p, &q, "", &shared(&redis.url(), "blue", false));
    let fleet = replicas(2, &config).await;
    let other = replicas(1, &yaml(&p, &q, "", &shared(&redis.url(), "green", false))).await;
    let a_name = fleet[0].status().await["shared_state"]["replica"].clone();

    let r = fleet_drain(&fleet[0]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let took = wait_until(Duration::from_secs(1), || async {
        fleet[1].status().await["providers"][0]["drained"] == true
    })
    .await;
    assert!(took.is_some(), "replica B was not drained within 1 s");
    let s = fleet[1].status().await;
    assert_eq!(s["providers"][0]["drained_by"]["replica"], a_name, "{s}");
    p.clear();
    assert_eq!(send(&fleet[1]).await, "q");
    assert_eq!(p.request_count(), 0, "B still sent to the drained provider");
    // Another namespace on the same Redis heard nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(other[0].status().await["providers"][0]["drained"], false);
    assert_eq!(send(&other[0]).await, "p");

    // A drain without scope stays on its replica; without shared_state, scope=fleet is refused.
    let lone = replicas(1, &yaml(&p, &q, "", "admin_mutations: true\n")).await;
    let r = fleet_drain(&lone[0]).await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_or_frozen_fails_no_request_and_sharing_resumes_when_it_is_back() {
    let mut redis = Redis::start();
    let (p, q) = mocks().await;
    // p fails now and then, so health talks to the fleet (counts, verdicts, probations) while
    // Redis goes away.
    let breaker = ", breaker: {failures: 2, cooldown_ms: 100, max_cooldown_ms: 100}";
    let config = yaml(&p, &q, breaker, &shared(&redis.url(), "outage", false));
    let fleet = replicas(2, &config).await;
    p.set_model_behavior("p-m", Some(Behavior::status(503)));

    for i in 0..40 {
        if i == 10 {
            redis.kill();
        }
        send(&fleet[i % 2]).await;
    }
    for t in &fleet {
        let down = wait_until(Duration::from_secs(3), || async {
            t.status().await["shared_state"]["up"] == false
        })
        .await;
        assert!(down.is_some(), "a replica still says Redis is up");
        assert!(t.metrics().await.contains("twinroute_shared_state_up 0"));
        // One warning for the outage, however many calls failed in it.
        t.wait_for_log("shared state: Redis is unreachable").await;
        assert_eq!(
            t.logs()
                .matches("shared state: Redis is unreachable")
                .count(),
            1
        );
    }

    // Frozen (SIGSTOP): the kernel still accepts, nothing answers. No request waits on it for
    // more than timeout_ms (50) on top of its own work.
    redis.restart();
    for t in &fleet {
        let up = wait_until(Duration::from_secs(5), || async {
            t.status().await["shared_state"]["following"] == true
        })
        .await;
        assert!(
            up.is_some(),
            "a replica did not rejoin within 5 s of Redis' restart"
        );
    }
    redis.freeze();
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let start = Instant::now();
        send(&fleet[i % 2]).await;
        slowest = slowest.max(start.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        slowest < Duration::from_millis(300),
        "a request took {slowest:?} with Redis frozen (timeout_ms 50)"
    );
    redis.thaw();

    // Sharing works again: a fleet drain from A reaches B.
    p.set_model_behavior("p-m", None);
    for t in &fleet {
        following(t, Duration::from_secs(5)).await;
    }
    let r = fleet_drain(&fleet[0]).await;
    assert_eq!(r.status, 200);
    let drained = wait_until(Duration::from_secs(1), || async {
        fleet[1].status().await["providers"][0]["drained"] == true
    })
    .await;
    assert!(
        drained.is_some(),
        "sharing did not resume after Redis came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_and_the_prompt_cache_hold_across_replicas() {
    let redis = Redis::start();
    let p = MockProvider::start("p").await.unwrap();
    // Slow enough that two replicas' requests overlap.
    p.set_model_behavior("p-m", Some(Behavior::Delay(Duration::from_millis(300))));
    let config = format!(
        "client_tokens_env: FT_TOKENS\nidempotency: {{ttl_s: 60}}\nproviders:\n{}models:\n  - name: M\n    offerings: [{{provider: p, model: p-m}}]\n  - name: C\n    offerings: [{{provider: p, model: p-c}}]\n    policy: {{cache: {{ttl_s: 60}}}}\npolicy: {{max_attempts: 1}}\n{}",
        provider("p", &p.base_url(), ""),
        shared(&redis.url(), "kept", false)
    );
    let tokens = [("FT_TOKENS", "fleet-token-one,fleet-token-two")];
    let fleet = replicas_with(2, &config, &tokens).await;
    let one = ("authorization", "Bearer fleet-token-one");
    let two = ("authorization", "Bearer fleet-token-two");
    let post =
        |t: &Twinroute, body: serde_json::Value, headers: Vec<(&'static str, &'static str)>| {
            let url = t.url("/v1/chat/completions");
            async move { client::post_json(&url, &headers, &body).await.unwrap() }
        };

    // One key on A and B at the same moment: one upstream call, the same answer twice.
    let keyed = vec![one, ("idempotency-key", "order-1")];
    let (a, b) = tokio::join!(
        post(&fleet[0], chat_body("M"), keyed.clone()),
        post(&fleet[1], chat_body("M"), keyed.clone())
    );
    assert_eq!(
        (a.status, b.status),
        (200, 200),
        "{} / {}",
        a.text(),
        b.text()
    );
    assert_eq!(a.text(), b.text());
    let replays = [&a, &b]
        .iter()
        .filter(|r| r.header("x-twinroute-idempotent-replay") == Some("true"))
        .count();
    assert_eq!(replays, 1);
    assert_eq!(
        count_model(&p, "p-m"),
        1,
        "the key ran twice across replicas"
    );
    // Again, in sequence, on either replica: replayed.
    for t in &fleet {
        let r = post(t, chat_body("M"), keyed.clone()).await;
        assert_eq!(r.header("x-twinroute-idempotent-replay"), Some("true"));
        assert_eq!(r.text(), a.text());
    }
    assert_eq!(count_model(&p, "p-m"), 1);
    // The same key from another client is another request.
    let r = post(
        &fleet[1],
        chat_body("M"),
        vec![two, ("idempotency-key", "order-1")],
    )
    .await;
    assert_eq!(r.header("x-twinroute-idempotent-replay"), None);
    assert_eq!(count_model(&p, "p-m"), 2);

    // A stream under one key: the duplicate on the other replica gets the whole stream.
    p.set_model_behavior("p-m", None);
    p.set_stream(6, Duration::from_millis(50));
    let mut streamed = chat_body("M");
    streamed["stream"] = serde_json::json!(true);
    let keyed = vec![one, ("idempotency-key", "order-2")];
    let (a, b) = tokio::join!(
        post(&fleet[0], streamed.clone(), keyed.clone()),
        post(&fleet[1], streamed.clone(), keyed.clone())
    );
    assert_eq!((a.status, b.status), (200, 200));
    assert!(a.text().ends_with("data: [DONE]\n\n"), "{}", a.text());
    assert_eq!(a.text(), b.text());
    assert_eq!(count_model(&p, "p-m"), 3);

    // The prompt cache: a miss on A is a hit on B, for the same client only.
    let r = post(&fleet[0], chat_body("C"), vec![one]).await;
    assert_eq!(r.header("x-twinroute-cache"), Some("miss"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hit = post(&fleet[1], chat_body("C"), vec![one]).await;
    assert_eq!(
        hit.header("x-twinroute-cache"),
        Some("hit"),
        "{}",
        hit.text()
    );
    assert_eq!(hit.json()["choices"], r.json()["choices"]);
    let other = post(&fleet[1], chat_body("C"), vec![two]).await;
    assert_eq!(other.header("x-twinroute-cache"), Some("miss"));
    assert_eq!(count_model(&p, "p-c"), 2);

    // What Redis holds: no client token anywhere, in a key or a value.
    let held = redis_contents(redis.port);
    assert!(held.contains("idem:") && held.contains("cache:"), "{held}");
    for token in ["fleet-token-one", "fleet-token-two"] {
        assert!(!held.contains(token), "a client token in Redis");
    }
}

/// Every key in the Redis on `port` and what it holds (strings, hashes, streams), as text.
fn redis_contents(port: u16) -> String {
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut all = String::new();
    for key in cli(&["--scan"]).lines() {
        let kind = cli(&["TYPE", key]);
        let value = match kind.trim() {
            "string" => cli(&["GET", key]),
            "hash" => cli(&["HGETALL", key]),
            "stream" => cli(&["XRANGE", key, "-", "+"]),
            other => format!("({other})"),
        };
        all.push_str(&format!("{key} = {value}\n"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_redis_is_down_at_start_serves_says_so_once_and_joins_when_it_is_up() {
    let mut redis = Redis::start();
    redis.kill();
    let (p, q) = mocks().await;
    let config = yaml(&p, &q, "", &shared(&redis.url(), "late", false));
    let t = Twinroute::start(&config, &[]).await;
    for _ in 0..5 {
        assert_eq!(send(&t).await, "p");
    }
    assert_eq!(t.status().await["shared_state"]["up"], false);
    t.wait_for_log("shared state: Redis is unreachable").await;
    redis.restart();
    following(&t, Duration::from_secs(5)).await;
    t.wait_for_log("is reachable; sharing with the fleet").await;
    assert_eq!(
        t.logs()
            .matches("shared state: Redis is unreachable")
            .count(),
        1
    );
}
