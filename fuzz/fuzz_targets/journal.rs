#![no_main]
//! Fuzz target `journal`: see `mover::fuzzing::journal` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover::fuzzing::journal(data));
