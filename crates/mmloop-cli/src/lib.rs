//! The library side of the `mmloop` command: the pipelines that join dataset files to the
//! project store, shared by the command line and its tests.

pub mod infer;
pub mod pipeline;
