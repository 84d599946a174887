//! Black-box tests of the cloud providers' own protocols: AWS Bedrock with SigV4 (the mock
//! recomputes every signature from the received request and a known secret, independently of
//! the signer twinroute uses), its event-stream answers (binary frames with CRCs), its
//! exception frames and its errors.

mod common;

use common::*;
use serde_json::{json, Value};
use twinroute::testkit::client;
use twinroute::testkit::mock::BedrockAuth;

const AKID: &str = "AKIDTWINROUTETEST01";
const SECRET: &str = "tw1nr0ute/TEST+secret/K7MDENGbPxRfiCYEXAMPLEKEY";
const BEDROCK_ID: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

/// `anthropic` (Anthropic API) then `bedrock` serving Claude Sonnet 4.5; the Bedrock mock
/// checks SigV4 against `secret_in_mock` while twinroute signs with `SECRET`.
async fn setup(secret_in_mock: &str) -> (MockProvider, MockProvider, Twinroute) {
    let an = MockProvider::start("an").await.unwrap();
    let bd = MockProvider::start("bd").await.unwrap();
    an.set_strict(true);
    bd.set_bedrock(BedrockAuth::SigV4 {
        access_key_id: AKID.into(),
        secret_access_key: secret_in_mock.into(),
    });
    let yaml = format!(
        "providers:\n  - {{name: anthropic, api: anthropic, base_url: \"{}\", probe: {{enabled: false}}}}\n  - {{name: bedrock, api: bedrock, aws_region: us-east-1, base_url: \"{}\", required: true}}\nmodels:\n  - name: claude-sonnet-4-5\n    offerings:\n      - {{provider: anthropic, model: claude-sonnet-4-5-20250929}}\n      - {{provider: bedrock, model: \"{BEDROCK_ID}\"}}\npolicy: {{backoff: {{base_ms: 1, max_ms: 5}}}}\n",
        an.base_url(),
        bd.base_url()
    );
    let t = Twinroute::start(
        &yaml,
        &[
            ("AWS_ACCESS_KEY_ID", AKID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", "twinroute-session-token-value"),
            // The secret scan on drop holds at trace level too (Pingora's trace lines print
            // whole request headers: the session token travels in one).
            ("RUST_LOG", "trace"),
        ],
    )
    .await;
    (an, bd, t)
}

/// An Anthropic-SDK-style call (`/v1/messages` with `anthropic-version`) plus `extra` headers.
async fn anthropic(t: &Twinroute, extra: &[(&str, &str)], body: &Value) -> client::Reply {
    let mut headers = vec![("anthropic-version", "2023-06-01")];
    headers.extend_from_slice(extra);
    client::post_json(&t.url("/v1/messages"), &headers, body)
        .await
        .unwrap()
}

fn overloaded() -> Behavior {
    Behavior::Status {
        status: 529,
        body: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            .into(),
        retry_after: None,
    }
}

fn messages(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
           "messages": [{"role": "user", "content": "Hello"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_client_fails_over_to_bedrock_with_a_valid_sigv4_signature() {
    let (an, bd, t) = setup(SECRET).await;
    an.set_behavior(overloaded());
    let r = anthropic(&t, &[], &messages(false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("bedrock"));
    assert_eq!(r.header("x-twinroute-attempts"), Some("2"));
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "hello from bd");
    let req = &bd.requests()[0];
    assert_eq!(
        req.path,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
    );
    // Bedrock's envelope: no model, no stream, its own anthropic_version.
    assert_eq!(
        req.json(),
        json!({"max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}],
               "anthropic_version": "bedrock-2023-05-31"})
    );
    let auth = req.header("authorization").unwrap();
    assert!(auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={AKID}/")));
    assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
    assert_eq!(
        req.header("x-amz-security-token"),
        Some("twinroute-session-token-value")
    );
    // The client's own credentials never reach a provider.
    assert!(req.header("x-api-key").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bedrock_stream_arrives_as_anthropic_sse_and_an_exception_frame_as_an_error_event() {
    let (an, bd, t) = setup(SECRET).await;
    an.set_behavior(overloaded());
    let r = anthropic(&t, &[], &messages(true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(kinds.last(), Some(&"message_stop"));
    let said: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/delta/text")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    assert_eq!(said, "hello from bd");
    assert!(bd.requests()[0]
        .path
        .ends_with("/invoke-with-response-stream"));

    // Mid-stream exception: what was said arrives, then the client's error event.
    bd.set_behavior(Behavior::BedrockException {
        after: 3,
        kind: "modelStreamErrorException".into(),
    });
    let r = anthropic(&t, &[], &messages(true)).await;
    let text = r.text();
    assert!(text.contains("event: message_start"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error"), "{text}");
    assert!(last.contains("modelStreamErrorException"), "{last}");
    assert!(!text.contains("message_stop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_client_of_claude_is_served_by_bedrock_through_translation() {
    let (an, _bd, t) = setup(SECRET).await;
    an.set_behavior(overloaded());
    let r = t
        .chat(
            &json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("bedrock"));
    assert_eq!(
        r.header("x-twinroute-translated"),
        Some("openai->anthropic")
    );
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "hello from bd"
    );
    // And streamed: event-stream frames -> Anthropic events -> OpenAI chunks.
    let r = t
        .chat(
            &json!({"model": "claude-sonnet-4-5", "stream": true, "stream_options": {"include_usage": true},
                    "messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    let text = r.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let said: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    assert_eq!(said, "hello from bd");
    assert!(text.contains("\"completion_tokens\":5"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_refused_by_the_mock_and_fails_over() {
    // The mock holds another secret: every signature twinroute makes is wrong there.
    let (an, bd, t) = setup("some-other-secret").await;
    let r = anthropic(&t, &[("x-twinroute-provider", "bedrock")], &messages(false)).await;
    // 403 not about a model: the injected credential was refused (auth_failed), in the
    // client's shape.
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    assert!(
        r.text().contains("bedrock: auth_failed (403)"),
        "{}",
        r.text()
    );
    assert_eq!(bd.request_count(), 1);
    // Unpinned, the Anthropic twin answers.
    let r = anthropic(&t, &[], &messages(false)).await;
    assert_eq!(r.header("x-twinroute-provider"), Some("anthropic"));
    let _ = an;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bedrock_api_key_is_sent_as_a_bearer_token() {
    let bd = MockProvider::start("bd").await.unwrap();
    bd.set_bedrock(BedrockAuth::Bearer("bedrock-api-key-test-value".into()));
    let yaml = format!(
        "providers:\n  - {{name: bedrock, api: bedrock, base_url: \"{}\"}}\nmodels:\n  - name: claude-haiku-4-5\n    offerings: [{{provider: bedrock, model: anthropic.claude-haiku-4-5-20251001-v1:0}}]\n",
        bd.base_url()
    );
    let t = Twinroute::start(
        &yaml,
        &[
            ("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-test-value"),
            ("AWS_REGION", "eu-west-1"),
        ],
    )
    .await;
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[],
        &json!({"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(bd.requests()[0].header("x-amz-date").is_none());
}

// ---- Google Vertex AI ----

use twinroute::testkit::mock::GoogleMock;

/// A fresh RSA key (PKCS#8 PEM) made with openssl, as a service-account key would hold.
fn rsa_key() -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

const SA_EMAIL: &str = "twinroute-test@my-proj.iam.gserviceaccount.com";

/// A scratch dir holding a service-account key file for `key` whose token endpoint is `gg`.
fn service_account_file(
    prefix: &str,
    key: &str,
    gg: &MockProvider,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let sa = dir.join("sa.json");
    std::fs::write(
        &sa,
        json!({"type": "service_account", "private_key": key, "client_email": SA_EMAIL,
               "token_uri": format!("{}/token", gg.base_url())})
        .to_string(),
    )
    .unwrap();
    (dir, sa)
}

/// `anthropic` then `vertex` for Claude; the Google mock plays the token endpoint (checking
/// the JWT with the service account's public key) and Vertex. `credentials` is `sa` (a key
/// file) or `metadata` (GCE_METADATA_HOST pointing at the mock).
async fn vertex_setup(
    credentials: &str,
    ttl: std::time::Duration,
) -> (MockProvider, MockProvider, Twinroute, std::path::PathBuf) {
    let an = MockProvider::start("an").await.unwrap();
    let gg = MockProvider::start("gg").await.unwrap();
    let key = rsa_key();
    gg.set_google(GoogleMock {
        client_email: SA_EMAIL.into(),
        private_key_pem: key.clone(),
        token_ttl: ttl,
    });
    let dir = std::env::temp_dir().join(format!("twinroute-vertex-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let sa_file = dir.join("sa.json");
    std::fs::write(
        &sa_file,
        json!({"type": "service_account", "project_id": "my-proj", "private_key_id": "k1",
               "private_key": key, "client_email": SA_EMAIL,
               "token_uri": format!("{}/token", gg.base_url())})
        .to_string(),
    )
    .unwrap();
    let creds = match credentials {
        "sa" => format!(", gcp_credentials_file: \"{}\"", sa_file.display()),
        _ => String::new(),
    };
    let yaml = format!(
        "providers:\n  - {{name: anthropic, api: anthropic, base_url: \"{}\", probe: {{enabled: false}}}}\n  - {{name: vertex, api: vertex, gcp_project: my-proj, gcp_location: us-east5, base_url: \"{}\"{creds}}}\nmodels:\n  - name: claude-sonnet-4-5\n    offerings:\n      - {{provider: anthropic, model: claude-sonnet-4-5-20250929}}\n      - {{provider: vertex, model: \"claude-sonnet-4-5@20250929\"}}\npolicy: {{backoff: {{base_ms: 1, max_ms: 5}}}}\n",
        an.base_url(),
        gg.base_url()
    );
    let host = gg.base_url().trim_start_matches("http://").to_string();
    let env: Vec<(&str, &str)> = match credentials {
        "metadata" => vec![("GCE_METADATA_HOST", host.as_str())],
        _ => vec![],
    };
    let t = Twinroute::start(&yaml, &env).await;
    an.set_behavior(overloaded());
    (an, gg, t, sa_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_fails_over_to_vertex_with_a_token_minted_from_a_signed_jwt() {
    let (_an, gg, t, _) = vertex_setup("sa", std::time::Duration::from_secs(3600)).await;
    let r = anthropic(&t, &[], &messages(false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("vertex"));
    assert_eq!(r.json()["content"][0]["text"], "hello from gg");
    let reqs = gg.requests();
    let call = reqs
        .iter()
        .find(|r| r.path.contains(":rawPredict"))
        .expect("a rawPredict call");
    assert_eq!(
        call.path,
        "/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    );
    assert_eq!(
        call.json(),
        json!({"max_tokens": 64, "stream": false, "messages": [{"role": "user", "content": "Hello"}],
               "anthropic_version": "vertex-2023-10-16"})
    );
    assert!(call
        .header("authorization")
        .unwrap()
        .starts_with("Bearer ya29.mock-"));
    // The token came from the JWT bearer grant the mock verified with the key's public half.
    let grant = reqs.iter().find(|r| r.path == "/token").unwrap();
    assert!(String::from_utf8_lossy(&grant.body).starts_with(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant%2Dtype%3Ajwt%2Dbearer&assertion="
    ));
    assert!(gg.tokens_issued() >= 1);
    // Streamed: Vertex's SSE reaches the Anthropic client as it is.
    let r = anthropic(&t, &[], &messages(true)).await;
    let text = r.text();
    assert!(text.starts_with("event: message_start"), "{text}");
    assert!(
        text.trim_end()
            .ends_with(r#"data: {"type":"message_stop"}"#),
        "{text}"
    );
    // And an OpenAI client of the same model, through translation.
    let r = t
        .chat(
            &json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "hello from gg"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_and_revoked_tokens_are_replaced_without_a_failed_request() {
    // Two-second tokens: several expire during the run.
    let (_an, gg, t, _) = vertex_setup("sa", std::time::Duration::from_secs(2)).await;
    let pin = [
        ("anthropic-version", "2023-06-01"),
        ("x-twinroute-provider", "vertex"),
    ];
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < std::time::Duration::from_millis(4500) {
        let r = client::post_json(&t.url("/v1/messages"), &pin, &messages(false))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert!(
        gg.tokens_issued() >= 3,
        "{} tokens for {n} requests",
        gg.tokens_issued()
    );
    // Revoked under us: the 401 forces one fresh token and one retry, invisible to the client.
    let (_an, gg, t, _) = vertex_setup("sa", std::time::Duration::from_secs(3600)).await;
    let r = client::post_json(&t.url("/v1/messages"), &pin, &messages(false))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let before = gg.tokens_issued();
    gg.revoke_tokens();
    let r = client::post_json(&t.url("/v1/messages"), &pin, &messages(false))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-attempts"), Some("1"));
    assert_eq!(gg.tokens_issued(), before + 1);
    t.wait_for_log("access token refused (401)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_tokens_come_from_the_metadata_server() {
    let (_an, gg, t, _) = vertex_setup("metadata", std::time::Duration::from_secs(3600)).await;
    let r = anthropic(&t, &[], &messages(false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("vertex"));
    // The metadata server is asked with GET (the mock files GETs under probes).
    let reqs = gg.probes();
    let md = reqs
        .iter()
        .find(|r| r.path.starts_with("/computeMetadata/"))
        .unwrap_or_else(|| {
            panic!(
                "no metadata call: {:?}",
                reqs.iter().map(|r| r.path.clone()).collect::<Vec<_>>()
            )
        });
    assert_eq!(md.header("metadata-flavor"), Some("Google"));
    assert!(
        md.path
            .contains("scopes=https%3A%2F%2Fwww%2Egoogleapis%2Ecom%2Fauth%2Fcloud%2Dplatform"),
        "{}",
        md.path
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_token_endpoint_refuses_takes_only_vertex_out() {
    let (_an, gg, t, sa_file) = vertex_setup("sa", std::time::Duration::from_secs(3600)).await;
    // The mock now expects another key: every JWT twinroute signs is refused.
    gg.set_google(GoogleMock {
        client_email: SA_EMAIL.into(),
        private_key_pem: rsa_key(),
        token_ttl: std::time::Duration::from_secs(3600),
    });
    let _ = sa_file;
    // (The refresher may have minted a good token at start; revoke it.)
    gg.revoke_tokens();
    let r = anthropic(&t, &[("x-twinroute-provider", "vertex")], &messages(false)).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("vertex: auth_failed"), "{}", r.text());
    t.wait_for_log("cannot mint an access token").await;
    let s = t.status().await;
    let v = s["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "vertex")
        .unwrap()
        .clone();
    assert!(
        v["credential_error"]
            .as_str()
            .unwrap()
            .contains("Invalid JWT Signature"),
        "{v}"
    );
}

// ---- Gemini on Google AI Studio (OpenAI-compatible endpoint) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_on_ai_studio_with_its_error_shapes() {
    let gm = MockProvider::start("gm").await.unwrap();
    let tw = MockProvider::start("tw").await.unwrap();
    let yaml = format!(
        "providers:\n  - {{name: gemini, api: openai, base_url: \"{}/v1beta/openai\", api_key_env: GEMINI_TEST_KEY, probe: {{enabled: false}}}}\n  - {{name: twin, api: openai, base_url: \"{}\", probe: {{enabled: false}}}}\nmodels:\n  - name: gemini-2.5-flash\n    offerings: [{{provider: gemini, model: gemini-2.5-flash}}, {{provider: twin, model: gemini-2.5-flash}}]\npolicy: {{backoff: {{base_ms: 1, max_ms: 5}}}}\n",
        gm.base_url(),
        tw.base_url()
    );
    let t = Twinroute::start(&yaml, &[("GEMINI_TEST_KEY", "AIzaSy-gemini-test-key")]).await;
    let r = t
        .chat(
            &json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("gemini"));
    let req = &gm.requests()[0];
    assert_eq!(req.path, "/v1beta/openai/chat/completions");
    assert_eq!(
        req.header("authorization"),
        Some("Bearer AIzaSy-gemini-test-key")
    );
    // A bad key (Gemini says 400 "API key not valid", as an array): not the client's error.
    gm.set_behavior(Behavior::Status {
        status: 400,
        body: r#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}]"#.into(),
        retry_after: None,
    });
    let r = t
        .chat(
            &json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("twin"));
    t.wait_for_log("gemini:auth_failed").await;
}

// ---- Bedrock with temporary credentials: IRSA (web identity) and Pod Identity ----

use twinroute::testkit::mock::AwsMock;

async fn temporary_setup(
    via: &str,
    ttl: std::time::Duration,
    good_token: bool,
) -> (MockProvider, Twinroute) {
    let bd = MockProvider::start("bd").await.unwrap();
    bd.set_aws(AwsMock {
        web_identity_token: "eyJhbGciOiJSUzI1NiJ9.projected-sa-token.sig".into(),
        role_arn: "arn:aws:iam::123456789012:role/twinroute-bedrock".into(),
        container_token: "pod-identity-authorization-token".into(),
        ttl,
    });
    bd.set_bedrock(BedrockAuth::Issued);
    let dir = std::env::temp_dir().join(format!("twinroute-aws-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(
        &token_file,
        if good_token {
            "eyJhbGciOiJSUzI1NiJ9.projected-sa-token.sig\n"
        } else {
            "not-the-token"
        },
    )
    .unwrap();
    let container_file = dir.join("container-token");
    std::fs::write(&container_file, "pod-identity-authorization-token").unwrap();
    let yaml = format!(
        "providers:\n  - {{name: bedrock, api: bedrock, aws_region: us-west-2, base_url: \"{}\"}}\nmodels:\n  - name: claude-haiku-4-5\n    offerings: [{{provider: bedrock, model: anthropic.claude-haiku-4-5-20251001-v1:0}}]\n",
        bd.base_url()
    );
    let (token_path, container_path, url) = (
        token_file.display().to_string(),
        container_file.display().to_string(),
        format!("{}/container-credentials", bd.base_url()),
    );
    let env: Vec<(&str, &str)> = match via {
        "irsa" => vec![
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/twinroute-bedrock",
            ),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path.as_str()),
            ("AWS_ENDPOINT_URL_STS", bd.base_url().leak()),
        ],
        _ => vec![
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", url.as_str()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                container_path.as_str(),
            ),
        ],
    };
    let t = Twinroute::start(&yaml, &env).await;
    (bd, t)
}

fn haiku() -> Value {
    json!({"model": "claude-haiku-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irsa_web_identity_keys_are_refreshed_before_they_expire_with_no_failed_request() {
    let (bd, t) = temporary_setup("irsa", std::time::Duration::from_secs(3), true).await;
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < std::time::Duration::from_millis(5000) {
        let r = client::post_json(&t.url("/v1/messages"), &[], &haiku())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert!(
        bd.aws_keys_issued() >= 2,
        "{} keys for {n} requests",
        bd.aws_keys_issued()
    );
    let req = bd
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/model/"))
        .unwrap();
    assert!(req
        .header("authorization")
        .unwrap()
        .contains("Credential=ASIAMOCK"));
    assert!(req
        .header("authorization")
        .unwrap()
        .contains("/us-west-2/bedrock/aws4_request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_container_credentials_sign_bedrock_requests() {
    let (bd, t) = temporary_setup("pod", std::time::Duration::from_secs(3600), true).await;
    let r = client::post_json(&t.url("/v1/messages"), &[], &haiku())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(bd.aws_keys_issued(), 1);
    let creds = bd.probes();
    let call = creds
        .iter()
        .find(|r| r.path == "/container-credentials")
        .expect("a container credentials call");
    assert_eq!(
        call.header("authorization"),
        Some("pod-identity-authorization-token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_identity_token_sts_refuses_takes_bedrock_out_with_its_reason() {
    let (bd, t) = temporary_setup("irsa", std::time::Duration::from_secs(3600), false).await;
    let r = client::post_json(&t.url("/v1/messages"), &[], &haiku())
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("bedrock: auth_failed"), "{}", r.text());
    // Nothing unsigned went to Bedrock.
    assert!(bd.requests().iter().all(|r| !r.path.starts_with("/model/")));
    t.wait_for_log("InvalidIdentityToken").await;
    let s = t.status().await;
    let p = s["providers"].as_array().unwrap()[0].clone();
    assert!(
        p["credential_error"]
            .as_str()
            .unwrap()
            .contains("InvalidIdentityToken"),
        "{p}"
    );
}

/// The must-show chain: a Claude request from the Anthropic SDK fails over anthropic (529) →
/// bedrock (throttled) → vertex, each hop authenticated its own way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_fails_over_anthropic_then_bedrock_then_vertex() {
    let an = MockProvider::start("an").await.unwrap();
    let bd = MockProvider::start("bd").await.unwrap();
    let gg = MockProvider::start("gg").await.unwrap();
    an.set_behavior(overloaded());
    bd.set_bedrock(BedrockAuth::SigV4 {
        access_key_id: AKID.into(),
        secret_access_key: SECRET.into(),
    });
    bd.set_behavior(Behavior::Status {
        status: 429,
        body: r#"{"message":"Too many requests, please wait before trying again."}"#.into(),
        retry_after: None,
    });
    let key = rsa_key();
    gg.set_google(GoogleMock {
        client_email: SA_EMAIL.into(),
        private_key_pem: key.clone(),
        token_ttl: std::time::Duration::from_secs(3600),
    });
    let (_dir, sa) = service_account_file("twinroute-chain", &key, &gg);
    let yaml = format!(
        "providers:\n  - {{name: anthropic, api: anthropic, base_url: \"{}\", probe: {{enabled: false}}}}\n  - {{name: bedrock, api: bedrock, aws_region: us-east-1, base_url: \"{}\"}}\n  - {{name: vertex, api: vertex, gcp_project: my-proj, gcp_location: global, base_url: \"{}\", gcp_credentials_file: \"{}\"}}\nmodels:\n  - name: claude-sonnet-4-5\n    offerings:\n      - {{provider: anthropic, model: claude-sonnet-4-5-20250929}}\n      - {{provider: bedrock, model: \"{BEDROCK_ID}\"}}\n      - {{provider: vertex, model: \"claude-sonnet-4-5@20250929\"}}\npolicy: {{backoff: {{base_ms: 1, max_ms: 5}}}}\n",
        an.base_url(),
        bd.base_url(),
        gg.base_url(),
        sa.display()
    );
    let t = Twinroute::start(
        &yaml,
        &[
            ("AWS_ACCESS_KEY_ID", AKID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("RUST_LOG", "trace"),
        ],
    )
    .await;
    let r = anthropic(&t, &[], &messages(false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-twinroute-provider"), Some("vertex"));
    // Vertex's access token (minted from the service account) is no env value the harness
    // scans for: look for it here.
    let vertex_auth = gg
        .requests()
        .iter()
        .find_map(|r| r.header("authorization").map(str::to_string))
        .expect("vertex got a bearer token");
    let token = vertex_auth.trim_start_matches("Bearer ");
    assert!(token.len() >= 16);
    assert!(
        !t.logs().contains(token),
        "the Vertex access token reached the log"
    );
    assert_eq!(r.header("x-twinroute-attempts"), Some("3"));
    assert_eq!(r.json()["content"][0]["text"], "hello from gg");
    // Each hop got a request it could authenticate: the mock Bedrock only answers 429 to a
    // valid signature (it would say 403 otherwise).
    assert_eq!(an.request_count(), 1);
    assert_eq!(
        bd.requests()
            .iter()
            .filter(|r| r.path.starts_with("/model/"))
            .count(),
        1
    );
    let logs = t.wait_for_log("bedrock:status_429").await;
    assert!(logs.contains("anthropic:status_5xx"), "{logs}");
    assert!(gg
        .requests()
        .iter()
        .any(|r| r.path == "/v1/projects/my-proj/locations/global/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"));
    // No token, signature or key reaches the log (at debug level, as the tests run).
    let logs = t.logs();
    for leak in [
        "ya29.",
        "Signature=",
        "AWS4-HMAC-SHA256",
        "BEGIN PRIVATE KEY",
        "assertion=",
    ] {
        assert!(!logs.contains(leak), "{leak} in the log");
    }
}

/// `check --live` tries each cloud credential once: a Vertex token is minted, an STS refusal
/// is reported, and the model with no usable twin fails the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_live_tries_each_cloud_credential_once() {
    let gg = MockProvider::start("gg").await.unwrap();
    let key = rsa_key();
    gg.set_google(GoogleMock {
        client_email: SA_EMAIL.into(),
        private_key_pem: key.clone(),
        token_ttl: std::time::Duration::from_secs(3600),
    });
    gg.set_aws(AwsMock {
        web_identity_token: "the-right-token".into(),
        role_arn: "arn:aws:iam::1:role/r".into(),
        container_token: "x".into(),
        ttl: std::time::Duration::from_secs(3600),
    });
    let (dir, sa) = service_account_file("twinroute-live", &key, &gg);
    let token_file = dir.join("token");
    std::fs::write(&token_file, "a-wrong-token").unwrap();
    let cfg = dir.join("twinroute.yaml");
    std::fs::write(
        &cfg,
        format!(
            "providers:\n  - {{name: vertex, api: vertex, gcp_project: p, gcp_location: us-east5, base_url: \"{0}\", gcp_credentials_file: \"{1}\"}}\n  - {{name: bedrock, api: bedrock, aws_region: us-east-1, base_url: \"{0}\"}}\nmodels:\n  - name: claude-on-vertex\n    offerings: [{{provider: vertex, model: \"claude-sonnet-4-5@20250929\"}}]\n  - name: claude-on-bedrock\n    offerings: [{{provider: bedrock, model: anthropic.claude-x}}]\n",
            gg.base_url(),
            sa.display()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_twinroute"))
            .args(["check", "--live", "--config"])
            .arg(&cfg)
            .env("AWS_ROLE_ARN", "arn:aws:iam::1:role/r")
            .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
            .env("AWS_ENDPOINT_URL_STS", gg.base_url())
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_BEARER_TOKEN_BEDROCK")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("vertex         credential: credential ok (minted, valid 3600 s"),
        "{stdout}"
    );
    assert!(stdout.contains("InvalidIdentityToken"), "{stdout}");
    // claude-on-bedrock has no usable twin: exit 2.
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(!stdout.contains("ya29."), "a token was printed");
}

/// Gemini on Vertex through its OpenAI-compatible endpoint (`vertex_api: openai`): same tokens,
/// chat completions as they are, Anthropic clients through translation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_on_vertex_through_the_openai_compatible_endpoint() {
    let gg = MockProvider::start("gg").await.unwrap();
    let key = rsa_key();
    gg.set_google(GoogleMock {
        client_email: SA_EMAIL.into(),
        private_key_pem: key.clone(),
        token_ttl: std::time::Duration::from_secs(3600),
    });
    let (_dir, sa) = service_account_file("twinroute-vgem", &key, &gg);
    let yaml = format!(
        "providers:\n  - {{name: vertex-gemini, api: vertex, vertex_api: openai, gcp_project: my-proj, gcp_location: us-central1, base_url: \"{}\", gcp_credentials_file: \"{}\"}}\nmodels:\n  - name: gemini-2.5-flash\n    offerings: [{{provider: vertex-gemini, model: google/gemini-2.5-flash}}]\n",
        gg.base_url(),
        sa.display()
    );
    let t = Twinroute::start(&yaml, &[]).await;
    let r = t
        .chat(
            &json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "hello from gg"
    );
    let call = gg
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/endpoints/openapi/"))
        .unwrap();
    assert_eq!(
        call.path,
        "/v1/projects/my-proj/locations/us-central1/endpoints/openapi/chat/completions"
    );
    assert_eq!(call.json()["model"], "google/gemini-2.5-flash");
    assert!(call
        .header("authorization")
        .unwrap()
        .starts_with("Bearer ya29.mock-"));
    // An Anthropic client of Gemini, translated.
    let r = client::post_json(
        &t.url("/v1/messages"),
        &[],
        &json!({"model": "gemini-2.5-flash", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-twinroute-translated"),
        Some("anthropic->openai")
    );
    assert_eq!(r.json()["content"][0]["text"], "hello from gg");
}
