//! Engine tests: real libtorch on the CPU, real text from the shared corpus.

mod checkpoint;
mod cli;
mod data;
mod eval;
mod helpers;
mod hf;
mod merge;
mod model;
mod resident;
mod train;
