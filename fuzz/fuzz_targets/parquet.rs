//! The Parquet reader (HF `datasets` layout and plain tables) on arbitrary bytes: the
//! footer, schema, pages and compressed chunks are all attacker-shaped here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmloop_core::Task;
use mmloop_formats::{Format, ReadOptions};
use mmloop_fuzz::{has_huge_thrift_bool_collection, input_file, let_decoder_panics_unwind, read_checked};

fuzz_target!(|data: &[u8]| {
    let_decoder_panics_unwind();
    if has_huge_thrift_bool_collection(data) {
        return; // a known parquet 60.1 slowness, not ours: see fuzz/README.md
    }
    let path = input_file("input.parquet", data);
    read_checked(Format::Parquet, &path, &ReadOptions::default());
    read_checked(Format::Parquet, &path, &ReadOptions { task: Some(Task::Caption), ..ReadOptions::default() });
});
