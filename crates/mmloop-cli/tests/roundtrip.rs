//! Import → export → import through every format keeps the content: the re-imported
//! project commits to the same version id. Importing the same records in another order
//! also gives the same id (versions are content-addressed).

mod common;

use std::path::Path;
use std::sync::Arc;

use mmloop_core::{Answer, HumanAnswer, ImageSource, Location, Message, Prediction, Record, Task};
use mmloop_formats::{Format, WriteOptions};
use mmloop_pipeline::transfer::{ExportRequest, export_file};
use mmloop_store::{ExportFilter, VersionSpec};
use proptest::prelude::*;
use serde_json::json;

/// A tiny deterministic generator (the seed comes from proptest).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn text(&mut self, tags: bool) -> String {
        const WORDS: &[&str] = &[
            "red",
            "the",
            "chair",
            "What",
            "is",
            "\"quoted\"",
            "it's",
            "1,000",
            "3.5",
            "café",
            "椅子",
            "可能",
            "🙂",
            "a,b",
            "line\nbreak",
            "tab\there",
            "<b>",
            "&amp;",
            "\\",
            "'",
            "  spaced  ",
            "über",
            "Ünïcödé",
            "?",
            "!",
        ];
        let n = 1 + self.below(6);
        let mut s = String::new();
        if tags && self.chance(30) {
            s.push_str("<image>");
        }
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[self.below(WORDS.len() as u64) as usize]);
        }
        s
    }
}

fn images_for(g: &mut Gen, pool: &[String], max: u64) -> Vec<ImageSource> {
    let n = 1 + g.below(max);
    (0..n).map(|_| ImageSource::Path(format!("imgs/{}", pool[g.below(pool.len() as u64) as usize]))).collect()
}

/// Records the format can represent, as a writer would receive them.
fn records(format: Format, g: &mut Gen, pool: &[String]) -> Vec<Record> {
    let file = Arc::new(std::path::PathBuf::from("gen"));
    let n = 3 + g.below(10);
    let mut out: Vec<Record> = Vec::new();
    for i in 0..n {
        let loc = Location::line(&file, i + 1);
        let chat = matches!(format, Format::Swift | Format::Llava | Format::ShareGpt);
        let task = match format {
            Format::Coco => Task::Caption,
            Format::Vqav2 | Format::TextVqa => Task::Vqa,
            _ if g.chance(25) => Task::Caption,
            _ => Task::Vqa,
        };
        let mut r = Record::new(task, g.text(chat), loc.clone());
        if format == Format::Coco {
            r.question = mmloop_formats::DEFAULT_CAPTION_PROMPT.into();
        }
        let numeric_id = matches!(format, Format::Coco | Format::Vqav2 | Format::TextVqa);
        // LLaVA rows always carry an id (its writer numbers id-less rows in file order).
        if numeric_id || format == Format::Llava || g.chance(70) {
            r.id = Some(if numeric_id || g.chance(50) { format!("{}", 1000 + i) } else { format!("q{i}") });
        }
        let multi_image = matches!(format, Format::Swift | Format::ShareGpt | Format::Parquet | Format::Jsonl);
        r.images = images_for(g, pool, if multi_image { 2 } else { 1 });
        // COCO and VQAv2 name images by integer ids, which real files carry; without them the
        // writers number images in file order.
        let image_no = |src: &ImageSource| match src {
            ImageSource::Path(p) => {
                p.trim_start_matches("imgs/img").trim_end_matches(".png").parse::<u64>().unwrap() + 1
            }
            _ => 0,
        };
        match format {
            Format::Coco => {
                r.meta.insert("image".into(), json!({"id": image_no(&r.images[0])}));
            }
            Format::Vqav2 => {
                r.meta.insert("image_id".into(), json!(image_no(&r.images[0])));
            }
            _ => {}
        }
        r.answer = Some(match format {
            Format::Vqav2 => {
                let all = (0..10)
                    .map(|_| HumanAnswer {
                        answer: g.text(false),
                        confidence: Some(["yes", "maybe", "no"][g.below(3) as usize].into()),
                    })
                    .collect();
                Answer { text: Some(g.text(false)), all }
            }
            Format::TextVqa => Answer {
                text: None,
                all: (0..10).map(|_| HumanAnswer { answer: g.text(false), confidence: None }).collect(),
            },
            Format::Parquet | Format::Jsonl | Format::Csv if g.chance(30) => Answer {
                text: Some(g.text(false)),
                all: (0..3)
                    .map(|_| HumanAnswer { answer: g.text(false), confidence: g.chance(50).then(|| "yes".into()) })
                    .collect(),
            },
            _ => Answer::text(g.text(false)),
        });
        if matches!(format, Format::TextVqa | Format::Parquet | Format::Jsonl | Format::Csv) && g.chance(60) {
            r.split = Some(["train", "val", "test"][g.below(3) as usize].into());
        }
        if matches!(format, Format::Swift | Format::Jsonl | Format::Parquet | Format::Csv | Format::Llava)
            && g.chance(40)
        {
            r.meta.insert("source".into(), json!({"page": g.below(100), "tags": [g.text(false)], "ok": true}));
        }
        if format == Format::LabelStudio && g.chance(50) {
            r.predictions.push(Prediction { model: "m1".into(), answer: g.text(false), score: Some(0.5) });
        }
        // A second turn for chat formats: the same conversation continues.
        if chat && g.chance(30) {
            r.conversation = Some(format!("c{i}"));
            let mut second = r.clone();
            r.id = r.id.map(|id| format!("{id}#0"));
            second.id = second.id.map(|id| format!("{id}#1"));
            second.turn = 1;
            second.context = vec![
                Message::new("user", r.question.clone()),
                Message::new("assistant", r.answer.as_ref().and_then(Answer::best).unwrap_or_default()),
            ];
            second.question = g.text(false);
            second.answer = Some(Answer::text(g.text(false)));
            second.meta.clear();
            r.meta.clear();
            out.push(r);
            out.push(second);
            continue;
        }
        out.push(r);
    }
    out
}

