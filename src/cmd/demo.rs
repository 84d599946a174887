//! `twinroute demo`: the proxy on built-in mock providers, one of them failing, with a few
//! requests sent through it and what happened printed. No API key, no network beyond loopback.

use crate::config;
use crate::serve::server;
use crate::testkit::client;
use crate::testkit::mock::{Behavior, MockProvider};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The demo's config: `conf/demo.yaml` with the mocks' and listeners' real ports put in.
const DEMO_YAML: &str = include_str!("../../conf/demo.yaml");

fn demo_config(
    alpha: &MockProvider,
    beta: &MockProvider,
    claude: &MockProvider,
    listen: u16,
    admin: u16,
) -> String {
    DEMO_YAML
        .replace("127.0.0.1:18081", &alpha.addr.to_string())
        .replace("127.0.0.1:18082", &beta.addr.to_string())
        .replace("127.0.0.1:18083", &claude.addr.to_string())
        .replace("127.0.0.1:4000", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{admin}"))
}

fn show(title: &str, r: &client::Reply) {
    println!("\n== {title}");
    println!(
        "   status {}  provider={}  model={}  attempts={}",
        r.status,
        r.header("x-twinroute-provider").unwrap_or("-"),
        r.header("x-twinroute-model").unwrap_or("-"),
        r.header("x-twinroute-attempts").unwrap_or("-"),
    );
    let text = r.text();
    let shown: String = text.chars().take(220).collect();
    println!(
        "   body: {}{}",
        shown.trim_end(),
        if text.chars().count() > 220 {
            " …"
        } else {
            ""
        }
    );
}

/// Run the demo; returns the process exit code.
pub fn run() -> i32 {
    match run_inner() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("demo failed: {e}");
            1
        }
    }
}

fn run_inner() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (alpha, beta, claude) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                MockProvider::start("alpha").await?,
                MockProvider::start("beta").await?,
                MockProvider::start("claude").await?,
            ))
        })
        .map_err(|e| e.to_string())?;
    alpha.set_behavior(Behavior::Status {
        status: 503,
        body: r#"{"error":{"message":"alpha is overloaded","type":"server_error"}}"#.into(),
        retry_after: None,
    });
    let listen = free_port().map_err(|e| e.to_string())?;
    let admin = free_port().map_err(|e| e.to_string())?;
    let env: BTreeMap<String, String> = [
        ("DEMO_ALPHA_KEY", "demo-key-alpha"),
        ("DEMO_BETA_KEY", "demo-key-beta"),
        ("DEMO_CLAUDE_KEY", "demo-key-claude"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = config::parse(&demo_config(&alpha, &beta, &claude, listen, admin), &env)
        .map_err(|e| e.to_string())?;
    let (server, shared) = server::build(cfg, None)?;
    std::thread::spawn(move || server.run_forever());

    println!("twinroute demo: three mock providers on loopback");
    println!(
        "   alpha  (openai, us) {}  <- answers every request with 503",
        alpha.base_url()
    );
    println!("   beta   (openai, eu) {}", beta.base_url());
    println!("   claude (anthropic)  {}", claude.base_url());
    println!("   twinroute data plane http://127.0.0.1:{listen}, admin http://127.0.0.1:{admin}");

    rt.block_on(async {
        for _ in 0..500 {
            if shared.ready.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !shared.ready.load(Ordering::Relaxed) {
            return Err("twinroute did not become ready".to_string());
        }
        let base = format!("http://127.0.0.1:{listen}");
        let chat = json!({"model": "llama3.3-70b", "messages": [{"role": "user", "content": "Say hello"}]});
        let r = client::post_json(&format!("{base}/v1/chat/completions"), &[("authorization", "Bearer app-key-never-forwarded")], &chat).await?;
        show("chat completion for alias llama3.3-70b (alpha fails with 503, twinroute fails over)", &r);
        if let Some(seen) = beta.requests().last() {
            println!(
                "   beta received: POST {}  model={}  authorization={}",
                seen.path,
                seen.json()["model"],
                if seen.header("authorization") == Some("Bearer demo-key-beta") { "beta's own key (injected)" } else { "UNEXPECTED" }
            );
        }

        let mut stream_req = chat.clone();
        stream_req["stream"] = json!(true);
        let r = client::post_json(&format!("{base}/v1/chat/completions"), &[], &stream_req).await?;
        show("streaming chat completion (SSE passes through chunk by chunk)", &r);
        println!(
            "   {} chunks, first after {:?}, last after {:?}",
            r.chunks.len(),
            r.chunks.first().map(|c| c.0).unwrap_or_default(),
            r.chunks.last().map(|c| c.0).unwrap_or_default()
        );

        let msg = json!({"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]});
        let r = client::post_json(&format!("{base}/v1/messages"), &[("x-api-key", "app-key"), ("anthropic-version", "2023-06-01")], &msg).await?;
        show("Anthropic /v1/messages", &r);

        let r = client::post_json(&format!("{base}/v1/chat/completions"), &[("x-twinroute-provider", "alpha")], &chat).await?;
        show("pinned to alpha with x-twinroute-provider (no failover, so the client sees the outage)", &r);

        let r = client::post_json(&format!("{base}/v1/chat/completions"), &[], &json!({"model": "gpt-9", "messages": []})).await?;
        show("unknown model (404 in OpenAI's error shape; no provider is called)", &r);

        let r = client::send("POST", &format!("{base}/v1/chat/completions"), &[("content-type", "application/json")], "{\"model\": \"llama3.3-70b\", \"messages\": [").await?;
        show("a bad request: a body that is not JSON (400; no provider is called)", &r);

        println!("\n== what each provider received");
        for (name, m) in [("alpha", &alpha), ("beta", &beta), ("claude", &claude)] {
            let seen = m.requests();
            let models: Vec<String> = seen.iter().map(|r| format!("{} {}", r.path, r.json()["model"])).collect();
            println!("   {name:<6} {} request(s): {}", seen.len(), if models.is_empty() { "-".to_string() } else { models.join(", ") });
        }

        let status = client::get(&format!("http://127.0.0.1:{admin}/status")).await?;
        println!("\n== admin /status (providers)");
        for p in status.json()["providers"].as_array().cloned().unwrap_or_default() {
            println!("   {} healthy={} breaker={} last_error={}", p["name"], p["healthy"], p["breaker"], p["last_error"]);
        }
        let metrics = client::get(&format!("http://127.0.0.1:{admin}/metrics")).await?;
        println!("\n== admin /metrics (failovers)");
        for line in metrics.text().lines().filter(|l| l.starts_with("twinroute_failovers_total")) {
            println!("   {line}");
        }
        println!("\ndemo finished: alpha was down the whole time; only the request pinned to it saw the outage, every other one was answered by a twin.");
        Ok(())
    })
}
