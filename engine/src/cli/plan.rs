//! `rkd-orch plan`: the expanded stages of a recipe, their keys, and whether and why they
//! will run (rendered by `rkd_orch::plan::render`).

use std::path::PathBuf;

use rkd_orch::exit::CliError;
use rkd_orch::plan::render::{self, PlanStatus};
use rkd_orch::run::name_clash;
use rkd_orch::run::status::statuses;
use rkd_orch::store::Store;

use super::{load_plan, RunsArg, SetArgs};

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlanFormat {
    Text,
    Dot,
    Json,
}

#[derive(clap::Args)]
pub struct PlanArgs {
    recipe: PathBuf,
    #[command(flatten)]
    runs: RunsArg,
    #[command(flatten)]
    pub sets: SetArgs,
    /// `text` for people, `dot` for Graphviz, `json` for scripts.
    #[arg(long, value_enum, default_value = "text")]
    format: PlanFormat,
}

pub fn run(a: PlanArgs) -> Result<(), CliError> {
    let plan = load_plan(&a.recipe, &a.sets)?;
    let runs = a.runs.dir();
    // The database is optional here: it only explains *why* a stage will run (and warns
    // before a run takes over another file's recipe name).
    let store = Store::open_for_reading(&runs.db()).ok();
    if let Some(clash) = store
        .as_ref()
        .and_then(|st| name_clash(st, &plan).ok().flatten())
    {
        eprintln!("warning: {}", clash.message());
    }
    let statuses = statuses(&plan, &runs, store.as_ref());
    let shown: Vec<PlanStatus> = statuses.iter().map(|s| s.for_plan()).collect();
    let out = match a.format {
        PlanFormat::Text => render::text(&plan, &shown),
        PlanFormat::Dot => render::dot(&plan, &shown),
        PlanFormat::Json => render::json(&plan, &shown),
    };
    print!("{out}");
    Ok(())
}
