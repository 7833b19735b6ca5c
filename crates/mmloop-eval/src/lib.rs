//! The I/O side of evaluation: running the external reference tools that have no exact
//! native port, finding them on disk, and talking to them over pipes. The arithmetic
//! stays in `mmloop-metrics` (pure functions); this crate only moves bytes and never
//! substitutes a different formula when a tool is missing: it returns a typed error whose
//! message says how to get the tool.

pub mod meteor_jar;
