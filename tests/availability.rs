//! Black-box tests of "a model disappears on one provider": `model_unavailable` answers take
//! the offering (not the provider) out, probe listings do the same, `drop_params` and
//! `x-twinroute-require-parameters` keep parameter changes visible and optional.

mod common;

use common::*;
use std::time::Duration;
use twinroute::testkit::client;

const GONE_404: &str = r#"{"error":{"message":"The model `a-m` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;

/// Providers a and b; model m on both (a first), model n on a only.
async fn setup(
    a_extra: &str,
    b_extra: &str,
    tail: &str,
) -> (MockProvider, MockProvider, Twinroute) {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let yaml = format!(
        "providers:\n{}{}models:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m{a_extra}}}\n      - {{provider: b, model: b-m{b_extra}}}\n  - name: n\n    offerings:\n      - {{provider: a, model: a-n}}\n{tail}",
        provider("a", &a.base_url(), ""),
        provider("b", &b.base_url(), ""),
    );
    (a, b, Twinroute::start(&yaml, &[]).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_not_found_takes_out_the_offering_not_the_provider() {
    let (a, b, t) = setup(
        "",
        "",
        "policy: {max_attempts: 2, offering_cooldown_ms: 600, backoff: {base_ms: 1, max_ms: 2}}\n",
    )
    .await;
    a.set_model_behavior(
        "a-m",
        Some(Behavior::Status {
            status: 404,
            body: GONE_404.into(),
            retry_after: None,
        }),
    );
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("2"));
    t.wait_for_log("failovers=\"a:model_unavailable\"").await;

    // During the cooldown a sees no request for a-m ...
    for _ in 0..4 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.header("x-twinroute-provider"), Some("b"));
        assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    }
    assert_eq!(
        count_model(&a, "a-m"),
        1,
        "a got a-m again during the cooldown"
    );
    // ... while it still serves model n.
    let r = t.chat(&chat_body("n"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    t.wait_for_log("skipped=\"a/a-m:model_unavailable\"").await;

    let s = t.status().await;
    let out = s["offerings_out"].as_array().unwrap();
    assert_eq!(out.len(), 1, "{s}");
    assert_eq!(out[0]["provider"], "a");
    assert_eq!(out[0]["model"], "a-m");
    assert_eq!(out[0]["reason"], "model_unavailable");
    let a_status = s["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(
        a_status["healthy"], true,
        "the provider stays in: {a_status}"
    );
    assert!(t.metrics().await.contains(
        "twinroute_upstream_attempts_total{outcome=\"model_unavailable\",provider=\"a\"} 1"
    ));

    // After the cooldown the offering is tried again (and, still gone, taken out again).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    assert_eq!(count_model(&a, "a-m"), 2);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_twin_gone_is_a_404_in_the_clients_format_and_ordinary_400s_pass_through() {
    let (a, b, t) = setup("", "", "policy: {max_attempts: 2}\n").await;
    let gone = Behavior::Status {
        status: 404,
        body: GONE_404.into(),
        retry_after: None,
    };
    a.set_behavior(gone.clone());
    b.set_behavior(gone);
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"]["code"], "model_unavailable");
    assert!(j["error"]["message"]
        .as_str()
        .unwrap()
        .contains("a: model_unavailable (404)"));

    // A 400 about a parameter is the client's: passed on as the provider wrote it, no failover.
    let param_400 = r#"{"error":{"message":"Unsupported parameter: 'max_tokens' is not supported with this model.","type":"invalid_request_error","param":"max_tokens","code":"unsupported_parameter"}}"#;
    a.set_behavior(Behavior::Status {
        status: 400,
        body: param_400.into(),
        retry_after: None,
    });
    b.clear();
    let r = t.chat(&chat_body("n"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), param_400);
    assert_eq!(b.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_listing_without_the_model_takes_the_offering_out_and_back() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    a.set_models(&["a-m", "a-n"]);
    let probe = ", probe: {interval_ms: 100, timeout_ms: 80}";
    let prov = |name: &str, url: String| {
        format!("  - {{name: {name}, api: openai, base_url: \"{url}\", timeouts: {{connect_ms: 300, first_byte_ms: 400}}{probe}}}\n")
    };
    let yaml = format!(
        "providers:\n{}{}models:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m}}\n      - {{provider: b, model: b-m}}\n  - name: n\n    offerings:\n      - {{provider: a, model: a-n}}\n",
        prov("a", a.base_url()),
        prov("b", b.base_url()),
    );
    let t = Twinroute::start(&yaml, &[]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));

    a.set_models(&["a-n"]);
    // Within two probe intervals the offering is out; the provider keeps serving n.
    tokio::time::sleep(Duration::from_millis(250)).await;
    a.clear();
    for _ in 0..3 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    }
    assert_eq!(count_model(&a, "a-m"), 0);
    let r = t.chat(&chat_body("n"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    t.wait_for_log("model a-m is not in its model listing")
        .await;
    let s = t.status().await;
    assert_eq!(
        s["offerings_out"][0]["reason"], "probe_model_missing",
        "{s}"
    );

    a.set_models(&["a-m", "a-n"]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    t.wait_for_log("model a-m is listed again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_params_cuts_exactly_the_named_keys_for_exactly_that_offering() {
    let (a, b, t) = setup(
        ", drop_params: [temperature, top_p]",
        "",
        "policy: {max_attempts: 2, backoff: {base_ms: 1, max_ms: 2}}\n",
    )
    .await;
    let sent = "{\n  \"model\": \"m\",\n  \"temperature\": 0.3,\n  \"messages\": [{\"role\": \"user\", \"content\": \"hi\", \"temperature\": 9}],\n  \"seed\": 7,\n  \"top_p\": 0.5\n}";
    let url = t.url("/v1/chat/completions");
    let ct = [("content-type", "application/json")];
    // a fails once, so both offerings see this request.
    a.push_once(Behavior::status(503));
    let r = client::send("POST", &url, &ct, sent.to_string())
        .await
        .unwrap();
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    assert_eq!(r.header("x-twinroute-dropped-params"), None);
    let to_a = String::from_utf8(a.requests()[0].body.clone()).unwrap();
    let to_b = String::from_utf8(b.requests()[0].body.clone()).unwrap();
    assert_eq!(
        to_a,
        "{\n  \"model\": \"a-m\",\n  \"messages\": [{\"role\": \"user\", \"content\": \"hi\", \"temperature\": 9}],\n  \"seed\": 7\n}"
    );
    assert_eq!(to_b, sent.replace("\"model\": \"m\"", "\"model\": \"b-m\""));

    // When a answers, the client is told what was dropped.
    let r = client::send("POST", &url, &ct, sent.to_string())
        .await
        .unwrap();
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    assert_eq!(
        r.header("x-twinroute-dropped-params"),
        Some("temperature,top_p")
    );
    t.wait_for_log("dropped_params=\"temperature,top_p\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_parameters_skips_offerings_that_would_change_the_request() {
    let (a, b, t) = setup(
        ", drop_params: [temperature]",
        ", unsupported_params: [logprobs]",
        "",
    )
    .await;
    let mut body = chat_body("m");
    body["temperature"] = 0.2.into();
    let req = [("x-twinroute-require-parameters", "true")];
    let r = t.chat(&body, &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    assert_eq!(a.request_count(), 0);
    // Without the header a is first and drops the parameter.
    let r = t.chat(&body, &[]).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("a"));
    // Nobody can take temperature and logprobs together: a clear 400 naming both.
    body["logprobs"] = true.into();
    b.clear();
    let r = t.chat(&body, &req).await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("temperature") && msg.contains("logprobs"),
        "{msg}"
    );
    assert_eq!(b.request_count(), 0);
    let r = t
        .chat(&body, &[("x-twinroute-require-parameters", "maybe")])
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_live_prints_each_offering_state_and_fails_without_a_reachable_twin() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let denied = MockProvider::start("denied").await.unwrap();
    a.set_models(&["a-m", "a-n"]);
    b.set_models(&["something-else"]);
    denied.set_probe_status(401);
    let dead = refused_addr().unwrap();
    let prov = |name: &str, url: String| {
        format!("  - {{name: {name}, api: openai, base_url: \"{url}\", api_key_env: LIVE_KEY, probe: {{timeout_ms: 500}}}}\n")
    };
    let body = |only_dead: bool| {
        format!(
            "providers:\n{}{}{}{}models:\n  - name: m\n    offerings:\n      - {{provider: a, model: a-m}}\n      - {{provider: b, model: b-m}}\n      - {{provider: denied, model: d-m}}\n      - {{provider: dead, model: x-m}}\n{}",
            prov("a", a.base_url()),
            prov("b", b.base_url()),
            prov("denied", denied.base_url()),
            prov("dead", format!("http://{dead}")),
            if only_dead {
                "  - name: lonely\n    offerings:\n      - {provider: dead, model: lonely-1}\n      - {provider: b, model: lonely-2}\n"
            } else {
                ""
            }
        )
    };
    let (ok_yaml, bad_yaml) = (body(false), body(true));
    let dir = std::env::temp_dir().join(format!("twinroute-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = move |name: &str, yaml: String| {
        let path = dir.join(name);
        std::fs::write(&path, yaml).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_twinroute"))
            .args(["check", "--live", "--config"])
            .arg(&path)
            .env("LIVE_KEY", "sk-live-check-secret")
            .output()
            .unwrap()
    };
    let out =
        tokio::task::spawn_blocking(move || (run("ok.yaml", ok_yaml), run("bad.yaml", bad_yaml)))
            .await
            .unwrap();
    let (ok, bad) = out;
    let stdout = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(ok.status.success(), "{stdout}");
    let line = |s: &str, id: &str| {
        s.lines()
            .find(|l| l.contains(id) && !l.contains("POST"))
            .unwrap_or_else(|| panic!("no line for {id}: {s}"))
            .to_string()
    };
    assert!(line(&stdout, "a-m").ends_with("listed"), "{stdout}");
    assert!(line(&stdout, "b-m").ends_with("missing"), "{stdout}");
    assert!(
        line(&stdout, "d-m").ends_with("auth failed (401)"),
        "{stdout}"
    );
    assert!(line(&stdout, "x-m").contains("unreachable"), "{stdout}");
    assert!(!stdout.contains("sk-live-check-secret"));
    // The probes carried the key.
    assert_eq!(
        a.probes()[0].header("authorization"),
        Some("Bearer sk-live-check-secret")
    );

    let stdout = String::from_utf8_lossy(&bad.stdout).to_string();
    assert_eq!(bad.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("no reachable twin for lonely"), "{stdout}");
    assert!(!stdout.contains("no reachable twin for m"), "{stdout}");
}

/// A provider whose key is not set is left out of rotation with one warning naming it: never
/// tried, never probed, shown in /status; a model only it serves answers 502 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_a_credential_is_left_out_with_one_warning() {
    let a = MockProvider::start("a").await.unwrap();
    let b = MockProvider::start("b").await.unwrap();
    let yaml = format!(
        "providers:\n  - {{name: a, api: openai, base_url: \"{}\", api_key_env: TWINROUTE_TEST_UNSET_KEY, probe: {{interval_ms: 50}}}}\n  - {{name: b, api: openai, base_url: \"{}\", probe: {{enabled: false}}}}\nmodels:\n  - name: m\n    offerings: [{{provider: a, model: a-m}}, {{provider: b, model: b-m}}]\n  - name: only-a\n    offerings: [{{provider: a, model: a-only}}]\n",
        a.base_url(),
        b.base_url()
    );
    let t = Twinroute::start(&yaml, &[]).await;
    for _ in 0..3 {
        let r = t.chat(&chat_body("m"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-twinroute-provider"), Some("b"));
        assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    }
    let r = t.chat(&chat_body("only-a"), &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("TWINROUTE_TEST_UNSET_KEY is not set"),
        "{}",
        r.text()
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(a.request_count(), 0);
    assert!(a.probes().is_empty(), "a provider without a key was probed");
    let logs = t.logs();
    assert_eq!(
        logs.matches(
            "left out of rotation, no credential: a (TWINROUTE_TEST_UNSET_KEY is not set)"
        )
        .count(),
        1,
        "{logs}"
    );
    let s = t.status().await;
    let pa = s["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(pa["healthy"], false);
    assert_eq!(
        pa["credential_missing"],
        "TWINROUTE_TEST_UNSET_KEY is not set"
    );
}

/// A provider whose host does not resolve fails as `dns_failure`, not `connect_failure`: in the
/// 502's message, the access line and the attempts metric, and the twin still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_host_is_a_dns_failure() {
    let b = MockProvider::start("b").await.unwrap();
    let yaml = format!(
        "providers:\n  - {{name: typo, api: openai, base_url: \"http://no-such-host.invalid:4000\", timeouts: {{connect_ms: 2000, first_byte_ms: 2000}}, probe: {{enabled: false}}}}\n{}models:\n  - name: m\n    offerings: [{{provider: typo, model: t-m}}, {{provider: b, model: b-m}}]\n  - name: solo\n    offerings: [{{provider: typo, model: t-solo}}]\npolicy: {{strategy: ordered, max_attempts: 2, backoff: {{base_ms: 1, max_ms: 2}}}}\n",
        provider("b", &b.base_url(), ""),
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let r = t.chat(&chat_body("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("b"));
    let r = t.chat(&chat_body("solo"), &[]).await;
    assert_eq!(r.status, 502);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("typo: dns_failure"), "{message}");
    let logs = t.wait_for_log("typo:dns_failure").await;
    assert!(!logs.contains("typo:connect_failure"), "{logs}");
    let metrics = t.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("twinroute_upstream_attempts_total")
                && l.contains("outcome=\"dns_failure\"")
                && l.contains("provider=\"typo\"")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("attempts_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