/// Where the written dataset goes (VQAv2 writes a folder of two files).
fn dataset_path(dir: &Path, format: Format) -> std::path::PathBuf {
    match format {
        Format::Vqav2 => dir.join("vqav2"),
        Format::Parquet => dir.join("data.parquet"),
        Format::Csv => dir.join("data.csv"),
        Format::Swift | Format::Jsonl => dir.join("data.jsonl"),
        _ => dir.join("data.json"),
    }
}

/// The file to import from what a writer produced.
fn import_path(written: &Path, format: Format) -> std::path::PathBuf {
    if format == Format::Vqav2 {
        let q = std::fs::read_dir(written)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains("questions"))
            .unwrap();
        return q;
    }
    written.to_path_buf()
}

async fn commit_id(dir: &Path, file: &Path, images_dir: Option<std::path::PathBuf>) -> (mmloop_store::Store, String) {
    let store = common::new_project(dir).await;
    common::import(&store, file, images_dir).await.unwrap();
    let v = store.commit("import", common::ACTOR).await.unwrap();
    (store, v.version.id.to_hex())
}

async fn round_trip(format: Format, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pool = common::images(&root.join("imgs"), 6);
    let mut g = Gen(seed);
    let recs = records(format, &mut g, &pool);

    // The source dataset, written by the format's own writer with relative image paths.
    let src = dataset_path(&root.join("src"), format);
    mmloop_formats::write(format, &src, &mut recs.clone().into_iter(), &WriteOptions::default()).unwrap();
    let (a, id_a) = commit_id(&root.join("a"), &import_path(&src, format), Some(root.to_path_buf())).await;

    // Export it and import the export into a fresh project.
    let out = dataset_path(&root.join("out"), format);
    let req = ExportRequest {
        version: VersionSpec::Named("HEAD".into()),
        filter: ExportFilter { candidates: format == Format::LabelStudio, ..Default::default() },
        format,
        out: out.clone(),
        write: WriteOptions::default(),
    };
    let (_, summary) = export_file(&a, req, |_| {}, || {}).await.unwrap();
    let stats_a = a.stats().await.unwrap();
    assert_eq!(summary.records, stats_a.items, "{format}: every item is exported");
    let (_b, id_b) = commit_id(&root.join("b"), &import_path(&out, format), None).await;
    assert_eq!(id_a, id_b, "{format} (seed {seed}): export → import changed the content");

    // The same records in reverse order (conversations kept whole) give the same id.
    let mut groups: Vec<Vec<Record>> = Vec::new();
    for r in recs {
        match groups.last_mut() {
            Some(g) if r.conversation.is_some() && g[0].conversation == r.conversation => g.push(r),
            _ => groups.push(vec![r]),
        }
    }
    groups.reverse();
    let src_c = dataset_path(&root.join("src_c"), format);
    mmloop_formats::write(format, &src_c, &mut groups.into_iter().flatten(), &WriteOptions::default()).unwrap();
    let (_c, id_c) = commit_id(&root.join("c"), &import_path(&src_c, format), Some(root.to_path_buf())).await;
    assert_eq!(id_a, id_c, "{format} (seed {seed}): insert order changed the version id");
}

fn check(format: Format) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    proptest!(ProptestConfig { cases: 16, ..ProptestConfig::default() }, |(seed in any::<u64>())| {
        rt.block_on(round_trip(format, seed));
    });
}

