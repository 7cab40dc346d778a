//! The result commands, which read the database only: `results`, `query`, `plot`, `report`
//! and `export`.

use std::path::PathBuf;

use rkd_orch::exit::CliError;
use rkd_orch::plot::{self, Filters, Request};
use rkd_orch::report;
use rkd_orch::results::pivot::PivotSpec;
use rkd_orch::results::{self, Direction, Format};
use rkd_orch::run::RunsDir;
use rkd_orch::store::Store;

use super::{open_store, optional_recipe_name, recipe_name, FilterArgs, RunsArg, SetArgs};

#[derive(clap::Args)]
pub struct ResultsArgs {
    recipe: Option<String>,
    #[command(flatten)]
    runs: RunsArg,
    #[command(flatten)]
    pub sets: SetArgs,
    /// Pivot this metric (e.g. recall@1); without --by, one row per stage.
    #[arg(long, value_name = "M")]
    metric: Option<String>,
    /// Group by a swept parameter (label like `p`, path like `loss.cc.p`, or `stage`);
    /// repeat: the last gives the columns, the others the rows. Cells are mean ± std
    /// over seeds.
    #[arg(long, value_name = "PARAM")]
    by: Vec<String>,
    #[command(flatten)]
    filters: FilterArgs,
    /// Which way is better, when the metric's name does not say (or to override it).
    #[arg(long, value_enum, value_name = "DIRECTION")]
    best: Option<Direction>,
    /// Side by side: two stages of RECIPE, or (without RECIPE) two recipes.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    compare: Vec<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(clap::Args)]
pub struct QueryArgs {
    sql: String,
    #[command(flatten)]
    runs: RunsArg,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}`: expected WIDTHxHEIGHT, e.g. 1100x680"))?;
    let px = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (200..=8000).contains(n))
            .ok_or_else(|| format!("`{v}`: expected a number of pixels from 200 to 8000"))
    };
    Ok((px(w)?, px(h)?))
}

#[derive(clap::Args)]
pub struct PlotArgs {
    recipe: Option<String>,
    /// FILE.png or FILE.svg.
    #[arg(long, short)]
    output: PathBuf,
    #[command(flatten)]
    runs: RunsArg,
    #[command(flatten)]
    pub sets: SetArgs,
    /// The metric (default recall@1; with --curves, loss/total or loss/<term>).
    #[arg(long, value_name = "M")]
    metric: Option<String>,
    /// The parameter on the x axis (default: the first swept one that is not a seed).
    #[arg(long, value_name = "PARAM")]
    x: Option<String>,
    /// One line per value of this parameter (repeatable; default: the other swept ones).
    #[arg(long, value_name = "PARAM")]
    by: Vec<String>,
    #[command(flatten)]
    filters: FilterArgs,
    /// Training curves: per-epoch loss of each training stage (of each term, for one).
    #[arg(long, conflicts_with_all = ["recall", "x"])]
    curves: bool,
    /// Recall@K against K, per evaluated stage (or per --by group).
    #[arg(long, conflicts_with = "x")]
    recall: bool,
    /// Width x height in pixels.
    #[arg(long, default_value = "1100x680", value_parser = parse_size)]
    size: (u32, u32),
}

#[derive(clap::Args)]
pub struct ReportArgs {
    recipe: String,
    #[command(flatten)]
    runs: RunsArg,
    #[command(flatten)]
    pub sets: SetArgs,
    /// Default: RUNS_DIR/reports/RECIPE.html.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Json,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    recipe: Option<String>,
    #[command(flatten)]
    runs: RunsArg,
    #[command(flatten)]
    pub sets: SetArgs,
    #[arg(long, value_enum, default_value = "csv")]
    format: ExportFormat,
    /// Write here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// Prints the results table(s) of `recipe` (or of every recipe) on stdout; an error if there
/// is nothing to print.
pub fn print_results(runs: &RunsDir, recipe: Option<&str>, format: Format) -> Result<(), CliError> {
    let store = Store::open_for_reading(&runs.db())?;
    match results::table_from(&store, recipe, format)? {
        Some(text) => {
            print!("{text}");
            Ok(())
        }
        None => Err(CliError::NoResults {
            recipe: recipe.map(str::to_string),
            db: runs.db(),
        }),
    }
}

pub fn results(a: ResultsArgs) -> Result<(), CliError> {
    let name = optional_recipe_name(a.recipe.as_deref(), &a.sets)?;
    let plain = a.metric.is_none()
        && a.by.is_empty()
        && a.compare.is_empty()
        && a.filters.filters.is_empty()
        && a.filters.stage.is_none();
    let runs = a.runs.dir();
    if plain {
        return print_results(&runs, name.as_deref(), a.format);
    }
    let store = open_store(&runs)?;
    let text = if let [x, y] = a.compare.as_slice() {
        let comparison = match &name {
            Some(recipe) => results::compare_stages_from(&store, recipe, x, y),
            None => results::compare_recipes_from(&store, x, y),
        };
        comparison?.render(a.format)
    } else {
        let filters = results::select::parse_filters(&a.filters.filters)?;
        let recipe = match name {
            Some(r) => r,
            None => results::only_recipe(&store)?,
        };
        // --by alone pivots recall@1, the metric every evaluation has.
        let metric = a.metric.unwrap_or_else(|| "recall@1".into());
        let spec = PivotSpec {
            metric,
            by: a.by,
            filters,
            stage: a.filters.stage,
            direction: a.best,
        };
        results::pivot_from(&store, &recipe, &spec)?.render(a.format)
    };
    print!("{text}");
    Ok(())
}

pub fn query(a: QueryArgs) -> Result<(), CliError> {
    let store = open_store(&a.runs.dir())?;
    let q = store.query(&a.sql)?;
    print!("{}", results::format::query_table(&q).render(a.format));
    Ok(())
}

pub fn plot(a: PlotArgs) -> Result<(), CliError> {
    let request = if a.curves {
        Request::Curves { metric: a.metric }
    } else if a.recall {
        Request::Recall { by: a.by }
    } else {
        Request::Sweep {
            metric: a.metric.unwrap_or_else(|| "recall@1".into()),
            x: a.x,
            by: a.by,
        }
    };
    let name = optional_recipe_name(a.recipe.as_deref(), &a.sets)?;
    let store = open_store(&a.runs.dir())?;
    let filters = results::select::parse_filters(&a.filters.filters)?;
    let recipe = match name {
        Some(r) => r,
        None => results::only_recipe(&store)?,
    };
    let f = Filters {
        stage: a.filters.stage,
        filters,
    };
    let fig = plot::figure_from(&store, &recipe, &request, &f)?;
    plot::save(&fig, &a.output, a.size)?;
    // The figure's sources, for the notebook or the paper's appendix.
    println!("{}: {}", a.output.display(), fig.title);
    for (name, key) in &fig.sources {
        println!("  {name}  {key}");
    }
    Ok(())
}

pub fn report(a: ReportArgs) -> Result<(), CliError> {
    let recipe = recipe_name(&a.recipe, &a.sets)?;
    let runs = a.runs.dir();
    let store = open_store(&runs)?;
    let path = a.output.unwrap_or_else(|| {
        runs.root
            .join("reports")
            .join(format!("{}.html", report::file_stem(&recipe)))
    });
    let summary = report::write(&store, &recipe, &runs.db(), &path)?;
    eprintln!("{summary}");
    println!("{}", path.display());
    Ok(())
}

pub fn export(a: ExportArgs) -> Result<(), CliError> {
    let name = optional_recipe_name(a.recipe.as_deref(), &a.sets)?;
    let store = open_store(&a.runs.dir())?;
    let table = results::export_from(&store, name.as_deref())?;
    let text = match a.format {
        ExportFormat::Csv => table.csv(),
        ExportFormat::Json => format!("{}\n", table.json_string()),
    };
    match a.output {
        None => print!("{text}"),
        Some(path) => {
            std::fs::write(&path, text).map_err(|source| CliError::Write {
                path: path.clone(),
                source,
            })?;
            eprintln!("{} rows written to {}", table.rows.len(), path.display());
        }
    }
    Ok(())
}
