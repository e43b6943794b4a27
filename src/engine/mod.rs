//! The engine: plain functions over tensors, files and configs. It knows nothing about HTTP
//! or SQL, and everything in it runs on the CPU for tests and on CUDA for real work.

pub mod checkpoint;
pub mod choices;
pub mod data;
pub mod device;
pub mod ensemble;
pub mod eval;
pub mod hf;
pub mod merge;
pub mod model;
pub mod resident;
pub mod tokenizer;
pub mod train;
