//! Golden files: small inputs modelled on what each tool writes (`tests/fixtures/formats/`,
//! see its README for the sources), read and written back by the same format.
//!
//! For each file: `detect` names its format; the records read are snapshotted; so is what
//! the format's writer makes of them; reading that back gives the same records (up to the
//! writer's documented normalisations, `common::after_round_trip`), and writing those
//! again gives the same bytes.

mod common;

use std::path::Path;

use common::{Read, fixture, read_ok, view};
use mmloop_core::Task;
use mmloop_formats::{Format, ReadOptions, WriteOptions};

/// Reads `rel`, snapshots the records and what `format` writes of them (as `out`), and
/// checks detection and the round trip.
fn golden(name: &str, format: Format, rel: &str, opts: &ReadOptions, out: &str) {
    let path = fixture(rel);
    assert_eq!(mmloop_formats::detect(&path).unwrap(), format, "detect({rel})");
    let first = read_ok(format, &path, opts);
    assert!(!first.is_empty(), "{rel} read no records");
    insta::assert_snapshot!(format!("{name}__read"), view(&first));

    let wopts = WriteOptions::default();
    let (dir, summary) = common::write(format, &first, out, &wopts);
    let second = read_ok(format, &common::main_output(format, &summary), opts);
    if format == Format::Parquet {
        // Binary: the records read back stand for the bytes.
        let text = view(&second).replace(&dir.path().display().to_string(), "$OUT");
        insta::assert_snapshot!(format!("{name}__written"), text);
    } else {
        insta::assert_snapshot!(format!("{name}__written"), common::written_text(dir.path(), &summary));
    }
    check_round_trip(format, &first, &second, opts);

    // Once written, a file is a fixed point: writing what it reads gives the same bytes.
    let (dir2, summary2) = common::write(format, &second, out, &wopts);
    if format != Format::Parquet {
        assert_eq!(
            common::written_text(dir2.path(), &summary2),
            common::written_text(dir.path(), &summary),
            "{rel}: writing the read-back records changed the output"
        );
    } else {
        let third = read_ok(format, &summary2.files[0], opts);
        common::assert_same(&third, &second, rel);
    }
}

/// `second` (read back from the writer's output) against `first`, up to the documented
/// normalisations; readers that add meta keys of their own are checked for a superset.
fn check_round_trip(format: Format, first: &[mmloop_core::Record], second: &[mmloop_core::Record], opts: &ReadOptions) {
    let want = common::after_round_trip(format, first, opts);
    if matches!(format, Format::Coco | Format::Vqav2 | Format::TextVqa) {
        assert_eq!(second.len(), want.len(), "{format}: record count after the round trip");
        for (g, w) in second.iter().zip(&want) {
            assert!(
                common::meta_contains(&g.meta, &w.meta),
                "{format}: meta lost\n got {:?}\nwant {:?}",
                g.meta,
                w.meta
            );
        }
        let strip = |rs: &[mmloop_core::Record]| -> Vec<mmloop_core::Record> {
            rs.iter()
                .cloned()
                .map(|mut r| {
                    r.meta.clear();
                    r
                })
                .collect()
        };
        common::assert_same(&strip(second), &strip(&want), &format!("{format} round trip"));
    } else {
        common::assert_same(second, &want, &format!("{format} round trip"));
    }
}

fn opts() -> ReadOptions {
    ReadOptions::default()
}

#[test]
fn swift_messages() {
    golden("swift_messages", Format::Swift, "swift/messages.jsonl", &opts(), "out.jsonl");
}

#[test]
fn swift_auto_preprocessor_spellings() {
    golden("swift_auto_preprocessor", Format::Swift, "swift/auto_preprocessor.jsonl", &opts(), "out.jsonl");
}

#[test]
fn swift_infer_result() {
    golden("swift_infer_result", Format::Swift, "swift/infer_result.jsonl", &opts(), "out.jsonl");
}

#[test]
fn llava_instruct() {
    golden("llava_instruct", Format::Llava, "llava/llava_instruct.json", &opts(), "out.json");
}

#[test]
fn sharegpt_llama_factory_json() {
    golden("sharegpt_mllm", Format::ShareGpt, "sharegpt/mllm.json", &opts(), "out.json");
}

