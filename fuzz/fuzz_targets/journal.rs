#![no_main]
//! Fuzz target `journal`: see `mover_lib::fuzzing::journal` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_lib::fuzzing::journal(data));
