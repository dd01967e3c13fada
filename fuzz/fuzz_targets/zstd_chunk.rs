#![no_main]
//! Fuzz target `zstd_chunk`: see `mover_lib::fuzzing::zstd_chunk` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_lib::fuzzing::zstd_chunk(data));
