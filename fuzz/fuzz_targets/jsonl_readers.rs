//! JSON Lines readers (ms-swift, ShareGPT, the generic table), which also take a JSON
//! array when the file starts with `[`: any bytes, no panic, errors name the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmloop_core::Task;
use mmloop_formats::{Format, ReadOptions};
use mmloop_fuzz::{input_file, read_checked};

fuzz_target!(|data: &[u8]| {
    let path = input_file("input.jsonl", data);
    let vqa = ReadOptions::default();
    let caption = ReadOptions { task: Some(Task::Caption), ..ReadOptions::default() };
    read_checked(Format::Swift, &path, &vqa);
    read_checked(Format::ShareGpt, &path, &vqa);
    read_checked(Format::Jsonl, &path, &vqa);
    read_checked(Format::Jsonl, &path, &caption);
});
