#![no_main]
//! Fuzz target `frame`: see `mover_lib::fuzzing::frame` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_lib::fuzzing::frame(data));
