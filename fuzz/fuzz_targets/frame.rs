#![no_main]
//! Fuzz target `frame`: see `mover::fuzzing::frame` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover::fuzzing::frame(data));