#[test]
fn sharegpt_jsonl() {
    golden("sharegpt4v_jsonl", Format::ShareGpt, "sharegpt/sharegpt4v.jsonl", &opts(), "out.jsonl");
}

#[test]
fn coco_captions() {
    golden("coco_captions", Format::Coco, "coco/captions_val2017.json", &opts(), "captions.json");
}

#[test]
fn coco_test_split_image_info() {
    golden("coco_image_info_test", Format::Coco, "coco/image_info_test2017.json", &opts(), "captions.json");
}

#[test]
fn coco_karpathy_split() {
    golden("coco_karpathy", Format::Coco, "coco/dataset_coco.json", &opts(), "captions.json");
}

#[test]
fn vqav2_questions_with_annotations_beside() {
    golden("vqav2_val", Format::Vqav2, "vqav2/v2_OpenEnded_mscoco_val2014_questions.json", &opts(), "vqa");
}

#[test]
fn vqav2_test_dev_questions_only() {
    golden("vqav2_test_dev", Format::Vqav2, "vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json", &opts(), "vqa");
}

#[test]
fn textvqa_val() {
    golden("textvqa_val", Format::TextVqa, "textvqa/TextVQA_0.5.1_val.json", &opts(), "textvqa.json");
}

#[test]
fn textvqa_test_without_answers() {
    golden("textvqa_test", Format::TextVqa, "textvqa/TextVQA_0.5.1_test.json", &opts(), "textvqa.json");
}

#[test]
fn labelstudio_export() {
    golden("labelstudio_export", Format::LabelStudio, "labelstudio/project-3-export.json", &opts(), "tasks.json");
}

#[test]
fn labelstudio_pre_1_0_completions() {
    golden(
        "labelstudio_completions",
        Format::LabelStudio,
        "labelstudio/pre-1.0-completions.json",
        &opts(),
        "tasks.json",
    );
}

#[test]
fn labelstudio_import_with_predictions() {
    golden(
        "labelstudio_import",
        Format::LabelStudio,
        "labelstudio/import-with-predictions.json",
        &opts(),
        "tasks.json",
    );
}

#[test]
fn jsonl_table() {
    golden("table_jsonl", Format::Jsonl, "table/vqa.jsonl", &opts(), "out.jsonl");
}

#[test]
fn csv_table_with_quoted_commas() {
    golden("table_csv", Format::Csv, "table/vqa.csv", &opts(), "out.csv");
}

#[test]
fn csv_as_mmloop_writes_it() {
    golden("table_csv_answers", Format::Csv, "table/answers.csv", &opts(), "out.csv");
}

#[test]
fn parquet_written_by_hf_datasets() {
    golden("parquet_hf_vqa", Format::Parquet, "parquet/hf_vqa.parquet", &opts(), "out.parquet");
}

#[test]
fn parquet_hf_list_of_images() {
    golden("parquet_hf_multi_image", Format::Parquet, "parquet/hf_multi_image.parquet", &opts(), "out.parquet");
}

/// Image folders are an input format only: snapshot what they read as.
#[test]
fn image_folders() {
    let plain = fixture("folder/plain");
    assert_eq!(mmloop_formats::detect(&plain).unwrap(), Format::Folder);
    let o = ReadOptions { question: Some("What colour fills the picture?".into()), ..opts() };
    insta::assert_snapshot!("folder_plain__read", view(&read_ok(Format::Folder, &plain, &o)));
    let o = ReadOptions { task: Some(Task::Caption), ..opts() };
    insta::assert_snapshot!("folder_plain_caption__read", view(&read_ok(Format::Folder, &plain, &o)));

    let meta = fixture("folder/with_metadata");
    assert_eq!(mmloop_formats::detect(&meta).unwrap(), Format::Folder);
    insta::assert_snapshot!("folder_with_metadata__read", view(&read_ok(Format::Folder, &meta, &opts())));

    let Read { result, .. } = common::read(Format::Folder, &plain, &opts());
    let err = result.unwrap_err().to_string();
    assert!(err.contains("needs --question"), "{err}");
    let err =
        mmloop_formats::write(Format::Folder, &plain.join("x"), &mut std::iter::empty(), &WriteOptions::default())
            .unwrap_err()
            .to_string();
    assert!(err.contains("input format only") && err.contains("hint:"), "{err}");
}

