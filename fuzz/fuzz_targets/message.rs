#![no_main]
//! Fuzz target `message`: see `mover_lib::fuzzing::message` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_lib::fuzzing::message(data));
