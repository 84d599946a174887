//! Black-box harness: starts the real `twinroute` binary with a generated config against mock
//! providers on loopback, and captures everything it prints.

#![allow(dead_code, unused_imports)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use twinroute::testkit::client;

pub use twinroute::testkit::mock::{refused_addr, Behavior, MockProvider};

pub mod redis;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

pub struct Twinroute {
    child: Child,
    /// Values of the env vars given at start (keys, tokens): none may appear in the output.
    secrets: Vec<String>,
    pub base: String,
    pub admin: String,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "twinroute-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1_000_003 + free_port() as u64
}

impl Twinroute {
    /// Start twinroute with `body` (providers/models/policy YAML); listen addresses are added.
    pub async fn start(body: &str, env: &[(&str, &str)]) -> Twinroute {
        // Ports come from bind(0)-and-release, so another test can take one before twinroute
        // binds it; then our process exits (and another's admin port may even answer our
        // readiness check). Detect that and start again on new ports.
        let mut last_log = String::new();
        for _ in 0..3 {
            match Self::start_once(body, env).await {
                Ok(t) => return t,
                Err(log) => last_log = log,
            }
        }
        panic!("twinroute did not start in three tries; last log:\n{last_log}");
    }

    async fn start_once(body: &str, env: &[(&str, &str)]) -> Result<Twinroute, String> {
        let dir = scratch_dir();
        let listen = free_port();
        let admin = free_port();
        let grace = if body.contains("grace_period_s:") {
            ""
        } else {
            "grace_period_s: 1\n"
        };
        let yaml = format!("listen: \"127.0.0.1:{listen}\"\nadmin_listen: \"127.0.0.1:{admin}\"\nthreads: 2\n{grace}{body}");
        let config_path = dir.join("twinroute.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let log_path = dir.join("twinroute.log");
        let log = std::fs::File::create(&log_path).expect("create log");
        // TWINROUTE_TEST_BIN runs the tests against another build (an older commit's, to show a
        // new test fails there).
        let bin = std::env::var("TWINROUTE_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_twinroute").to_string());
        let mut cmd = Command::new(bin);
        // `RUST_LOG` in `env` (say, `trace`) overrides the default debug: the secret scan on drop
        // then holds at that level too.
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn twinroute");
        let t = Twinroute {
            child,
            // Every value given is a secret, but for the few that only say where or which:
            // a region, a metadata server's address.
            secrets: env
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        *k,
                        "GCE_METADATA_HOST" | "AWS_REGION" | "AWS_DEFAULT_REGION" | "RUST_LOG"
                    )
                })
                .map(|(_, v)| v.to_string())
                .filter(|v| v.len() >= 6)
                .collect(),
            base: format!("http://127.0.0.1:{listen}"),
            admin: format!("http://127.0.0.1:{admin}"),
            log_path,
            config_path,
        };
        let mut t = t;
        for _ in 0..500 {
            if t.child.try_wait().ok().flatten().is_some() {
                return Err(t.logs());
            }
            if let Ok(r) = client::get(&format!("{}/readyz", t.admin)).await {
                if r.status == 200 {
                    // Ours only if our process is still alive a moment later (a failed bind
                    // exits at once).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if t.child.try_wait().ok().flatten().is_some() {
                        return Err(t.logs());
                    }
                    // Pingora keeps retrying a bind that failed, while another process's
                    // socket on that port answers the readiness check: not ours, start again.
                    if t.logs().contains("is in use, will try again") {
                        return Err(t.logs());
                    }
                    return Ok(t);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("twinroute did not become ready; log:\n{}", t.logs());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log once it contains `needle` (the access line is written just after the response).
    pub async fn wait_for_log(&self, needle: &str) -> String {
        for _ in 0..100 {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("log never contained {needle:?}:\n{}", self.logs())
    }

    pub async fn chat(&self, body: &serde_json::Value, headers: &[(&str, &str)]) -> client::Reply {
        client::post_json(&self.url("/v1/chat/completions"), headers, body)
            .await
            .expect("request reached twinroute")
    }

    pub async fn status(&self) -> serde_json::Value {
        client::get(&format!("{}/status", self.admin))
            .await
            .expect("status")
            .json()
    }

    pub async fn metrics(&self) -> String {
        client::get(&format!("{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (`TERM`, `HUP`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Rewrite the config file, keeping the listeners this instance was started with.
    pub fn rewrite_config(&self, body: &str) {
        let old = std::fs::read_to_string(&self.config_path).expect("read config");
        let head: String = old
            .lines()
            .take_while(|l| !l.starts_with("providers:"))
            .filter(|l| {
                l.starts_with("listen:")
                    || l.starts_with("admin_listen:")
                    || l.starts_with("threads:")
                    || l.starts_with("grace_period_s:")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&self.config_path, format!("{head}{body}")).expect("write config");
    }
}

impl Drop for Twinroute {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Every test doubles as a leak check: no key or token given to the process may appear
        // anywhere in what it printed.
        let logs = self.logs();
        for s in &self.secrets {
            if logs.contains(s.as_str()) && !std::thread::panicking() {
                panic!("a secret value appeared in twinroute's output");
            }
        }
    }
}

/// A provider entry for the YAML, with short timeouts so failure tests stay fast.
pub fn provider(name: &str, base_url: &str, extra: &str) -> String {
    format!(
        "  - {{name: {name}, api: openai, base_url: \"{base_url}\", timeouts: {{connect_ms: 300, first_byte_ms: 400}}, probe: {{enabled: false}}{extra}}}\n"
    )
}

/// How many completion requests `m` received for `model` (the ID on the wire).
pub fn count_model(m: &MockProvider, model: &str) -> usize {
    m.requests()
        .iter()
        .filter(|r| r.json()["model"] == model)
        .count()
}

pub fn chat_body(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}
