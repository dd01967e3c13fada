#![no_main]
//! Fuzz target `manifest`: see `mover::fuzzing::manifest` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover::fuzzing::manifest(data));
