//! Parquet in the Hugging Face `datasets` layout (`datasets/features/image.py`,
//! `Features.from_arrow_schema`): images as `struct<bytes: binary, path: string>` and a
//! `huggingface` schema-metadata entry declaring the features, so
//! `datasets.load_dataset("parquet", ...)` yields `Image` columns. Reads any table with
//! image / question / answer columns in the usual spellings.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, ListBuilder, StringBuilder, StructBuilder, UInt32Builder};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields as ArrowFields, Schema};
use mmloop_core::{Answer, HumanAnswer, ImageSource, Location, Message, Record, Task};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde_json::{Value, json};

use crate::error::{FormatError, RecordError};
use crate::output::AtomicFile;
use crate::{ReadOptions, Sink, WriteOptions, WriteSummary, image_ref};

fn perr(path: &Path, e: impl std::fmt::Display) -> FormatError {
    FormatError::Parquet { path: path.to_path_buf(), message: e.to_string() }
}

const IMAGE_COLUMNS: &[&str] = &["images", "image", "img", "image_path", "file_name"];
const QUESTION_COLUMNS: &[&str] = &["question", "query", "prompt", "instruction"];
const ANSWER_COLUMNS: &[&str] = &["answer", "response", "caption", "output"];

pub(crate) fn read(path: &Path, opts: &ReadOptions, sink: &mut Sink) -> Result<(), FormatError> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let builder = decode(path, || ParquetRecordBatchReaderBuilder::try_new(file))?
        .map_err(|e| perr(path, format!("{e}\n  hint: is this a Parquet file? it may be truncated")))?;
    let schema = builder.schema().clone();
    let mut reader = decode(path, || builder.with_batch_size(1024).build())?.map_err(|e| perr(path, e))?;
    let find = |names: &[&str]| names.iter().find_map(|n| schema.index_of(n).ok());
    let image_col = find(IMAGE_COLUMNS);
    let question_col = find(QUESTION_COLUMNS);
    let answer_col = find(ANSWER_COLUMNS);
    let col = |n: &str| schema.index_of(n).ok();
    let (answers_col, conf_col, id_col, split_col, task_col) =
        (col("answers"), col("answer_confidences"), col("id"), col("split"), col("task"));
    let (context_col, conv_col, turn_col, meta_col) = (col("context"), col("conversation"), col("turn"), col("meta"));
    let known: Vec<usize> = [
        image_col,
        question_col,
        answer_col,
        answers_col,
        conf_col,
        id_col,
        split_col,
        task_col,
        context_col,
        conv_col,
        turn_col,
        meta_col,
    ]
    .into_iter()
    .flatten()
    .collect();
    let file = Arc::new(path.to_path_buf());
    if question_col.is_none() && opts.task != Some(Task::Caption) {
        return Err(RecordError::new(
            Location::file(&file),
            format!(
                "no question column (looked for {}); columns are {}",
                QUESTION_COLUMNS.join(", "),
                schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            ),
        )
        .hint("for a caption dataset pass --task caption")
        .into());
    }
    let mut row_index = 0u64;
    while let Some(batch) = decode(path, || reader.next())? {
        let batch = batch.map_err(|e| perr(path, e))?;
        for row in 0..batch.num_rows() {
            let loc = Location::index(&file, row_index);
            row_index += 1;
            let rec = read_row(
                &batch,
                row,
                &loc,
                opts,
                |name| match name {
                    "image" => image_col,
                    "question" => question_col,
                    "answer" => answer_col,
                    "answers" => answers_col,
                    "conf" => conf_col,
                    "id" => id_col,
                    "split" => split_col,
                    "task" => task_col,
                    "context" => context_col,
                    "conversation" => conv_col,
                    "turn" => turn_col,
                    "meta" => meta_col,
                    _ => None,
                },
                &known,
            );
            if sink(rec).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Runs one step of the Parquet decoder, turning a panic into an error on the file: the
/// `parquet` crate asserts on some malformed footers instead of returning an error (a
/// column chunk at a negative offset, found by `fuzz/`), and one bad file must not abort
/// an import. Only decoder steps run here, never the sink.
fn decode<T>(path: &Path, step: impl FnOnce() -> T) -> Result<T, FormatError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).map_err(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        perr(
            path,
            format!("the file is malformed, the decoder gave up: {why}\n  hint: write the file again; if it came from a tool, check it with that tool (pyarrow, `datasets`)"),
        )
    })
}

