#![no_main]
// The property is in twinroute::testkit::fuzzing so the corpus replay test checks the same thing.
libfuzzer_sys::fuzz_target!(|data: &[u8]| twinroute::testkit::fuzzing::sse_scan(data));
