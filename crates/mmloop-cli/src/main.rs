//! `mmloop`: the command line. Thin: parses flags, calls the crates, prints short,
//! actionable output.

mod cli;
mod eval_cmd;
mod example;
mod export_cmd;
mod import_cmd;
mod infer_cmd;
mod info;
mod review_cmd;
mod route_cmd;
mod serve_cmd;
mod sft_cmd;
mod ui;
mod values;
mod versions_cmd;

use clap::Parser;

use cli::{Cli, Command};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn actor(cli: &Cli) -> String {
    cli.actor.clone().unwrap_or_else(|| {
        let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "local".into());
        format!("cli:{user}")
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let actor = actor(&cli);
    match cli.command {
        Command::Init(a) => import_cmd::init(a, &actor).await,
        Command::Import(a) => import_cmd::import(a, &actor).await,
        Command::Stats(a) => info::stats(a).await,
        Command::Split(a) => info::split(a, &actor).await,
        Command::Commit(a) => versions_cmd::commit(a, &actor).await,
        Command::Log(a) => versions_cmd::log(a).await,
        Command::Migrate(a) => versions_cmd::migrate(a).await,
        Command::Diff(a) => versions_cmd::diff(a).await,
        Command::Export(a) => export_cmd::export(a).await,
        Command::Audit(a) => info::audit(a).await,
        Command::Show(a) => info::show(a).await,
        Command::Infer(a) => infer_cmd::infer(*a, &actor).await,
        Command::Review(a) => review_cmd::review(a, &actor).await,
        Command::User(a) => review_cmd::user(a, &actor).await,
        Command::Eval(a) => eval_cmd::eval(*a).await,
        Command::AuditSample(a) => route_cmd::audit_sample(a, &actor).await,
        Command::Route(a) => route_cmd::route(*a, &actor).await,
        Command::Serve(a) => serve_cmd::serve(*a, &actor).await,
        Command::Ab(a) => serve_cmd::ab(a).await,
        Command::Sft(a) => sft_cmd::sft(*a, &actor).await,
        Command::Runs(a) => sft_cmd::runs(a).await,
        Command::ExportModel(a) => sft_cmd::export_model(a).await,
    }
}

/// Model commands keep the memory they free instead of handing it back to the OS after
/// mimalloc's purge delay (1 s): a forward pass frees and re-allocates the same large activations
/// every layer, and every page fresh from the OS costs a fault and clearing — 9,400 instead of
/// ~50,000 page faults and about 8% less CPU time for 4 SmolVLM images (`--quant bf16`). The
/// process keeps its peak (what a model server holds anyway); `MIMALLOC_PURGE_DELAY` still
/// decides where it is set.
fn keep_freed_memory(command: &Command) {
    /// `mi_option_purge_delay` in mimalloc's `mi_option_t` (libmimalloc-sys names no constant).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    let runs_models =
        matches!(command, Command::Infer(_) | Command::Eval(_) | Command::Serve(_) | Command::Ab(_) | Command::Sft(_));
    if runs_models && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options (a plain integer it reads when it purges).
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    keep_freed_memory(&cli.command);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            ui::error(&e);
            std::process::ExitCode::FAILURE
        }
    }
}
