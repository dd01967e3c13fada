#![no_main]
//! Fuzz target `patch`: see `mover_lib::fuzzing::patch` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_lib::fuzzing::patch(data));
