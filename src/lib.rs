//! vit-tch: the NYU Deep Learning HW4 Vision Transformer on tch-rs (libtorch).
//!
//! `model` holds the notebook's four modules; `info`, `train`, `eval`, `predict`, `bench`,
//! `plot` and `attention` each implement the `vit` subcommand of their name, and `data`
//! both `download` and `data`; `cli` declares them all; `runtime` sets libtorch up for the
//! process (threads, error reports).
//!
//! Shared by the subcommands:
//! - `checkpoint`: model files (safetensors, with timm's tensor names and the config);
//! - `optim`: AdamW, gradient clipping and the learning-rate schedule;
//! - `ffi`: the libtorch C++ APIs tch leaves out (bf16 autocast on the CPU and CUDA, fused
//!   AdamW, multi-tensor ops, oneDNN linear layers, CUDA graphs);
//! - `fsutil`: writes that never leave a half-written file, and checks that a folder can
//!   be written;
//! - `listing`: how a message shows things: lists (the first few, and how many more),
//!   counts ("1 thread", "4 threads"), numbers, and the flag of a setting.

pub mod attention;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod eval;
pub mod ffi;
pub mod fsutil;
pub mod info;
mod listing;
pub mod model;
pub mod optim;
pub mod plot;
pub mod predict;
pub mod runtime;
pub mod train;

/// Temporary folders for the unit tests, shared with the integration tests.
#[cfg(test)]
#[path = "../tests/common/temp_dir.rs"]
mod temp_dir;