fn read_row(
    batch: &RecordBatch,
    row: usize,
    loc: &Location,
    opts: &ReadOptions,
    col: impl Fn(&str) -> Option<usize>,
    known: &[usize],
) -> Result<Record, RecordError> {
    let err = |m: String| RecordError::new(loc.clone(), m);
    let s = |name: &str| col(name).and_then(|c| cell_str(batch.column(c).as_ref(), row));
    let id = s("id");
    let task = match s("task") {
        Some(t) => t.parse::<Task>().map_err(|e| err(e.to_string()).id(id.clone()))?,
        None => opts.task.unwrap_or(Task::Vqa),
    };
    let question = match s("question") {
        Some(q) => q,
        None if task == Task::Caption => opts.caption_prompt(),
        None => return Err(err("the question is null".into()).id(id)),
    };
    let mut r = Record::new(task, question, loc.clone());
    if let Some(c) = col("image") {
        r.images = cell_images(batch.column(c).as_ref(), row).map_err(|m| err(m).id(id.clone()))?;
    }
    let text = s("answer");
    let confs = col("conf").map(|c| cell_list(batch.column(c).as_ref(), row)).unwrap_or_default();
    let all: Vec<HumanAnswer> = col("answers")
        .map(|c| cell_list(batch.column(c).as_ref(), row))
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, a)| a.map(|answer| HumanAnswer { answer, confidence: confs.get(i).cloned().flatten() }))
        .collect();
    r.answer = (text.is_some() || !all.is_empty()).then_some(Answer { text, all });
    r.split = s("split");
    if let Some(ctx) = s("context") {
        r.context = serde_json::from_str::<Vec<Message>>(&ctx)
            .map_err(|e| err(format!("`context` is not a message list: {e}")))?;
    }
    r.conversation = s("conversation");
    if let Some(c) = col("turn") {
        let a = batch.column(c);
        if let Some(t) = a.as_primitive_opt::<arrow_array::types::UInt32Type>() {
            r.turn = if t.is_null(row) { 0 } else { t.value(row) };
        }
    }
    if let Some(m) = s("meta") {
        match serde_json::from_str::<Value>(&m) {
            Ok(Value::Object(m)) => r.meta = m,
            _ => return Err(err("`meta` is not a JSON object".into())),
        }
    }
    // Other scalar columns ride along as metadata.
    for (i, field) in batch.schema().fields().iter().enumerate() {
        if known.contains(&i) {
            continue;
        }
        if let Some(v) = cell_json(batch.column(i).as_ref(), row) {
            r.meta.entry(field.name().clone()).or_insert(v);
        }
    }
    r.id = id;
    Ok(r)
}

fn cell_str(a: &dyn Array, row: usize) -> Option<String> {
    if a.is_null(row) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Some(a.as_string_view().value(row).to_string()),
        DataType::Int64 => Some(a.as_primitive::<arrow_array::types::Int64Type>().value(row).to_string()),
        DataType::Int32 => Some(a.as_primitive::<arrow_array::types::Int32Type>().value(row).to_string()),
        DataType::UInt64 => Some(a.as_primitive::<arrow_array::types::UInt64Type>().value(row).to_string()),
        _ => None,
    }
}

