#![no_main]
//! Fuzz target `block_index`: see `mover_lib::fuzzing::block_index` for the input layout and
//! what it checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mover_lib::fuzzing::block_index(data));
