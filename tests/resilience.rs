//! Black-box tests of the bad day: chaos under load, hot reload, graceful shutdown, limits,
//! slow and vanishing clients, client tokens and admin lockdown. Counts are printed so a run's
//! output shows what was exercised.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twinroute::testkit::client;

fn two(a: &MockProvider, b: &MockProvider, extra_a: &str) -> String {
    format!(
        "providers:\n{}{}models:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m}}\n      - {{provider: b, model: b-m}}\n",
        provider("a", &a.base_url(), extra_a),
        provider("b", &b.base_url(), ""),
    )
}

/// Run `workers` clients sending non-streaming requests until `stop`; returns (ok, failed).
fn load(
    t: Arc<Twinroute>,
    workers: usize,
    stop: Arc<AtomicBool>,
    model: &'static str,
) -> tokio::task::JoinHandle<(usize, usize, Vec<String>)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicUsize::new(0));
        let bad = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (t, stop, ok, bad, errors) = (
                t.clone(),
                stop.clone(),
                ok.clone(),
                bad.clone(),
                errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client::post_json(&t.url("/v1/chat/completions"), &[], &chat_body(model))
                        .await
                    {
                        Ok(r) if r.status == 200 && !r.broken => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            bad.fetch_add(1, Ordering::Relaxed);
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.text()));
                        }
                        Err(e) => {
                            bad.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(e);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let errors = errors.lock().unwrap().clone();
        (
            ok.load(Ordering::Relaxed),
            bad.load(Ordering::Relaxed),
            errors,
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_under_load_loses_no_request_while_one_provider_stays_healthy() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_record(false);
    b.set_record(false);
    let body = format!(
        "{}policy: {{max_attempts: 3, backoff: {{base_ms: 1, max_ms: 5}}}}\n",
        two(&a, &b, ", breaker: {failures: 3, cooldown_ms: 200}")
    );
    let t = Arc::new(Twinroute::start(&body, &[]).await);
    let stop = Arc::new(AtomicBool::new(false));
    let run = load(t.clone(), 16, stop.clone(), "m");
    let phase = |d| tokio::time::sleep(Duration::from_millis(d));

    phase(300).await;
    // Killed: every connection dropped, the port refuses.
    a.stop();
    phase(400).await;
    // Restarted on the same port.
    let a2 = MockProvider::start_on(a.addr, "a").await.unwrap();
    a2.set_record(false);
    phase(400).await;
    // Hangs: accepts, never answers (first-byte timeout).
    a2.set_behavior(Behavior::Hang);
    phase(600).await;
    // Resets connections.
    a2.set_behavior(Behavior::Reset);
    phase(300).await;
    // 503 bursts.
    for _ in 0..5 {
        a2.set_behavior(Behavior::status(503));
        phase(60).await;
        a2.set_behavior(Behavior::Ok);
        phase(60).await;
    }
    // Slow answers.
    a2.set_behavior(Behavior::Delay(Duration::from_millis(150)));
    phase(400).await;
    a2.set_behavior(Behavior::Ok);
    phase(200).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, errors) = run.await.unwrap();
    println!(
        "chaos: {ok} requests answered through kill, restart, hang, reset, 503 bursts and slow answers; {failed} failed"
    );
    assert!(ok >= 1000, "only {ok} requests went through");
    assert_eq!(
        failed,
        0,
        "failed requests: {:?}",
        &errors[..errors.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_flowing_when_their_provider_dies_end_with_an_error_event() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_stream(40, Duration::from_millis(25));
    let t = Twinroute::start(&two(&a, &b, ""), &[]).await;
    let url = t.url("/v1/chat/completions");
    let mut body = chat_body("m");
    body["stream"] = true.into();
    let streams: Vec<_> = (0..5)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { client::post_json(&url, &[], &body).await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.stop();
    let mut ended_with_error = 0;
    for s in streams {
        let r = s.await.unwrap();
        let text = r.text();
        assert_eq!(r.status, 200);
        assert!(
            !text.contains("[DONE]"),
            "a cut stream must not look finished"
        );
        let last = text.trim_end().rsplit("\n\n").next().unwrap_or("");
        assert!(last.starts_with("data: {\"error\""), "last event: {last}");
        ended_with_error += 1;
    }
    println!("chaos: {ended_with_error} streams cut mid-way, each ended with an error event");
    assert_eq!(ended_with_error, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_reload_under_load_drops_nothing_and_refuses_a_bad_file() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_record(false);
    let v1 = format!(
        "reload_poll_ms: 100\nproviders:\n{}{}models:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m}}\n",
        provider("a", &a.base_url(), ""),
        provider("b", &b.base_url(), ""),
    );
    let t = Arc::new(Twinroute::start(&v1, &[]).await);
    let stop = Arc::new(AtomicBool::new(false));
    let run = load(t.clone(), 8, stop.clone(), "m");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // v2: m now on b first, and a new model n. Swapped in by the file watcher.
    let v2 = v1.replace(
        "models:\n  - name: m\n    offerings:\n      - {provider: a, model: a-m}\n",
        "models:\n  - name: m\n    offerings:\n      - {provider: b, model: b-m}\n      - {provider: a, model: a-m}\n  - name: n\n    offerings:\n      - {provider: a, model: a-n}\n",
    );
    t.rewrite_config(&v2);
    t.wait_for_log("config reloaded (file changed)").await;
    let r = t.chat(&chat_body("n"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));

    // A broken file is refused with the reason; the running config stays.
    t.rewrite_config(&v2.replace("reload_poll_ms: 100", "reload_poll_ms: 100\nbogus_key: 1"));
    let logs = t
        .wait_for_log("config reload (file changed) rejected")
        .await;
    // The poll can catch the file half-written (rejected for that, then read again whole):
    // wait for the rejection that names the problem.
    let logs = if logs.contains("bogus_key") {
        logs
    } else {
        t.wait_for_log("bogus_key").await
    };
    assert!(logs.contains("bogus_key"), "the log names the problem");
    let r = t.chat(&chat_body("n"), &[]).await;
    assert_eq!(r.status, 200);

    // SIGHUP reloads too (back to v1: n is gone again).
    t.rewrite_config(&v1.replace("reload_poll_ms: 100", "reload_poll_ms: 0"));
    t.signal("HUP");
    t.wait_for_log("config reloaded (SIGHUP)").await;
    let r = t.chat(&chat_body("n"), &[]).await;
    assert_eq!(r.status, 404);
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::Relaxed);
    let (ok, failed, errors) = run.await.unwrap();
    println!("reload: {ok} requests during three reloads, {failed} failed");
    assert!(ok > 100);
    assert_eq!(failed, 0, "{:?}", &errors[..errors.len().min(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_finishes_the_stream_and_exits_zero() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_stream(20, Duration::from_millis(50));
    let body = format!("grace_period_s: 5\n{}", two(&a, &b, ""));
    let mut t = Twinroute::start(&body, &[]).await;
    // 200 quick requests first: each has its access line, written by the log writer thread.
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let url = t.url("/v1/chat/completions");
            tokio::spawn(async move {
                for _ in 0..25 {
                    let r = client::post_json(&url, &[], &chat_body("m")).await.unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for b in burst {
        b.await.unwrap();
    }
    let mut req = chat_body("m");
    req["stream"] = true.into();
    let url = t.url("/v1/chat/completions");
    let stream = tokio::spawn(async move { client::post_json(&url, &[], &req).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    t.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once shutdown began.
    let port = t.base.rsplit(':').next().unwrap().to_string();
    assert!(
        TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .is_err(),
        "still accepting after SIGTERM"
    );
    let r = stream.await.unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.broken);
    assert!(r.text().contains("[DONE]"), "the in-flight stream finished");
    let status = t.wait_exit(Duration::from_secs(4)).await.expect("exited");
    assert_eq!(status.code(), Some(0));
    // Exits once idle, well inside the 5 s grace period.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // No access line lost, the stream's (finished during shutdown) included: the log writer's
    // queue is drained before the process exits.
    let lines = t.logs().matches("twinroute::access] request id=").count();
    assert_eq!(lines, 201, "access lines written: {lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_requests_under_log_pressure_loses_no_access_line() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_record(false);
    // A 2 KiB buffer (a few debug-level requests' lines): requests wait for the writer thread.
    let t = Twinroute::start(&two(&a, &b, ""), &[("TWINROUTE_LOG_BUFFER_BYTES", "2048")]).await;
    let burst: Vec<_> = (0..32)
        .map(|_| {
            let url = t.url("/v1/chat/completions");
            tokio::spawn(async move {
                for _ in 0..63 {
                    let r = client::post_json(&url, &[], &chat_body("m")).await.unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for b in burst {
        b.await.unwrap();
    }
    let metrics = t.metrics().await;
    let waits: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("twinroute_log_waits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        waits > 0.0,
        "the writer was never under pressure:\n{metrics}"
    );
    let mut lines = 0;
    for _ in 0..100 {
        lines = t.logs().matches("twinroute::access] request id=").count();
        if lines >= 2016 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines, 32 * 63, "access lines written for 2,016 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_requests_answers_a_fast_503_not_a_queue() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_behavior(Behavior::Delay(Duration::from_millis(400)));
    let body = format!("max_concurrent_requests: 2\n{}", two(&a, &b, ""));
    let t = Arc::new(Twinroute::start(&body, &[]).await);
    let reqs: Vec<_> = (0..6)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(if i < 2 { 0 } else { 100 })).await;
                t.chat(&chat_body("m"), &[]).await
            })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for r in reqs {
        let r = r.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                shed += 1;
                assert_eq!(r.header("retry-after"), Some("1"));
                assert_eq!(r.json()["error"]["code"], "overloaded");
                assert!(r.elapsed < Duration::from_millis(200), "{:?}", r.elapsed);
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((ok, shed), (2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_max_connections_sends_the_overflow_to_the_twin() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_behavior(Behavior::Delay(Duration::from_millis(300)));
    b.set_behavior(Behavior::Delay(Duration::from_millis(300)));
    let t = Arc::new(Twinroute::start(&two(&a, &b, ", max_connections: 1"), &[]).await);
    let reqs: Vec<_> = (0..3)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move { t.chat(&chat_body("m"), &[]).await })
        })
        .collect();
    let mut by = std::collections::HashMap::new();
    for r in reqs {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200);
        *by.entry(r.header("x-twinroute-provider").unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(by.get("a"), Some(&1), "{by:?}");
    assert_eq!(by.get("b"), Some(&2), "{by:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tokens_are_required_when_configured_and_never_forwarded() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let body = format!(
        "client_tokens_env: TW_TOKENS\n{}",
        two(&a, &b, ", api_key_env: PK")
    );
    let t = Twinroute::start(
        &body,
        &[
            ("TW_TOKENS", "tok-first-123, tok-second-456"),
            ("PK", "sk-provider-789"),
        ],
    )
    .await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = t
        .chat(&chat_body("m"), &[("authorization", "Bearer tok-first-12")])
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(a.request_count(), 0);
    let r = t
        .chat(
            &chat_body("m"),
            &[("authorization", "Bearer tok-second-456")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = t
        .chat(&chat_body("m"), &[("x-api-key", "tok-first-123")])
        .await;
    assert_eq!(r.status, 200);
    for req in a.requests() {
        assert_eq!(req.header("authorization"), Some("Bearer sk-provider-789"));
        assert_eq!(req.header("x-api-key"), None);
    }
    // Admin mutations are off unless enabled.
    let r = client::send(
        "POST",
        &format!("{}/admin/providers/a/drain", t.admin),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
}

/// Read until the server closes (or `limit`); returns what arrived and when it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (
        String::from_utf8_lossy(&buf).into_owned(),
        closed.then(|| start.elapsed()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_do_not_starve_others() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let body = format!(
        "client_body_timeout_ms: 300\nclient_header_timeout_ms: 300\n{}",
        two(&a, &b, "")
    );
    let t = Twinroute::start(&body, &[]).await;
    let addr = t.base.trim_start_matches("http://").to_string();
    // 100 slowloris connections that stall in the middle of their headers, 20 that trickle a
    // byte every 50 ms (each read is quick; only the header as a whole is slow), 20 that send
    // nothing, 20 that trickle a body.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(s);
    }
    let trickling = Arc::new(AtomicUsize::new(0));
    let mut tricklers = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let trickling = trickling.clone();
        tricklers.push(tokio::spawn(async move {
            let start = std::time::Instant::now();
            let _ = s
                .write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
                .await;
            trickling.fetch_add(1, Ordering::Relaxed);
            let (mut rd, mut wr) = s.into_split();
            let writer = tokio::spawn(async move {
                for _ in 0..200 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if wr.write_all(b"x").await.is_err() {
                        break;
                    }
                }
            });
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut got)).await;
            writer.abort();
            (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
        }));
    }
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":")
            .await
            .unwrap();
        bodies.push(s);
    }
    // Others are served promptly meanwhile.
    for _ in 0..5 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.elapsed < Duration::from_millis(200), "{:?}", r.elapsed);
    }
    // Every slow client is cut once its time is up: a 408 in its API's error format where it
    // sent part of a request, a plain close where it sent nothing.
    let limit = Duration::from_secs(3);
    let mut cut_headers = 0;
    for mut s in stalled {
        let (answer, closed) = read_until_closed(&mut s, limit).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
        assert!(closed.is_some(), "a stalled header was not closed");
        cut_headers += 1;
    }
    let mut cut_trickles = 0;
    for tr in tricklers {
        let (answer, took) = tr.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        // Anthropic's shape for /v1/messages.
        assert!(answer.contains("\"type\":\"error\""), "{answer}");
        assert!(took < Duration::from_millis(1500), "trickler held {took:?}");
        cut_trickles += 1;
    }
    let mut cut_silent = 0;
    for mut s in silent {
        let (answer, closed) = read_until_closed(&mut s, limit).await;
        assert_eq!(answer, "", "nothing asked, nothing answered");
        assert!(closed.is_some(), "a silent connection was not closed");
        cut_silent += 1;
    }
    let mut cut_bodies = 0;
    for mut s in bodies {
        let (answer, _) = read_until_closed(&mut s, limit).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        cut_bodies += 1;
    }
    println!(
        "slow clients: cut {cut_headers} stalled headers and {cut_trickles} trickled headers with 408, \
         {cut_silent} silent connections closed, {cut_bodies} slow bodies cut with 408"
    );
    assert_eq!(a.request_count() + b.request_count(), 5);
    let metrics = t.metrics().await;
    let refused: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("twinroute_client_connections_cut_total{reason=\"header_timeout\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(refused, 140, "{metrics}");
    // Still serving.
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200);
}

/// An HTTP/2 prior-knowledge (h2c) client and a POST through it.
type H2Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn h2_client() -> H2Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn h2_post(
    client: &H2Client,
    url: String,
    body: &[u8],
) -> http::Response<hyper::body::Incoming> {
    let req = http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            body,
        )))
        .expect("h2 request");
    client.request(req).await.expect("h2c request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_spare_keepalive_streams_and_h2_but_refuse_oversized_headers() {
    use http_body_util::BodyExt;
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_stream(12, Duration::from_millis(50));
    let body = format!(
        "client_header_timeout_ms: 300\nmax_request_header_bytes: 4096\nclient_keepalive_timeout_ms: 1000\n{}",
        two(&a, &b, "")
    );
    let t = Twinroute::start(&body, &[]).await;
    let addr = t.base.trim_start_matches("http://").to_string();
    let request = |extra: &str, stream: bool| {
        let body = serde_json::json!({"model": "m", "stream": stream, "messages": []}).to_string();
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // One keepalive connection: a stream that lasts twice the header timeout, an idle gap longer
    // than it, then a second request on the same connection.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(request("", true).as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let started = std::time::Instant::now();
    while !String::from_utf8_lossy(&got).contains("data: [DONE]") {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk))
            .await
            .expect("stream stalled")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-stream: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(started.elapsed() >= Duration::from_millis(550));
    // Let the chunked terminator arrive, then idle past the header timeout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut chunk)).await;
    s.write_all(request("", false).as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk))
        .await
        .expect("second request on the keepalive connection")
        .unwrap();
    let second = String::from_utf8_lossy(&chunk[..n]).into_owned();
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    drop(s);

    // A header just under the limit passes; one over it gets a 431 and nothing goes upstream.
    a.clear();
    b.clear();
    let filler = |len: usize| format!("X-Filler: {}\r\n", "f".repeat(len));
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(request(&filler(3500), false).as_bytes())
        .await
        .unwrap();
    let n = s.read(&mut chunk).await.unwrap();
    assert!(String::from_utf8_lossy(&chunk[..n]).starts_with("HTTP/1.1 200"));
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(request(&filler(5000), false).as_bytes())
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(
        answer.contains("\"code\":\"request_header_too_large\""),
        "{answer}"
    );
    assert!(closed.is_some());
    assert_eq!(a.request_count() + b.request_count(), 1);
    // A client still pushing a huge header while refused reads the whole 431. (The lingering
    // close behind it matters on real networks, where a RST can overtake the answer; on
    // loopback the answer arrives first either way, so this does not tell the two apart.)
    let s = TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let pusher = tokio::spawn(async move {
        let _ = wr
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nX-Huge: ")
            .await;
        for _ in 0..64 {
            if wr.write_all(&[b'h'; 4096]).await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), rd.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{read:?} {answer}");
    let _ = pusher.await;

    // A request shorter than the HTTP/2 preface is answered at once (Pingora's own peek would
    // wait for 24 bytes).
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        closed.is_some_and(|d| d < Duration::from_millis(250)),
        "{closed:?}"
    );

    // An idle keepalive connection is closed once client_keepalive_timeout_ms passes.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(request("", false).as_bytes()).await.unwrap();
    let n = s.read(&mut chunk).await.unwrap();
    assert!(String::from_utf8_lossy(&chunk[..n]).starts_with("HTTP/1.1 200"));
    let (rest, closed) = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert_eq!(rest, "");
    let idle = closed.expect("idle keepalive connection was not closed");
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(2000),
        "{idle:?}"
    );

    // HTTP/2 (prior knowledge): the connection idles past the header timeout between requests.
    let client = h2_client();
    let chat = chat_body("m").to_string();
    for round in 0..2 {
        let resp = h2_post(&client, t.url("/v1/chat/completions"), chat.as_bytes()).await;
        assert_eq!(resp.status(), 200, "round {round}");
        resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
    println!(
        "header limits: keepalive stream + idle gap + reuse ok, 431 past 4096 bytes (also to a \
         client still pushing 256 KiB), short request answered, idle keepalive closed after \
         {idle:?}, h2 idle ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_and_its_upstream_closed() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    // An answer (16 MB) far larger than the socket buffers between twinroute and the client (the
    // kernel grows a loopback send buffer up to 4 MB).
    a.set_behavior(Behavior::Status {
        status: 200,
        body: format!("{{\"pad\":\"{}\"}}", "p".repeat(16 << 20)),
        retry_after: None,
    });
    let body = format!("client_send_timeout_ms: 300\n{}", two(&a, &b, ""));
    let t = Twinroute::start(&body, &[]).await;
    let addr: std::net::SocketAddr = t.base.trim_start_matches("http://").parse().unwrap();
    let before = a.connections_open();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let req = serde_json::json!({"model": "m", "messages": []}).to_string();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{req}",
            req.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The client reads nothing. twinroute's writes stall, fail after 300 ms, and the upstream
    // request is dropped instead of being held for as long as the client likes.
    let started = std::time::Instant::now();
    let mut open = usize::MAX;
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        open = a.connections_open();
        if open == before && started.elapsed() > Duration::from_millis(300) {
            break;
        }
    }
    let took = started.elapsed();
    assert_eq!(
        open,
        before,
        "upstream still open after {took:?}\n{}",
        t.logs()
    );
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("twinroute_client_connections_cut_total{reason=\"send_timeout\"} 1"),
        "took {took:?}\n{}",
        t.logs()
    );
    println!("stalled reader: cut and upstream closed {took:?} after the request");
    drop(s);
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_closes_the_upstream_request() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_stream(200, Duration::from_millis(20));
    let t = Twinroute::start(&two(&a, &b, ""), &[]).await;
    let addr = t.base.trim_start_matches("http://").to_string();
    let before = a.connections_open();
    for _ in 0..5 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let body = serde_json::json!({"model": "m", "stream": true, "messages": []}).to_string();
        s.write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        drop(s);
    }
    assert!(a.connections_open() >= before);
    // twinroute notices on its next write and drops the upstream connection.
    let mut open = usize::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        open = a.connections_open();
        if open == before {
            break;
        }
    }
    println!("client disconnects: 5 streams abandoned, upstream connections open after: {open}");
    assert_eq!(open, before, "upstream connections leaked");
    // A client cancelling a stream is routine, not an error of the proxy: no ERROR line for it
    // (Pingora logged one per stream, "Fail to filter request"); the access line records each,
    // with the status it had started and `client_left=true`.
    let access = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("twinroute::access") && l.contains("stream=true"))
            .filter(|l| l.contains("status=200") && l.contains("client_left=true"))
            .count()
    };
    let mut logs = t.logs();
    for _ in 0..50 {
        if access(&logs) >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        logs = t.logs();
    }
    assert_eq!(access(&logs), 5, "{logs}");
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "error lines for clients that left: {errors:#?}"
    );
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_and_fail_over_too() {
    use http_body_util::BodyExt;
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_behavior(Behavior::status(503));
    let t = Twinroute::start(&two(&a, &b, ""), &[]).await;
    let client = h2_client();
    let chat = chat_body("m").to_string();
    let resp = h2_post(&client, t.url("/v1/chat/completions"), chat.as_bytes()).await;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-twinroute-provider"], "b");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["model"], "b-m");
    // Bad input over HTTP/2 gets the same API-format error.
    let resp = h2_post(&client, t.url("/v1/chat/completions"), b"{\"model\": 7}").await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_neither_crashes_nor_reaches_a_provider_broken() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let t = Twinroute::start(&two(&a, &b, ""), &[]).await;
    let url = t.url("/v1/chat/completions");
    let json = [("content-type", "application/json")];
    // 200,000 levels: a recursive parser would overflow its stack and take the process down.
    let depth = 200_000;
    let deep = format!(
        "{{\"x\":{}{},\"model\":\"m\"}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let r = client::send("POST", &url, &json, deep.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let got = &a.requests()[0].body;
    let want = deep.replace("\"model\":\"m\"", "\"model\":\"a-m\"");
    assert!(
        got == want.as_bytes(),
        "forwarded body differs but for model"
    );
    // Unbalanced: a clear 400 in the API's format, nothing upstream.
    a.clear();
    let unbalanced = format!("{{\"model\":\"m\",\"x\":{}}}", "[".repeat(depth));
    let r = client::send("POST", &url, &json, unbalanced).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(a.request_count() + b.request_count(), 0);
    // Deep nesting around `model` itself: no model at the top level.
    let buried = format!(
        "{}{{\"model\":\"m\"}}{}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let r = client::send("POST", &url, &json, buried).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    // Still alive and serving.
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200);
    println!(
        "deep JSON: {depth} levels forwarded intact, unbalanced and buried ones refused with 400"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_injection_in_control_headers_goes_nowhere() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let t = Twinroute::start(&two(&a, &b, ""), &[]).await;
    let addr = t.base.trim_start_matches("http://").to_string();
    let body = chat_body("m").to_string();
    // Pinned-provider values that name no provider: 400, value not echoed, nothing sent.
    for pin in ["a\u{7f}evil", "b, a", "../a", "a\u{0}x"] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-twinroute-provider: {pin}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split(' ').nth(1).unwrap_or("");
        assert!(status == "400", "{pin:?}: {text}");
        // The value is never echoed back.
        assert!(!text.contains("evil") && !text.contains("../a"), "{text}");
    }
    assert_eq!(a.request_count() + b.request_count(), 0);
    // CRLF in a value is a new header line on the wire: the pin is exactly "a", and the extra
    // line is just another client header (no second request, no response splitting).
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-twinroute-provider: b\r\nX-Injected: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1);
    assert_eq!((a.request_count(), b.request_count()), (0, 1));
    assert!(b.requests()[0].header("x-twinroute-provider").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_retention_keeps_no_connection_or_buffer_beyond_the_request() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    // a is zero-retention; b is not, except through the "private" route.
    let body = format!(
        "{}routes:\n  - name: private\n    match: {{headers: {{x-twinroute-route: private}}}}\n    zero_retention: true\n    policy: {{max_attempts: 1}}\n",
        two(&a, &b, ", zero_retention: true")
    );
    let t = Twinroute::start(&body, &[]).await;
    for _ in 0..3 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.header("x-twinroute-provider"), Some("a"));
        assert_eq!(r.header("connection"), Some("close"));
    }
    // No upstream connection was pooled: one per request.
    assert_eq!(a.connections_accepted(), 3);
    t.wait_for_log("zero_retention=true").await;
    // A normal provider pools: three requests, one connection.
    let pin = [("x-twinroute-provider", "b")];
    for _ in 0..3 {
        let r = t.chat(&chat_body("m"), &pin).await;
        assert_eq!(r.header("x-twinroute-provider"), Some("b"));
        assert_ne!(r.header("connection"), Some("close"));
    }
    let pooled = b.connections_accepted();
    assert!(pooled <= 2, "b opened {pooled} connections for 3 requests");
    // The route turns it on for b too.
    let private = [
        ("x-twinroute-provider", "b"),
        ("x-twinroute-route", "private"),
    ];
    for _ in 0..3 {
        let r = t.chat(&chat_body("m"), &private).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"));
    }
    // The first may reuse b's idle pooled connection; none goes back, so the next two are new.
    assert_eq!(b.connections_accepted(), pooled + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_retention_request_whose_attempts_all_fail_is_still_wiped() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let t = Twinroute::start(
        &format!(
            "{}policy: {{max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n",
            two(&a, &b, ", zero_retention: true")
        ),
        &[],
    )
    .await;
    a.set_behavior(Behavior::status(503));
    b.set_behavior(Behavior::status(503));
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    assert_eq!(r.header("connection"), Some("close"));
    // The wipe follows the same flag as this field of the request's access line.
    let id = r.header("x-twinroute-request-id").unwrap().to_string();
    let line = t.wait_for_log(&format!("request id={id}")).await;
    let line = line
        .lines()
        .find(|l| l.contains(&format!("request id={id}")))
        .unwrap();
    assert!(line.contains("zero_retention=true"), "{line}");
    // A request that never reaches the zero-retention provider is not marked.
    let r = t
        .chat(&chat_body("m"), &[("x-twinroute-provider", "b")])
        .await;
    assert_eq!(r.status, 502);
    let id = r.header("x-twinroute-request-id").unwrap().to_string();
    let logs = t.wait_for_log(&format!("request id={id}")).await;
    let line = logs
        .lines()
        .find(|l| l.contains(&format!("request id={id}")))
        .unwrap();
    assert!(!line.contains("zero_retention"), "{line}");
}

/// A client that writes its whole oversized body before it reads (Python's urllib does) must
/// read the 413, not a reset: twinroute answers from Content-Length and then closes lingeringly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_413_even_when_the_client_writes_it_all_first() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let t = Twinroute::start(&format!("max_body_bytes: 65536\n{}", two(&a, &b, "")), &[]).await;
    let addr = t.url("").trim_start_matches("http://").to_string();
    let body = vec![b'x'; 12 << 20];
    let mut got = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // Write everything first, as urllib does: a write that fails (broken pipe, reset) is
        // what urllib raises instead of returning the answer.
        match tokio::time::timeout(Duration::from_secs(5), s.write_all(&body)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                got.push(format!("write failed: {e}"));
                continue;
            }
            Err(_) => {
                got.push("write timed out".into());
                continue;
            }
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        got.push(
            String::from_utf8_lossy(&buf)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        );
    }
    let ok = got.iter().filter(|l| l.starts_with("HTTP/1.1 413")).count();
    assert_eq!(ok, got.len(), "answers: {got:?}");
    assert_eq!(a.request_count() + b.request_count(), 0);
}

/// jemalloc reads its options (`main.rs`) when the process starts and, for one it cannot parse,
/// only prints a `<jemalloc>:` line to stderr and goes on with its defaults: a typo there would
/// silently undo the memory tuning. The binary's log must carry no such line. (Setting
/// `_RJEM_MALLOC_CONF=nosuch:1` in this test's environment, which the binary inherits, makes it
/// fail.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allocator_accepts_every_option_the_binary_sets() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let t = Twinroute::start(&two(&a, &b, ""), &[]).await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200);
    // The access line is written by the log writer a few milliseconds later: once it is there,
    // everything the process printed at start is there too.
    let mut logs = t.logs();
    for _ in 0..100 {
        if logs.contains("status=200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        logs = t.logs();
    }
    assert!(logs.contains("status=200"), "{logs}");
    let complaints: Vec<&str> = logs.lines().filter(|l| l.contains("<jemalloc>")).collect();
    assert!(complaints.is_empty(), "{complaints:?}");
}