/// A scalar cell as JSON, numbers and booleans as themselves; `None` for nulls and for
/// types that have no plain JSON form (binary, nested, temporal).
fn cell_json(a: &dyn Array, row: usize) -> Option<Value> {
    use arrow_array::types::*;
    if a.is_null(row) {
        return None;
    }
    let int = |v: i64| Some(Value::from(v));
    match a.data_type() {
        DataType::Boolean => Some(Value::from(a.as_boolean().value(row))),
        DataType::Int8 => int(a.as_primitive::<Int8Type>().value(row).into()),
        DataType::Int16 => int(a.as_primitive::<Int16Type>().value(row).into()),
        DataType::Int32 => int(a.as_primitive::<Int32Type>().value(row).into()),
        DataType::Int64 => int(a.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => int(a.as_primitive::<UInt8Type>().value(row).into()),
        DataType::UInt16 => int(a.as_primitive::<UInt16Type>().value(row).into()),
        DataType::UInt32 => int(a.as_primitive::<UInt32Type>().value(row).into()),
        DataType::UInt64 => Some(Value::from(a.as_primitive::<UInt64Type>().value(row))),
        DataType::Float32 => {
            serde_json::Number::from_f64(a.as_primitive::<Float32Type>().value(row).into()).map(Value::Number)
        }
        DataType::Float64 => {
            serde_json::Number::from_f64(a.as_primitive::<Float64Type>().value(row)).map(Value::Number)
        }
        _ => cell_str(a, row).map(Value::from),
    }
}

fn cell_list(a: &dyn Array, row: usize) -> Vec<Option<String>> {
    if a.is_null(row) {
        return Vec::new();
    }
    let values: ArrayRef = match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().value(row),
        DataType::LargeList(_) => a.as_list::<i64>().value(row),
        _ => return cell_str(a, row).map(|s| vec![Some(s)]).unwrap_or_default(),
    };
    (0..values.len()).map(|i| cell_str(values.as_ref(), i)).collect()
}

fn struct_image(s: &StructArray, i: usize) -> Result<Option<ImageSource>, String> {
    if s.is_null(i) {
        return Ok(None);
    }
    let bytes = s.column_by_name("bytes").filter(|b| !b.is_null(i)).and_then(|b| match b.data_type() {
        DataType::Binary => Some(b.as_binary::<i32>().value(i).to_vec()),
        DataType::LargeBinary => Some(b.as_binary::<i64>().value(i).to_vec()),
        _ => None,
    });
    let path = s.column_by_name("path").and_then(|p| cell_str(p.as_ref(), i));
    Ok(match (bytes, path) {
        (Some(b), _) => Some(ImageSource::Bytes(b.into())),
        (None, Some(p)) => Some(image_ref::parse_str(&p)?),
        (None, None) => None,
    })
}

fn cell_images(a: &dyn Array, row: usize) -> Result<Vec<ImageSource>, String> {
    if a.is_null(row) {
        return Ok(Vec::new());
    }
    match a.data_type() {
        DataType::Struct(_) => Ok(struct_image(a.as_struct(), row)?.into_iter().collect()),
        DataType::Binary => Ok(vec![ImageSource::Bytes(a.as_binary::<i32>().value(row).to_vec().into())]),
        DataType::LargeBinary => Ok(vec![ImageSource::Bytes(a.as_binary::<i64>().value(row).to_vec().into())]),
        DataType::List(_) | DataType::LargeList(_) => {
            let values = if matches!(a.data_type(), DataType::List(_)) {
                a.as_list::<i32>().value(row)
            } else {
                a.as_list::<i64>().value(row)
            };
            let mut out = Vec::with_capacity(values.len());
            for i in 0..values.len() {
                match values.data_type() {
                    DataType::Struct(_) => out.extend(struct_image(values.as_struct(), i)?),
                    _ => out.extend(cell_str(values.as_ref(), i).map(|p| image_ref::parse_str(&p)).transpose()?),
                }
            }
            Ok(out)
        }
        _ => cell_str(a, row).map(|p| image_ref::parse_str(&p)).transpose().map(|o| o.into_iter().collect()),
    }
}

fn image_struct_fields() -> ArrowFields {
    ArrowFields::from(vec![Field::new("bytes", DataType::Binary, true), Field::new("path", DataType::Utf8, true)])
}

