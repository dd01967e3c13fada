#![no_main]
//! Fuzz target `patch`: see `mover::fuzzing::patch` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover::fuzzing::patch(data));
