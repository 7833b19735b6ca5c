//! Every command and flag of `mmloop`, in one place. ms-swift spellings of flags are
//! accepted as aliases where a verb mirrors one of swift's.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mmloop",
    version,
    about = "Build VQA and image-caption datasets: import, pre-annotate, review, version, export, evaluate",
    max_term_width = 100
)]
pub struct Cli {
    /// Who is acting, as recorded in the audit log (default: your login name).
    #[arg(long, global = true, env = "MMLOOP_ACTOR")]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a project folder (mmloop.toml + .mmloop/).
    Init(InitArgs),
    /// Import a dataset file or an image folder into a project.
    Import(ImportArgs),
    /// Show what a project holds.
    Stats(StatsArgs),
    /// Assign train/val/test splits, grouped by image.
    Split(SplitArgs),
    /// Record the current state as a new version.
    Commit(CommitArgs),
    /// List versions, newest first.
    Log(LogArgs),
    /// Show what changed between two versions.
    Diff(DiffArgs),
    /// Write a version (or split of it) in a training format.
    Export(ExportArgs),
    /// Check or read the tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show one item with its images, label and history.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The project folder (created if missing).
    pub dir: PathBuf,
    /// Project name (default: the folder name).
    #[arg(long)]
    pub name: Option<String>,
    /// Fill the project with a small generated sample (12 images, VQA and captions).
    #[arg(long)]
    pub example: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The project folder.
    pub project: PathBuf,
    /// A dataset file, or a folder of images.
    #[arg(visible_alias = "dataset")]
    pub file: PathBuf,
    /// The format, when detection guesses wrong: swift, llava, sharegpt, coco, vqav2,
    /// textvqa, labelstudio, parquet, jsonl, csv, folder.
    #[arg(long, short)]
    pub format: Option<String>,
    /// Where relative image paths resolve (default: the dataset file's folder).
    #[arg(long, alias = "image-folder", alias = "image_folder", alias = "images_dir")]
    pub images_dir: Option<PathBuf>,
    /// VQAv2: the annotations file that goes with the questions file.
    #[arg(long)]
    pub annotations: Option<PathBuf>,
    /// The task of the items, for formats that do not say (default: vqa).
    #[arg(long)]
    pub task: Option<String>,
    /// Image folders: the question every image is asked (VQA).
    #[arg(long)]
    pub question: Option<String>,
    /// Image folders and caption datasets: the captioning prompt.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Copy images into the project instead of referencing them in place.
    #[arg(long)]
    pub copy: bool,
    /// Import the good records and write a report of the bad ones instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    pub project: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    pub project: PathBuf,
    /// Shares of train,val,test (or name=share,... for other names).
    #[arg(long, default_value = "0.8,0.1,0.1")]
    pub ratios: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Reassign items that already have a split (otherwise they keep it).
    #[arg(long)]
    pub reassign: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    pub project: PathBuf,
    /// What this version is.
    #[arg(long, short)]
    pub message: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    pub project: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    pub project: PathBuf,
    /// The older version (v1, HEAD~1, an id prefix).
    pub from: String,
    /// The newer version (default: HEAD).
    #[arg(default_value = "HEAD")]
    pub to: String,
    /// How many changed items to show in detail.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    pub project: PathBuf,
    /// swift, llava, sharegpt, coco, vqav2, textvqa, labelstudio, parquet, jsonl, csv.
    #[arg(long, short)]
    pub format: String,
    /// The output file (a folder for vqav2).
    #[arg(long, short, alias = "output_dir", alias = "output-dir")]
    pub output: PathBuf,
    /// The version to export: v2, HEAD, HEAD~1, an id prefix, or `working` for the
    /// uncommitted state.
    #[arg(long, default_value = "HEAD")]
    pub version: String,
    /// Only this split.
    #[arg(long)]
    pub split: Option<String>,
    /// Only this task (vqa or caption).
    #[arg(long)]
    pub task: Option<String>,
    /// Also items without a trusted label (pending, skipped).
    #[arg(long)]
    pub include_unreviewed: bool,
    /// Parquet: store image bytes in the file instead of paths.
    #[arg(long)]
    pub embed_images: bool,
    /// Label Studio: the local-files document root image paths are made relative to.
    #[arg(long)]
    pub document_root: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the hash chain and check it against its anchors.
    Verify {
        project: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show recent events.
    Log {
        project: PathBuf,
        /// Only events about this item.
        #[arg(long)]
        item: Option<i64>,
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    pub project: PathBuf,
    /// The item id.
    pub item: i64,
    #[arg(long)]
    pub json: bool,
}
