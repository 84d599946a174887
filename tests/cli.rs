//! The command line contract: `check`, `demo`, `--version`, `--help`, exit codes.

use std::process::Command;

fn twinroute() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twinroute"))
}

const SHIPPED_KEYS: &[&str] = &[
    "OPENAI_API_KEY",
    "OPENROUTER_API_KEY",
    "GEMINI_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "TOGETHER_API_KEY",
    "FIREWORKS_API_KEY",
    "DEEPINFRA_API_KEY",
    "GROQ_API_KEY",
    "CEREBRAS_API_KEY",
    "SAMBANOVA_API_KEY",
    "NEBIUS_API_KEY",
    "NOVITA_API_KEY",
    // The bedrock provider: two variables, one provider.
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
];

#[test]
fn check_prints_the_routing_table_of_the_shipped_catalog() {
    let mut cmd = twinroute();
    cmd.args([
        "check",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/conf/twinroute.yaml"),
    ]);
    for k in SHIPPED_KEYS {
        cmd.env(k, "sk-check-secret-value");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("config OK"));
    assert!(
        stdout.contains("POST /openai/v1/chat/completions"),
        "groq path: {stdout}"
    );
    assert!(stdout
        .contains("POST /openai/deployments/gpt-4.1-mini/chat/completions?api-version=2024-10-21"));
    assert!(stdout.contains("POST /v1/messages"));
    assert!(stdout.contains("$GROQ_API_KEY (set)"));
    assert!(
        !stdout.contains("sk-check-secret-value"),
        "check must not print keys"
    );
}

