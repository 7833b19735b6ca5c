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
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| perr(path, format!("{e}\n  hint: is this a Parquet file? it may be truncated")))?;
    let schema = builder.schema().clone();
    let reader = builder.with_batch_size(1024).build().map_err(|e| perr(path, e))?;
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
    for batch in reader {
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
        if let Some(v) = cell_str(batch.column(i).as_ref(), row) {
            r.meta.entry(field.name().clone()).or_insert(Value::from(v));
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
    Ok(WriteSummary { records: n, files: vec![path] })
}
