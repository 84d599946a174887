//! Black-box tests of the durable background queue: background requests that find no capacity
//! become jobs (202 and a location at once under `Prefer: respond-async`, else after the held
//! wait), survive SIGKILL, drain oldest first at no more than `queue.drain_per_s` once the
//! providers are back, each reaching a provider exactly once; a job past `max_age_s` fails with
//! its reason; the queue's size limit, zero retention, client scoping and cancellation.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use twinroute::testkit::client;

fn state_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "twinroute-queue-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two providers answering 503, and a fresh state_dir.
async fn both_down() -> (MockProvider, MockProvider, PathBuf) {
    let a = MockProvider::start("a").await.unwrap();
    a.set_behavior(Behavior::status(503));
    let b = MockProvider::start("b").await.unwrap();
    b.set_behavior(Behavior::status(503));
    (a, b, state_dir())
}

/// Providers a and b serve `m`; `queue` and `policy` are YAML maps.
fn config(a: &str, b: &str, dir: &std::path::Path, queue: &str, policy: &str) -> String {
    format!(
        "state_dir: \"{}\"\nqueue: {queue}\nproviders:\n{}{}models:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}, {{provider: b, model: b-m}}]\npolicy: {policy}\n",
        dir.display(),
        provider("a", a, ""),
        provider("b", b, ""),
    )
}

fn ask(tag: &str) -> serde_json::Value {
    json!({"model": "m", "messages": [{"role": "user", "content": tag}]})
}

async fn post(t: &Twinroute, body: &serde_json::Value, headers: &[(&str, &str)]) -> client::Reply {
    client::post_json(&t.url("/v1/chat/completions"), headers, body)
        .await
        .unwrap()
}

async fn get(t: &Twinroute, location: &str, headers: &[(&str, &str)]) -> client::Reply {
    client::send("GET", &t.url(location), headers, "")
        .await
        .unwrap()
}

const BG: (&str, &str) = ("x-twinroute-priority", "background");
const ASYNC: (&str, &str) = ("prefer", "respond-async");

