//! The commands of `rkd-orch`, one file per group: each holds its arguments (a clap `Args`
//! struct) and what it does; errors go back to `main` as [`CliError`]s. What several
//! commands share — the recipe options, the runs directory, the stage filters, loading a
//! recipe — is here.

use std::path::{Path, PathBuf};

use rkd_orch::exit::CliError;
use rkd_orch::plan::Plan;
use rkd_orch::recipe;
use rkd_orch::run::RunsDir;
use rkd_orch::store::Store;

pub mod gc;
pub mod loss;
pub mod plan;
pub mod results;
pub mod run;
pub mod stage;
pub mod status;

/// How a recipe file is read: `--set PATH=VALUE` (repeatable) overrides any key of it,
/// `--name NAME` the name its results are kept under.
#[derive(clap::Args)]
pub struct SetArgs {
    /// Override a recipe key, e.g. `--set stages.teacher.epochs=2` or
    /// `--set 'stages.*.epochs=1'` (every stage that has epochs); repeatable. The value is
    /// YAML; the override is part of each stage's content key.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Keep the results under this name instead of the recipe's `name:` (a copy of a
    /// recipe, or a smoke run beside the real one). Names are not part of content keys:
    /// stages already computed under another name are reused.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The most stages the recipe may expand to: a larger matrix, chain or fan-out is
    /// refused at its line before anything is built (docs/engine.md, "Limits").
    #[arg(long, value_name = "N", default_value_t = recipe::expand::DEFAULT_MAX_STAGES)]
    pub max_stages: usize,
}

#[derive(clap::Args)]
pub struct RunsArg {
    /// Where the cache, logs and results database live.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    pub runs_dir: PathBuf,
}

impl RunsArg {
    pub fn dir(&self) -> RunsDir {
        RunsDir::new(&self.runs_dir)
    }
}

/// Choosing stages for the result commands.
#[derive(clap::Args)]
pub struct FilterArgs {
    /// Keep stages whose parameter has this value, e.g. `--where sampler=random`; repeatable.
    #[arg(long = "where", value_name = "PARAM=VALUE")]
    pub filters: Vec<String>,
    /// Keep one declared stage (e.g. `eval`) or one stage by its full name.
    #[arg(long, value_name = "NAME")]
    pub stage: Option<String>,
}

/// `--name`: a recipe name that can also name its files (`runs/recipes/NAME.json`, the
/// report), so nothing is ever written outside the runs directory.
fn check_name(name: &str) -> Result<(), CliError> {
    // The same rule as a recipe's `name:` (it names the same things: a file under runs/,
    // rows of the database).
    recipe::keys::check_name(name, true).map_err(CliError::Name)
}

/// Parses, validates and plans a recipe (named by `--name` where given).
pub fn load_plan(path: &Path, args: &SetArgs) -> Result<Plan, CliError> {
    if let Some(name) = &args.name {
        check_name(name)?;
    }
    let sets = args
        .set
        .iter()
        .enumerate()
        .map(|(i, raw)| recipe::SetArg::parse(raw, i + 1))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::Set)?;
    let recipe = recipe::load_with(path, &sets).map_err(CliError::Recipe)?;
    let mut plan = rkd_orch::plan::build(recipe).map_err(|error| CliError::Plan {
        path: path.to_path_buf(),
        error,
    })?;
    if let Some(name) = &args.name {
        plan.recipe = name.clone();
    }
    Ok(plan)
}

/// A recipe argument: a path names a recipe file (its `name:`, with `--set`s applied to
/// resolve it, or `--name`), anything else a recipe name.
pub fn recipe_name(arg: &str, sets: &SetArgs) -> Result<String, CliError> {
    if Path::new(arg).is_file() {
        load_plan(Path::new(arg), sets).map(|p| p.recipe)
    } else if let Some(name) = &sets.name {
        check_name(name).map(|()| name.clone())
    } else {
        Ok(arg.to_string())
    }
}

/// An optional recipe argument; `--name` alone names the recipe too.
pub fn optional_recipe_name(arg: Option<&str>, sets: &SetArgs) -> Result<Option<String>, CliError> {
    match (arg, &sets.name) {
        (Some(a), _) => recipe_name(a, sets).map(Some),
        (None, Some(name)) => check_name(name).map(|()| Some(name.clone())),
        (None, None) => Ok(None),
    }
}

/// Opens the database for a read command: read-only, never migrated (an older schema is
/// upgraded in memory), refused when it is not an rkd-orch database.
pub fn open_store(runs: &RunsDir) -> Result<Store, CliError> {
    Ok(Store::open_for_reading(&runs.db())?)
}