fn schema() -> Arc<Schema> {
    let list_of = |dt: DataType| DataType::List(Arc::new(Field::new("item", dt, true)));
    let features = json!({
        "id": {"dtype": "string", "_type": "Value"},
        "task": {"dtype": "string", "_type": "Value"},
        "images": [{"_type": "Image"}],
        "question": {"dtype": "string", "_type": "Value"},
        "answer": {"dtype": "string", "_type": "Value"},
        "answers": [{"dtype": "string", "_type": "Value"}],
        "answer_confidences": [{"dtype": "string", "_type": "Value"}],
        "split": {"dtype": "string", "_type": "Value"},
        "context": {"dtype": "string", "_type": "Value"},
        "conversation": {"dtype": "string", "_type": "Value"},
        "turn": {"dtype": "uint32", "_type": "Value"},
        "meta": {"dtype": "string", "_type": "Value"},
    });
    let hf = json!({"info": {"features": features}}).to_string();
    let fields = vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("task", DataType::Utf8, true),
        Field::new("images", list_of(DataType::Struct(image_struct_fields())), true),
        Field::new("question", DataType::Utf8, true),
        Field::new("answer", DataType::Utf8, true),
        Field::new("answers", list_of(DataType::Utf8), true),
        Field::new("answer_confidences", list_of(DataType::Utf8), true),
        Field::new("split", DataType::Utf8, true),
        Field::new("context", DataType::Utf8, true),
        Field::new("conversation", DataType::Utf8, true),
        Field::new("turn", DataType::UInt32, true),
        Field::new("meta", DataType::Utf8, true),
    ];
    Arc::new(Schema::new(fields).with_metadata(std::collections::HashMap::from([("huggingface".to_string(), hf)])))
}

struct Columns {
    id: StringBuilder,
    task: StringBuilder,
    images: ListBuilder<StructBuilder>,
    question: StringBuilder,
    answer: StringBuilder,
    answers: ListBuilder<StringBuilder>,
    confidences: ListBuilder<StringBuilder>,
    split: StringBuilder,
    context: StringBuilder,
    conversation: StringBuilder,
    turn: UInt32Builder,
    meta: StringBuilder,
}

impl Columns {
    fn new() -> Self {
        let image = StructBuilder::new(
            image_struct_fields(),
            vec![Box::new(BinaryBuilder::new()), Box::new(StringBuilder::new())],
        );
        Columns {
            id: StringBuilder::new(),
            task: StringBuilder::new(),
            images: ListBuilder::new(image),
            question: StringBuilder::new(),
            answer: StringBuilder::new(),
            answers: ListBuilder::new(StringBuilder::new()),
            confidences: ListBuilder::new(StringBuilder::new()),
            split: StringBuilder::new(),
            context: StringBuilder::new(),
            conversation: StringBuilder::new(),
            turn: UInt32Builder::new(),
            meta: StringBuilder::new(),
        }
    }

    fn push(&mut self, r: &Record, embed: bool) -> Result<(), String> {
        self.id.append_option(r.id.as_deref());
        self.task.append_value(r.task.as_str());
        for img in &r.images {
            let s = self.images.values();
            let (bytes, path): (Option<Vec<u8>>, Option<String>) = match img {
                ImageSource::Bytes(b) => (Some(b.to_vec()), None),
                ImageSource::Path(p) if embed => {
                    (Some(std::fs::read(p).map_err(|e| format!("{p}: {e}"))?), Some(p.clone()))
                }
                other => (None, Some(image_ref::to_string(other))),
            };
            s.field_builder::<BinaryBuilder>(0).expect("bytes field").append_option(bytes);
            s.field_builder::<StringBuilder>(1).expect("path field").append_option(path);
            s.append(true);
        }
        self.images.append(true);
        self.question.append_value(&r.question);
        let answer = r.answer.clone().unwrap_or_default();
        self.answer.append_option(answer.text.as_deref());
        for a in &answer.all {
            self.answers.values().append_value(&a.answer);
            self.confidences.values().append_option(a.confidence.as_deref());
        }
        self.answers.append(!answer.all.is_empty());
        self.confidences.append(!answer.all.is_empty() && answer.all.iter().any(|a| a.confidence.is_some()));
        self.split.append_option(r.split.as_deref());
        if r.context.is_empty() {
            self.context.append_null();
        } else {
            self.context.append_value(serde_json::to_string(&r.context).expect("messages serialize"));
        }
        self.conversation.append_option(r.conversation.as_deref());
        self.turn.append_value(r.turn);
        if r.meta.is_empty() {
            self.meta.append_null();
        } else {
            self.meta.append_value(Value::Object(r.meta.clone()).to_string());
        }
        Ok(())
    }

