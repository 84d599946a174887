//! Replays every saved fuzz input (fuzz/corpus/<target>/) through the property its cargo-fuzz
//! target checks, so the corpus and every crash once found are regression tests on stable Rust.
//! Growing the corpus: scripts/fuzz.sh (needs cargo-fuzz; see README "Fuzzing").

use std::path::Path;

fn replay(target: &str, property: fn(&[u8]), at_least: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= at_least,
        "{target}: {} corpus inputs, expected at least {at_least}",
        inputs.len()
    );
    for path in &inputs {
        let data = std::fs::read(path).expect("read corpus input");
        let outcome = std::panic::catch_unwind(|| property(&data));
        assert!(
            outcome.is_ok(),
            "{target}: property failed on {}",
            path.display()
        );
    }
    println!("{target}: {} corpus inputs replayed", inputs.len());
}

#[test]
fn body_rewrite_corpus() {
    replay(
        "body_rewrite",
        twinroute::testkit::fuzzing::body_rewrite,
        10,
    );
}

#[test]
fn header_scan_corpus() {
    replay("header_scan", twinroute::testkit::fuzzing::header_scan, 7);
}

#[test]
fn config_load_corpus() {
    replay("config_load", twinroute::testkit::fuzzing::config_load, 3);
}

#[test]
fn sse_scan_corpus() {
    replay("sse_scan", twinroute::testkit::fuzzing::sse_scan, 10);
}

#[test]
fn job_decode_corpus() {
    replay("job_decode", twinroute::testkit::fuzzing::job_decode, 5);
}
