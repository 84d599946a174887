//! The docs match the code: every `src/...`, `tests/...`, `scripts/...`, `benches/...`, `k8s/...`,
//! `helm/...` and `conf/...` path README.md, ARCHITECTURE.md and k8s/README.md name exists, every
//! fenced shell block parses (`bash -n`), and the README lists every failover reason.

use std::path::Path;

const DOCS: [&str; 3] = ["README.md", "ARCHITECTURE.md", "k8s/README.md"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(doc: &str) -> String {
    std::fs::read_to_string(root().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

/// Paths in backticks that start with one of the repository's directories.
fn named_paths(text: &str) -> Vec<String> {
    const DIRS: [&str; 8] = [
        "src/", "tests/", "scripts/", "benches/", "k8s/", "helm/", "conf/", "fuzz/",
    ];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| DIRS.iter().any(|d| s.starts_with(d)))
        // A path is the first word (`bash scripts/x.sh` is caught by the shell check instead).
        .filter_map(|s| s.split_whitespace().next())
        .map(|s| s.trim_end_matches([',', '.', ':', ')']).to_string())
        // Globs and placeholders name no one file.
        .filter(|s| !s.contains(['*', '<', '{', '…']) && !s.contains("..."))
        .collect()
}

#[test]
fn every_path_the_docs_name_exists() {
    let mut missing = Vec::new();
    for doc in DOCS {
        let text = read(doc);
        for p in named_paths(&text) {
            if !root().join(&p).exists() {
                missing.push(format!("{doc}: {p}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_shell_block_in_the_docs_parses() {
    for doc in DOCS {
        let text = read(doc);
        let mut in_block = false;
        let mut block = String::new();
        let mut n = 0;
        for line in text.lines() {
            let trimmed = line.trim_start();
            if !in_block && (trimmed == "```sh" || trimmed == "```bash") {
                in_block = true;
                block.clear();
                continue;
            }
            if in_block && trimmed == "```" {
                in_block = false;
                n += 1;
                let out = std::process::Command::new("bash")
                    .arg("-n")
                    .arg("-c")
                    .arg(&block)
                    .output()
                    .expect("run bash");
                assert!(
                    out.status.success(),
                    "{doc}: shell block {n} does not parse: {}\n{block}",
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            }
            if in_block {
                block.push_str(line);
                block.push('\n');
            }
        }
        assert!(!in_block, "{doc}: a shell block is never closed");
        if doc == "README.md" {
            assert!(n >= 5, "README.md: only {n} shell blocks found");
        }
    }
}

#[test]
fn the_readme_names_every_failover_reason() {
    let text = read("README.md");
    let at = text
        .find("Failover reasons have one vocabulary everywhere")
        .expect("the vocabulary paragraph");
    let para = &text[at..at + text[at..].find("\n\n").unwrap_or(text.len() - at)];
    for r in twinroute::model::outcome::FailoverReason::ALL {
        assert!(
            para.contains(&format!("`{}`", r.as_str())),
            "README's vocabulary lacks {}",
            r.as_str()
        );
    }
}

#[test]
fn the_readmes_commands_are_the_ones_ci_runs() {
    let readme = read("README.md");
    let ci = read(".ci/run");
    // The test command README gives is the one CI runs, and so is the lint.
    assert!(ci.contains("cargo test --locked --lib --bins --tests"));
    assert!(readme.contains("cargo test --locked --lib --bins --tests"));
    assert!(ci.contains("cargo clippy --locked --all-targets -- -D warnings"));
    assert!(readme.contains("cargo clippy --locked --all-targets -- -D warnings"));
    assert!(
        !readme.contains("--all-targets -D warnings"),
        "clippy takes -D after --"
    );
}