/// The VQAv2 annotations file and the other non-dataset JSON files are told apart from
/// the datasets (they are errors with a hint, see bad_input.rs); every golden dataset file
/// is covered above. This checks the whole folder so that a new fixture is not forgotten.
#[test]
fn every_fixture_is_detected() {
    let expect = |p: &Path| -> Option<Format> {
        let rel = p.strip_prefix(common::fixtures()).unwrap().to_string_lossy().replace('\\', "/");
        let dir = rel.split('/').next().unwrap_or("");
        Some(match dir {
            _ if rel.ends_with("_annotations.json") || rel.ends_with(".txt") || rel.ends_with(".md") => return None,
            "folder" => return None,
            "swift" => Format::Swift,
            "llava" => Format::Llava,
            "sharegpt" => Format::ShareGpt,
            "coco" => Format::Coco,
            "vqav2" => Format::Vqav2,
            "textvqa" => Format::TextVqa,
            "labelstudio" => Format::LabelStudio,
            "parquet" => Format::Parquet,
            "table" if rel.ends_with(".csv") => Format::Csv,
            "table" => Format::Jsonl,
            other => panic!("fixture in an unknown folder: {other}"),
        })
    };
    let mut seen = 0;
    for entry in walk(&common::fixtures()) {
        if let Some(want) = expect(&entry) {
            let got = mmloop_formats::detect(&entry).unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
            assert_eq!(got, want, "{}", entry.display());
            seen += 1;
        }
    }
    assert!(seen >= 20, "only {seen} fixtures found");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The writer options: Label Studio paths under a document root, the VQAv2 subtype in the
/// file names, Parquet with the image bytes inside.
#[test]
fn write_options() {
    use mmloop_core::{ImageSource, Record};
    let at = |p: &str| {
        let mut r =
            Record::new(Task::Vqa, "<image>What is it?", mmloop_core::Location::file(&std::sync::Arc::new("-".into())));
        r.id = Some("7".into());
        r.images = vec![ImageSource::Path(p.into())];
        r
    };

    let records = [at("/srv/ls-files/vqa/a b.jpg"), at("/elsewhere/c.jpg"), at("gs://bucket/d.jpg")];
    let opts = WriteOptions { document_root: Some("/srv/ls-files".into()), ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tasks.json");
    mmloop_formats::write(Format::LabelStudio, &out, &mut records.iter().cloned(), &opts).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains(r#""image":"/data/local-files/?d=vqa/a%20b.jpg""#), "{text}");
    assert!(
        text.contains(r#""image":"/data/local-files/?d=/elsewhere/c.jpg""#),
        "outside the root stays absolute: {text}"
    );
    assert!(text.contains(r#""image":"gs://bucket/d.jpg""#), "{text}");
    assert!(text.contains(r#""question":"What is it?""#), "{text}");

    let opts = WriteOptions { data_subtype: Some("val2014".into()), ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let summary =
        mmloop_formats::write(Format::Vqav2, &dir.path().join("vqa"), &mut records[..1].iter().cloned(), &opts)
            .unwrap();
    let names: Vec<String> =
        summary.files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"]);
    assert!(Format::Vqav2.writes_folder());

    let png = fixture("folder/plain/a_red.png");
    let mut r = at(png.to_str().unwrap());
    r.images.push(ImageSource::Url("https://example.com/x.jpg".into()));
    let opts = WriteOptions { embed_images: true, ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("embedded.parquet");
    mmloop_formats::write(Format::Parquet, &out, &mut std::iter::once(r), &opts).unwrap();
    let back = read_ok(Format::Parquet, &out, &ReadOptions::default());
    assert_eq!(back[0].images[0], ImageSource::Bytes(std::fs::read(&png).unwrap().into()));
    assert_eq!(back[0].images[1], ImageSource::Url("https://example.com/x.jpg".into()));

    // A missing image is a clear error, not a panic.
    let opts = WriteOptions { embed_images: true, ..Default::default() };
    let err = mmloop_formats::write(Format::Parquet, &out, &mut std::iter::once(at("no/such.jpg")), &opts).unwrap_err();
    assert!(err.to_string().contains("no/such.jpg"), "{err}");
}
