//! `rkd-orch status`: what is done, running, interrupted, failed or still to run for a
//! recipe (the statuses are `rkd_orch::run::status`'s).

use std::collections::BTreeMap;
use std::path::PathBuf;

use rkd_orch::exit::CliError;
use rkd_orch::plan::render::name_width;
use rkd_orch::results::format::{pad, Align};
use rkd_orch::run::status::{statuses, STATES};
use rkd_orch::store::Store;

use super::{load_plan, RunsArg, SetArgs};

#[derive(clap::Args)]
pub struct StatusArgs {
    recipe: PathBuf,
    #[command(flatten)]
    runs: RunsArg,
    #[command(flatten)]
    pub sets: SetArgs,
}

pub fn run(a: StatusArgs) -> Result<(), CliError> {
    let plan = load_plan(&a.recipe, &a.sets)?;
    let runs = a.runs.dir();
    // Without a database nothing is known of failures; the cache still says what is done.
    let store = Store::open_for_reading(&runs.db()).ok();
    let statuses = statuses(&plan, &runs, store.as_ref());
    let w = name_width(&plan);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut lines = Vec::new();
    for &i in &plan.order {
        let s = &plan.stages[i];
        let state = statuses[i].state();
        *counts.entry(state).or_default() += 1;
        lines.push(format!(
            "  {}  {:<11}  {}  {}",
            pad(&s.name, w, Align::Left),
            state,
            s.short_key(),
            statuses[i].detail()
        ));
    }
    let summary: Vec<String> = STATES
        .iter()
        .filter_map(|k| counts.get(k).map(|n| format!("{n} {k}")))
        .collect();
    println!(
        "{} ({}): {} stages: {}",
        plan.recipe,
        plan.file,
        plan.stages.len(),
        summary.join(", ")
    );
    for l in lines {
        println!("{}", l.trim_end());
    }
    Ok(())
}
