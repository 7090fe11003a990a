#![allow(clippy::unwrap_used)]
//! The library's integration tests in one binary (one process, one wgpu device and one set of
//! compiled kernels for all of them; one link instead of six). `row_blocks` (it changes the
//! process's environment) and `full_size_checkpoint` (it needs most of the memory) run alone.

#[path = "../common/mod.rs"]
mod common;

mod awq_checkpoint;
mod engine;
mod generation;
mod model_parity;
mod panics;
mod processor_parity;
mod quantized_model;
mod shapes_accuracy;
mod weights_errors;
