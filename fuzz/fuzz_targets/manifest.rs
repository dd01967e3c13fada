#![no_main]
//! Fuzz target `manifest`: see `mover_lib::fuzzing::manifest` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_lib::fuzzing::manifest(data));