#[test]
fn swift() {
    check(Format::Swift);
}

#[test]
fn llava() {
    check(Format::Llava);
}

#[test]
fn sharegpt() {
    check(Format::ShareGpt);
}

#[test]
fn coco() {
    check(Format::Coco);
}

#[test]
fn vqav2() {
    check(Format::Vqav2);
}

#[test]
fn textvqa() {
    check(Format::TextVqa);
}

#[test]
fn labelstudio() {
    check(Format::LabelStudio);
}

#[test]
fn parquet() {
    check(Format::Parquet);
}

#[test]
fn jsonl() {
    check(Format::Jsonl);
}

#[test]
fn csv() {
    check(Format::Csv);
}

/// The ids of every record a file holds.
fn ids_in(format: Format, path: &Path) -> Vec<Option<String>> {
    let mut ids = Vec::new();
    let mut sink = |r: Result<Record, mmloop_core::RecordError>| {
        ids.push(r.expect("the export reads back").id);
        std::ops::ControlFlow::Continue(())
    };
    mmloop_formats::read(format, &import_path(path, format), &mmloop_formats::ReadOptions::default(), &mut sink)
        .unwrap();
    ids
}

/// A project holding COCO captions and VQA questions whose source ids collide (101, 102):
/// every format that can hold both exports unique, stable ids and imports back; an export
/// of one source alone keeps its own ids.
#[test]
fn a_project_mixing_sources_with_colliding_ids_round_trips_through_every_format() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let pool = common::images(&root.join("imgs"), 2);
        let coco = root.join("captions.json");
        std::fs::write(
            &coco,
            json!({
                "images": [{"id": 1, "file_name": format!("imgs/{}", pool[0]), "width": 8, "height": 6},
                           {"id": 2, "file_name": format!("imgs/{}", pool[1]), "width": 9, "height": 6}],
                "annotations": [{"id": 101, "image_id": 1, "caption": "A red square."},
                                {"id": 102, "image_id": 2, "caption": "A green square."}]
            })
            .to_string(),
        )
        .unwrap();
        let vqa = root.join("vqa.jsonl");
        std::fs::write(
            &vqa,
            format!(
                "{}\n{}\n",
                json!({"id": "101", "image": format!("imgs/{}", pool[0]), "question": "What colour?", "answer": "red"}),
                json!({"id": "102", "image": format!("imgs/{}", pool[1]), "question": "What shape?", "answer": "square"}),
            ),
        )
        .unwrap();
        let a = common::new_project(&root.join("a")).await;
        common::import(&a, &coco, None).await.unwrap();
        common::import(&a, &vqa, None).await.unwrap();
        a.commit("mixed", common::ACTOR).await.unwrap();
        let export = |format: Format, task: Option<Task>, out: std::path::PathBuf| {
            let a = a.clone();
            async move {
                let req = ExportRequest {
                    version: VersionSpec::Named("HEAD".into()),
                    filter: ExportFilter { task, ..Default::default() },
                    format,
                    out,
                    write: WriteOptions::default(),
                };
                export_file(&a, req, |_| {}, || {}).await.unwrap().1
            }
        };
        for format in
            [Format::Swift, Format::Llava, Format::ShareGpt, Format::LabelStudio, Format::Parquet, Format::Jsonl, Format::Csv]
        {
            let dir = root.join(format.name());
            let out = dataset_path(&dir, format);
            assert_eq!(export(format, None, out.clone()).await.records, 4, "{format}");
            let ids = ids_in(format, &out);
            let unique: std::collections::HashSet<_> = ids.iter().collect();
            assert_eq!(unique.len(), 4, "{format}: ids in the export are not unique: {ids:?}");
            assert!(ids.contains(&Some("coco:101".into())) && ids.contains(&Some("jsonl:101".into())), "{format}: {ids:?}");
            // The same export again writes the same ids.
            let again = dataset_path(&dir.join("again"), format);
            export(format, None, again.clone()).await;
            assert_eq!(ids_in(format, &again), ids, "{format}: ids changed between exports");
            // And it imports back whole.
            let b = common::new_project(&dir.join("b")).await;
            let report = common::import(&b, &import_path(&out, format), None).await.unwrap();
            assert_eq!(report.added, 4, "{format}");
            b.close();
        }
        // One source alone keeps its ids (COCO needs its integers).
        let out = dataset_path(&root.join("coco-only"), Format::Coco);
        export(Format::Coco, Some(Task::Caption), out.clone()).await;
        let mut ids = ids_in(Format::Coco, &out);
        ids.sort();
        assert_eq!(ids, vec![Some("101".to_string()), Some("102".to_string())]);
        a.close();
    });
}
