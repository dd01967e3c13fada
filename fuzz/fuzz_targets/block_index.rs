#![no_main]
//! Fuzz target `block_index`: see `mover::fuzzing::block_index` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover::fuzzing::block_index(data));
