#![no_main]
// The plugin's `volume_record` harness (plugin/src/fuzz_harness.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| daffe_fuzz::harness::volume_record(data));
