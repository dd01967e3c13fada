#![no_main]
// The plugin's `catalogue_record` harness (plugin/src/fuzz_harness.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| daffe_fuzz::harness::catalogue_record(data));
