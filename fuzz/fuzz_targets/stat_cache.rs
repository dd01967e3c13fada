#![no_main]
//! Fuzz target `stat_cache`: see `mover_lib::fuzzing::stat_cache` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_lib::fuzzing::stat_cache(data));