/// The prompt each request to a mock carried (its job's tag).
fn tags(m: &MockProvider) -> Vec<(String, Instant)> {
    m.requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| {
            (
                r.json()["messages"][0]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                r.at,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_jobs_survive_sigkill_and_drain_exactly_once_at_the_configured_rate() {
    // Every provider down: a refuses connections, b answers 503.
    let a = MockProvider::start("a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.stop();
    let b = MockProvider::start("b").await.unwrap();
    b.set_behavior(Behavior::status(503));
    let dir = state_dir();
    let rate = 20.0;
    let yaml = config(
        &a.base_url(),
        &b.base_url(),
        &dir,
        &format!("{{drain_per_s: {rate}, retry_max_ms: 300}}"),
        // A held request waits 1 s; an async one answers well within it even when 50 jobs are
        // fsynced one after another on a busy machine (300 ms was within reach of that).
        "{max_attempts: 2, backoff: {base_ms: 1, max_ms: 2}, queue: {max_wait_ms: 1000}}",
    );
    let t = Twinroute::start(&yaml, &[]).await;

    // 50 background requests, half with respond-async: all accepted.
    let mut sent = Vec::new();
    let url = t.url("/v1/chat/completions");
    for i in 0..50 {
        let url = url.clone();
        sent.push(async move {
            let tag = format!("job-{i}");
            let headers: &[(&str, &str)] = if i % 2 == 0 { &[BG, ASYNC] } else { &[BG] };
            let r = client::post_json(&url, headers, &ask(&tag)).await.unwrap();
            (i, tag, r)
        });
    }
    let replies = futures_join(sent).await;
    let mut locations = HashMap::new();
    for (i, tag, r) in &replies {
        assert_eq!(r.status, 202, "request {i}: {}", r.text());
        let loc = r.header("location").expect("a location").to_string();
        assert!(loc.starts_with("/v1/twinroute/jobs/job_"), "{loc}");
        // Queued, or already being tried again by the drain.
        let st = r.json()["status"].as_str().unwrap_or("").to_string();
        assert!(st == "queued" || st == "running", "{st}");
        assert_eq!(r.json()["location"], loc.as_str());
        if i % 2 == 0 {
            assert_eq!(r.header("preference-applied"), Some("respond-async"));
            assert!(
                r.elapsed < Duration::from_millis(1000),
                "respond-async waited"
            );
        } else {
            // Held for queue.max_wait_ms before the location.
            assert!(r.elapsed >= Duration::from_millis(1000), "{:?}", r.elapsed);
            assert_eq!(r.header("preference-applied"), None);
        }
        locations.insert(tag.clone(), loc);
    }
    assert_eq!(locations.len(), 50);
    let status = t.status().await;
    assert_eq!(status["queue"]["depth"], 50, "{status}");
    let metrics = t.metrics().await;
    assert!(metrics.contains("twinroute_queue_depth 50"), "{metrics}");
    assert!(
        metrics.contains("twinroute_queue_jobs_total{event=\"queued\"} 50"),
        "{metrics}"
    );
    let logs = t.logs();
    assert!(
        logs.contains("queued=\"job_"),
        "no queued= on the access line"
    );
    let first = locations.values().next().unwrap().clone();
    assert_eq!(get(&t, &first, &[]).await.status, 202);

    // kill -9: nothing is flushed or shut down.
    let mut t = t;
    t.signal("KILL");
    t.wait_exit(Duration::from_secs(5)).await.expect("killed");
    drop(t);
    b.stop();
    a.stop();

    // Restarted on the same state_dir while providers are still down, then they recover.
    let t = Twinroute::start(&yaml, &[]).await;
    assert_eq!(t.status().await["queue"]["depth"], 50);
    assert_eq!(get(&t, &first, &[]).await.status, 202, "the job survived");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a2 = MockProvider::start_on(a.addr, "a").await.unwrap();
    let b2 = MockProvider::start_on(b.addr, "b").await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut done = HashMap::new();
    while done.len() < 50 && Instant::now() < deadline {
        for (tag, loc) in &locations {
            if done.contains_key(tag) {
                continue;
            }
            let r = get(&t, loc, &[]).await;
            if r.status != 202 {
                done.insert(tag.clone(), r);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done.len(), 50, "jobs left: {}", 50 - done.len());
    for (tag, r) in &done {
        assert_eq!(r.status, 200, "{tag}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let text = r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(text.starts_with("hello from "), "{tag}: {}", r.text());
        assert!(r.header("x-twinroute-job").is_some());
    }
    // Each job reached a provider exactly once after the recovery.
    let mut seen = tags(&a2);
    seen.extend(tags(&b2));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (tag, _) in &seen {
        *counts.entry(tag.as_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), 50, "{counts:?}");
    assert!(
        counts.values().all(|&n| n == 1),
        "a job ran twice: {counts:?}"
    );
    // No more than the drain rate in any 1 s window.
    let mut times: Vec<Instant> = seen.iter().map(|(_, at)| *at).collect();
    times.sort();
    for (i, start) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        // (A little slack for scheduling on a loaded CI machine; no limit at all would put
        // the 50 jobs in well under a second.)
        assert!(
            within <= (rate * 1.2) as usize + 2,
            "{within} jobs within 1 s"
        );
    }
    let span = times.last().unwrap().duration_since(times[0]);
    assert!(
        span >= Duration::from_secs_f64(45.0 / rate),
        "50 jobs in {span:?}"
    );
    // Finished answers stay readable, the same each time; the queue is empty.
    let again = get(&t, &locations["job-7"], &[]).await;
    assert_eq!(again.body, done["job-7"].body);
    let status = t.status().await;
    assert_eq!(status["queue"]["depth"], 0, "{status}");
    assert_eq!(status["queue"]["finished_kept"], 50, "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Join futures concurrently (the test crate has no futures dependency).
async fn futures_join<F: std::future::Future + Send + 'static>(fs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_is_answered_when_capacity_returns_and_a_job_past_max_age_fails() {
    let (a, b, dir) = both_down().await;
    let yaml = format!(
        "{}routes:\n  - name: batch\n    match: {{headers: {{x-twinroute-route: batch}}}}\n    policy: {{queue: {{background: true, max_age_s: 1}}}}\n",
        config(
            &a.base_url(),
            &b.base_url(),
            &dir,
            "{drain_per_s: 50, retry_max_ms: 200}",
            "{max_attempts: 2, backoff: {base_ms: 1, max_ms: 2}, queue: {max_wait_ms: 5000}}",
        )
    );
    let t = Twinroute::start(&yaml, &[]).await;

    // The route marks its requests background; its jobs live one second.
    let r = post(
        &t,
        &ask("too-late"),
        &[("x-twinroute-route", "batch"), ASYNC],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let expired_at = r.header("location").unwrap().to_string();
    // An explicit interactive priority overrides the route: answered (failed) now.
    let r = post(
        &t,
        &ask("now"),
        &[
            ("x-twinroute-route", "batch"),
            ("x-twinroute-priority", "interactive"),
        ],
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());

    // The route's job passes max_age_s (1 s) without capacity: failed with its reason.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = get(&t, &expired_at, &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "job_expired");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("expired") && msg.contains("max_age_s"),
        "{msg}"
    );
    assert!(msg.contains("503"), "the last failure is named: {msg}");
    assert!(t
        .metrics()
        .await
        .contains("twinroute_queue_jobs_total{event=\"expired\"} 1"));

    // Held (no respond-async): answered with the provider's answer once b is back.
    let held = {
        let base = t.url("/v1/chat/completions");
        tokio::spawn(async move { client::post_json(&base, &[BG], &ask("held")).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    b.set_behavior(Behavior::Ok);
    let r = held.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.elapsed < Duration::from_secs(4), "{:?}", r.elapsed);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "hello from b");
    assert!(r.header("x-twinroute-job").unwrap().starts_with("job_"));

    // Shutting down releases a held connection with its location at once (not cut at the end
    // of the grace period), and the job is there after the restart.
    b.set_behavior(Behavior::status(503));
    let held = {
        let base = t.url("/v1/chat/completions");
        tokio::spawn(async move {
            client::post_json(&base, &[BG], &ask("held-at-shutdown"))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut t = t;
    t.signal("TERM");
    let r = held.await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
    let loc = r.header("location").unwrap().to_string();
    t.wait_exit(Duration::from_secs(5)).await.expect("exited");
    drop(t);
    let t = Twinroute::start(&yaml, &[]).await;
    assert_eq!(get(&t, &loc, &[]).await.status, 202);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_scoped_to_its_client_and_never_holds_zero_retention_work() {
    let (a, b, dir) = both_down().await;
    let yaml = format!(
        "client_tokens_env: TQ_TOKENS\n{}routes:\n  - name: private\n    match: {{headers: {{x-twinroute-route: private}}}}\n    zero_retention: true\n",
        config(
            &a.base_url(),
            &b.base_url(),
            &dir,
            "{max_jobs: 2, drain_per_s: 5, retry_max_ms: 5000}",
            "{max_attempts: 2, backoff: {base_ms: 1, max_ms: 2}}",
        )
    );
    let t = Twinroute::start(
        &yaml,
        &[("TQ_TOKENS", "tenant-one-secret,tenant-two-secret")],
    )
    .await;
    let one = ("authorization", "Bearer tenant-one-secret");
    let two = ("authorization", "Bearer tenant-two-secret");

    // A bad priority is the client's error.
    let r = post(&t, &ask("x"), &[one, ("x-twinroute-priority", "soon")]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Zero retention: never written anywhere, failed now.
    let r = post(
        &t,
        &ask("private"),
        &[one, BG, ASYNC, ("x-twinroute-route", "private")],
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(t.status().await["queue"]["depth"], 0);

    let r1 = post(&t, &ask("first"), &[one, BG, ASYNC]).await;
    assert_eq!(r1.status, 202, "{}", r1.text());
    let loc = r1.header("location").unwrap().to_string();
    let r2 = post(&t, &ask("second"), &[two, BG, ASYNC]).await;
    assert_eq!(r2.status, 202);
    // Past queue.max_jobs: 503 queue_full in the API's error shape.
    let r3 = post(&t, &ask("third"), &[one, BG, ASYNC]).await;
    assert_eq!(r3.status, 503, "{}", r3.text());
    assert_eq!(r3.json()["error"]["code"], "queue_full");
    assert!(r3.header("retry-after").is_some());

    // Only its own client sees a job; no token, no answer at all.
    assert_eq!(get(&t, &loc, &[two]).await.status, 404);
    assert_eq!(get(&t, &loc, &[]).await.status, 401);
    assert_eq!(get(&t, &loc, &[one]).await.status, 202);
    assert_eq!(
        get(&t, "/v1/twinroute/jobs/../../etc", &[one]).await.status,
        404
    );
    // The drain's job token is not a way in from outside.
    let forged = get(
        &t,
        &loc,
        &[
            ("x-twinroute-job-token", "00"),
            ("x-twinroute-job", "job_0"),
        ],
    )
    .await;
    assert_eq!(forged.status, 401);

    // DELETE cancels (only by its client); the job is gone and its slot free.
    let del = client::send("DELETE", &t.url(&loc), &[two], "")
        .await
        .unwrap();
    assert_eq!(del.status, 404);
    let del = client::send("DELETE", &t.url(&loc), &[one], "")
        .await
        .unwrap();
    assert_eq!(del.status, 200, "{}", del.text());
    assert_eq!(del.json()["status"], "cancelled");
    assert_eq!(get(&t, &loc, &[one]).await.status, 404);
    let r4 = post(&t, &ask("fourth"), &[one, BG, ASYNC]).await;
    assert_eq!(r4.status, 202, "{}", r4.text());

    // Capacity returns: the drain runs with its job token, not a client token.
    a.set_behavior(Behavior::Ok);
    let loc4 = r4.header("location").unwrap().to_string();
    let mut last = 0;
    for _ in 0..100 {
        last = get(&t, &loc4, &[one]).await.status;
        if last != 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 200);
    // The store never holds a client token (the identity is kept hashed).
    let mut stored = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        stored.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    assert!(!stored.is_empty());
    let hay = String::from_utf8_lossy(&stored);
    assert!(!hay.contains("tenant-one-secret") && !hay.contains("tenant-two-secret"));
    assert!(hay.contains("fourth"), "the job's body is in the store");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_finds_twinroute_itself_at_its_limit_tries_again() {
    let (a, b, dir) = both_down().await;
    // A second model, s, on a: slow but answering, while m (the job's) has no capacity.
    let yaml = format!(
        "max_concurrent_requests: 1\n{}",
        config(
            &a.base_url(),
            &b.base_url(),
            &dir,
            "{drain_per_s: 50, retry_max_ms: 200}",
            "{max_attempts: 2, backoff: {base_ms: 1, max_ms: 2}}",
        )
        .replace(
            "models:\n",
            "models:\n  - name: s\n    offerings: [{provider: a, model: a-s}]\n",
        )
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let r = post(&t, &ask("job"), &[BG, ASYNC]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let loc = r.header("location").unwrap().to_string();
    // Slow interactive requests (model s), back to back, hold twinroute's only slot while the
    // job's runs come in (every run that gets the slot still finds no capacity for m).
    a.set_model_behavior("a-s", Some(Behavior::Delay(Duration::from_millis(300))));
    let url = t.url("/v1/chat/completions");
    let slow = json!({"model": "s", "messages": [{"role": "user", "content": "slow"}]});
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let _ = client::post_json(&url, &[], &slow).await.unwrap();
    }
    assert!(
        t.logs().contains("maximum of 1 concurrent"),
        "no run met the limit"
    );
    a.set_behavior(Behavior::Ok);
    let mut last = (0, String::new());
    for _ in 0..50 {
        let r = get(&t, &loc, &[]).await;
        last = (r.status, r.text());
        // Waiting, or the GET itself over the limit (no job header: a job run holds the slot).
        let own_overload = r.status == 503 && r.header("x-twinroute-job").is_none();
        if r.status != 202 && !own_overload {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last.0, 200,
        "the job kept twinroute's own 503 as its answer: {}",
        last.1
    );
    let _ = std::fs::remove_dir_all(&dir);
}