    fn finish(&mut self, schema: &Arc<Schema>) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.task.finish()),
            Arc::new(self.images.finish()),
            Arc::new(self.question.finish()),
            Arc::new(self.answer.finish()),
            Arc::new(self.answers.finish()),
            Arc::new(self.confidences.finish()),
            Arc::new(self.split.finish()),
            Arc::new(self.context.finish()),
            Arc::new(self.conversation.finish()),
            Arc::new(self.turn.finish()),
            Arc::new(self.meta.finish()),
        ];
        RecordBatch::try_new(schema.clone(), cols)
    }
}

pub(crate) fn write(
    out: &Path,
    records: &mut dyn Iterator<Item = Record>,
    opts: &WriteOptions,
) -> Result<WriteSummary, FormatError> {
    let schema = schema();
    let hf = schema.metadata()["huggingface"].clone();
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .set_key_value_metadata(Some(vec![KeyValue::new("huggingface".to_string(), hf)]))
        .build();
    let file = AtomicFile::create(out)?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| perr(out, e))?;
    let mut cols = Columns::new();
    let mut in_batch = 0usize;
    let mut n = 0u64;
    for r in records {
        cols.push(&r, opts.embed_images).map_err(|e| perr(out, e))?;
        in_batch += 1;
        n += 1;
        if in_batch == 4096 {
            writer.write(&cols.finish(&schema).map_err(|e| perr(out, e))?).map_err(|e| perr(out, e))?;
            in_batch = 0;
        }
    }
    if in_batch > 0 || n == 0 {
        writer.write(&cols.finish(&schema).map_err(|e| perr(out, e))?).map_err(|e| perr(out, e))?;
    }
    let file = writer.into_inner().map_err(|e| perr(out, e))?;
    let path = file.commit()?;
    Ok(WriteSummary { records: n, files: vec![path], notes: Vec::new() })
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};

    use super::*;

    /// Found by `fuzz/` (target `parquet`), parquet 60.1: a footer whose column chunk starts
    /// at a negative offset made the decoder panic (`column start and length should not be
    /// negative`) and took the whole import down with it.
    #[test]
    fn a_column_chunk_at_a_negative_offset_is_a_file_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.parquet");
        let file = Arc::new(good.clone());
        let mut r = Record::new(Task::Vqa, "What is it?", Location::line(&file, 1));
        r.images = vec![ImageSource::Path("a.jpg".into())];
        r.answer = Some(Answer::text("a cat"));
        crate::write(crate::Format::Parquet, &good, &mut [r].into_iter(), &WriteOptions::default()).unwrap();

        // The same data pages under a footer whose first column chunk starts at -1.
        let bytes = std::fs::read(&good).unwrap();
        let meta = ParquetMetaDataReader::new().parse_and_finish(&File::open(&good).unwrap()).unwrap();
        let footer_len = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap()) as usize;
        let mut builder = meta.into_builder();
        let groups = builder
            .take_row_groups()
            .into_iter()
            .map(|g| {
                let mut columns = g.columns().to_vec();
                columns[0] = columns[0]
                    .clone()
                    .into_builder()
                    .set_dictionary_page_offset(None)
                    .set_data_page_offset(-1)
                    .build()
                    .unwrap();
                g.into_builder().set_column_metadata(columns).build().unwrap()
            })
            .collect();
        let meta = builder.set_row_groups(groups).build();
        let mut corrupt = bytes[..bytes.len() - 8 - footer_len].to_vec();
        ParquetMetaDataWriter::new(&mut corrupt, &meta).finish().unwrap();
        let bad = dir.path().join("bad.parquet");
        std::fs::write(&bad, corrupt).unwrap();

        let mut items = 0;
        let err = crate::read(crate::Format::Parquet, &bad, &ReadOptions::default(), &mut |_| {
            items += 1;
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert_eq!(items, 0);
        let FormatError::Parquet { path, message } = &err else { panic!("not a parquet error: {err}") };
        assert_eq!(path, &bad);
        assert!(message.contains("hint:"), "{message}");
    }
}
