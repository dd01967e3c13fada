//! Helpers shared by the end-to-end tests, so each test reads like an operator's steps.

pub mod fault_proxy;
pub mod moto;
