#![no_main]
//! Fuzz target `manifest_delta`: see `mover_lib::fuzzing::manifest_delta` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_lib::fuzzing::manifest_delta(data));