#[test]
fn check_fails_with_the_key_path_and_reason() {
    let dir = std::env::temp_dir().join(format!("twinroute-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("providers:\n  - {name: a, api: openai, base_url: \"http://127.0.0.1:1\", colour: red}\n", "providers[0]", "colour"),
        ("providers:\n  - {name: a, api: gemini, base_url: \"http://127.0.0.1:1\"}\n", "providers[0].api", "gemini"),
        ("providers:\n  - {name: a, api: openai, base_url: \"http://127.0.0.1:1\", api_key_env: TWINROUTE_SURELY_UNSET, required: true}\n", "providers[0].api_key_env", "TWINROUTE_SURELY_UNSET"),
        ("providers:\n  - {name: a, api: openai, base_url: \"http://127.0.0.1:1\"}\nmodels:\n  - {name: m, offerings: [{provider: b, model: x}]}\n", "models[0].offerings[0].provider", "\"b\""),
        // A syntax error names its line and what is wrong (serde-saphyr's wording).
        ("providers: [\n", "line 1", "unclosed bracket"),
    ];
    for (i, (yaml, path, reason)) in cases.iter().enumerate() {
        let f = dir.join(format!("bad{i}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        let out = twinroute()
            .args(["check", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {stderr}");
        assert!(
            stderr.contains(path) && stderr.contains(reason),
            "case {i}: {stderr}"
        );
    }
    let out = twinroute()
        .args(["check", "--config", "/nonexistent/twinroute.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // `run` refuses a bad config the same way, before binding anything.
    let out = twinroute()
        .args(["run", "--config"])
        .arg(dir.join("bad1.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn version_and_help() {
    let out = twinroute().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = twinroute().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["run", "check", "demo"] {
        assert!(help.contains(sub), "{help}");
    }
}

#[test]
fn demo_runs_without_keys_and_shows_failover() {
    let out = twinroute()
        .arg("demo")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("status 200  provider=beta  model=Meta-Llama-3.3-70B-Instruct  attempts=2"),
        "{stdout}"
    );
    assert!(stdout.contains("beta's own key (injected)"), "{stdout}");
    assert!(stdout.contains("demo finished"));
}

/// `check` on the shipped config with no credential variable set, whatever the environment has.
fn shipped_check_without_keys() -> Command {
    let mut cmd = twinroute();
    cmd.args([
        "check",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/conf/twinroute.yaml"),
    ]);
    for k in SHIPPED_KEYS.iter().chain(&[
        "AWS_BEARER_TOKEN_BEDROCK",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]) {
        cmd.env_remove(k);
    }
    cmd
}

/// A new user's first run: providers whose keys are not set are listed all at once and left out
/// of rotation; `check --strict` turns that into a failure.
#[test]
fn check_lists_every_provider_without_a_credential_and_strict_fails() {
    let mut cmd = shipped_check_without_keys();
    cmd.env("GROQ_API_KEY", "sk-check-secret-value");
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // Every provider but groq; the two AWS variables belong to one provider.
    let missing = SHIPPED_KEYS.len() - 1 - 1;
    assert!(
        stdout.contains(&format!(
            "{missing} provider(s) without a credential, left out of rotation"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("openai (OPENAI_API_KEY is not set)"),
        "{stdout}"
    );
    assert!(stdout.contains("$GROQ_API_KEY (set)"));
    let mut strict = twinroute();
    strict.args([
        "check",
        "--strict",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/conf/twinroute.yaml"),
    ]);
    for k in SHIPPED_KEYS {
        strict.env_remove(k);
    }
    let out = strict.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ANTHROPIC_API_KEY is not set"));
}

/// The configs shipped for Kubernetes (the raw manifests' ConfigMap, the chart's default
/// `config`) load: a key the binary does not know would crash-loop every injected sidecar.
#[test]
fn the_kubernetes_configs_load() {
    let root = env!("CARGO_MANIFEST_DIR");
    let configmap: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{root}/k8s/configmap.yaml")).unwrap(),
    )
    .unwrap();
    let raw = configmap["data"]["twinroute.yaml"]
        .as_str()
        .expect("k8s/configmap.yaml has data.twinroute.yaml")
        .to_string();
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{root}/helm/twinroute/values.yaml")).unwrap(),
    )
    .unwrap();
    let chart = serde_yaml::to_string(&values["config"]).unwrap();
    for (name, text) in [("k8s/configmap.yaml", raw), ("helm values config", chart)] {
        assert!(text.contains("state_dir: /var/lib/twinroute"), "{name}");
        let path = std::env::temp_dir().join(format!(
            "twinroute-k8s-config-{}-{}.yaml",
            std::process::id(),
            name.len()
        ));
        std::fs::write(&path, &text).unwrap();
        let out = twinroute()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A data-plane port another process holds is an error at start (exit 1, naming the address),
/// not a process that retries the bind while the other process answers its readiness check.
#[test]
fn a_port_in_use_fails_fast() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = free.local_addr().unwrap();
    drop(free);
    let path =
        std::env::temp_dir().join(format!("twinroute-port-in-use-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        format!("listen: \"{addr}\"\nadmin_listen: \"{admin}\"\nproviders:\n  - {{name: a, api: openai, base_url: \"http://127.0.0.1:9\"}}\nmodels:\n  - name: m\n    offerings: [{{provider: a, model: x}}]\n"),
    )
    .unwrap();
    let out = twinroute()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// A newcomer's `check` on the shipped config with no key set: no false "without a key" warning
/// (those providers have a key variable, unset, and are left out), and each model says why it
/// has no candidate, naming the unset variables, under each client route; with OPENAI_API_KEY
/// set, the OpenAI models list their candidates.
#[test]
fn check_without_keys_names_the_unset_variables_per_model() {
    let run = |openai: bool| {
        let mut cmd = shipped_check_without_keys();
        if openai {
            cmd.env("OPENAI_API_KEY", "sk-check-secret-value");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let none = run(false);
    assert!(!none.contains("without a key"), "{none}");
    // Each model's block: the client route, then why nothing can serve it.
    let block = |text: &str, model: &str| -> String {
        let mut lines = text
            .lines()
            .skip_while(|l| !l.starts_with(&format!("  {model} ")));
        let head = lines
            .next()
            .unwrap_or_else(|| panic!("no block for {model}:\n{text}"));
        // The model's lines are indented deeper than its own.
        let body: Vec<&str> = lines.take_while(|l| l.starts_with("    ")).collect();
        format!("{head}\n{}", body.join("\n"))
    };
    let gpt_oss = block(&none, "gpt-oss-120b");
    assert!(gpt_oss.contains("POST /v1/chat/completions:"), "{gpt_oss}");
    assert!(gpt_oss.contains("no candidate:"), "{gpt_oss}");
    assert!(gpt_oss.contains("GROQ_API_KEY"), "{gpt_oss}");
    assert!(gpt_oss.contains("TOGETHER_API_KEY"), "{gpt_oss}");
    let mini = block(&none, "gpt-4.1-mini");
    assert!(mini.contains("OPENAI_API_KEY"), "{mini}");
    assert!(!mini.contains("1. "), "{mini}");

    let with = run(true);
    let mini = block(&with, "gpt-4.1-mini");
    assert!(mini.contains("1. openai"), "{mini}");
    // One numbered list per client route, each from 1, under its route's line.
    assert!(
        mini.contains("POST /v1/chat/completions:\n      1. openai"),
        "{mini}"
    );
    assert!(
        mini.contains("POST /v1/messages:\n      1. openai"),
        "{mini}"
    );
    assert!(!with.contains("sk-check-secret-value"));
}
