//! The CSV table reader, comma-separated (`.csv`) and tab-separated (`.tsv`), for VQA and
//! for captions (where a missing question column is allowed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmloop_core::Task;
use mmloop_formats::{Format, ReadOptions};
use mmloop_fuzz::{input_file, read_checked};

fuzz_target!(|data: &[u8]| {
    let vqa = ReadOptions::default();
    let caption = ReadOptions { task: Some(Task::Caption), ..ReadOptions::default() };
    for name in ["input.csv", "input.tsv"] {
        let path = input_file(name, data);
        read_checked(Format::Csv, &path, &vqa);
        read_checked(Format::Csv, &path, &caption);
    }
});
