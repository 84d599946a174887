//! The chart's alerts against the real `promtool` (Debian's `prometheus` package, installed by
//! scripts/setup.sh): the rule groups the PrometheusRule renders (helm/twinroute/files/alerts.yaml
//! with values.yaml's default thresholds, substituted as Helm's `tpl` would) pass
//! `promtool check rules`, and `promtool test rules` (tests/alerts/alerts_test.yaml) fires each
//! alert on series that should fire it and on no others.

use std::process::Command;

fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

/// files/alerts.yaml as the chart renders it with its default values.
fn rendered_rules() -> String {
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{}/helm/twinroute/values.yaml", root())).unwrap(),
    )
    .unwrap();
    let mut text =
        std::fs::read_to_string(format!("{}/helm/twinroute/files/alerts.yaml", root())).unwrap();
    let rule_values = values["prometheusRule"].as_mapping().unwrap();
    for (k, v) in rule_values {
        let k = k.as_str().unwrap();
        let v = match v {
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::String(s) => s.clone(),
            _ => continue,
        };
        text = text.replace(&format!("{{{{ .Values.prometheusRule.{k} }}}}"), &v);
    }
    assert!(
        !text.contains(".Values."),
        "a threshold with no default in values.yaml"
    );
    // Helm's escape for Prometheus' own templates: {{`{{ $labels.x }}`}} renders {{ $labels.x }}.
    text.replace("{{`", "").replace("`}}", "")
}

fn promtool(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (scripts/setup.sh installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_charts_alerts_pass_promtool_check_and_unit_tests() {
    let dir = std::env::temp_dir().join(format!("twinroute-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.yaml"), rendered_rules()).unwrap();
    std::fs::copy(
        format!("{}/tests/alerts/alerts_test.yaml", root()),
        dir.join("alerts_test.yaml"),
    )
    .unwrap();
    let checked = promtool(&dir, &["check", "rules", "rules.yaml"]);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tested = promtool(&dir, &["test", "rules", "alerts_test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    let _ = std::fs::remove_dir_all(&dir);
}
