//! Storage profiles for daffe volumes (pure code, no I/O).
