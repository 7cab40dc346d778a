//! The upkeep of a runs directory: `rkd-orch gc` (cache entries nothing refers to) and
//! `rkd-orch db rebuild` (the database, again from the cache).

use rkd_orch::exit::CliError;

use super::RunsArg;

#[derive(clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    runs: RunsArg,
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Subcommand)]
pub enum DbCmd {
    /// Rebuild `results.sqlite` from `cache/` and `recipes/` (the old one is kept as a
    /// backup beside it).
    Rebuild {
        #[command(flatten)]
        runs: RunsArg,
    },
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

pub fn gc(a: GcArgs) -> Result<(), CliError> {
    let runs = a.runs.dir();
    let found = if a.dry_run {
        rkd_orch::gc::find(&runs)
    } else {
        rkd_orch::gc::collect(&runs)
    }?;
    let bytes: u64 = found.iter().map(|g| g.bytes).sum();
    for g in &found {
        println!(
            "{} {} ({:.1} MiB; {})",
            if a.dry_run { "would remove" } else { "removed" },
            g.path.display(),
            mib(g.bytes),
            g.why
        );
    }
    eprintln!(
        "{} {} item{}, {:.1} MiB",
        if a.dry_run { "would free" } else { "freed" },
        found.len(),
        if found.len() == 1 { "" } else { "s" },
        mib(bytes)
    );
    Ok(())
}

pub fn db(cmd: DbCmd) -> Result<(), CliError> {
    let DbCmd::Rebuild { runs } = cmd;
    let runs = runs.dir();
    let r = rkd_orch::rebuild::rebuild(&runs)?;
    for c in &r.corrupt {
        eprintln!("warning: corrupt cache entry not ingested: {c}");
    }
    eprintln!(
        "rebuilt {}: {} stages from the cache, {} bindings of {} recipe{}{}",
        runs.db().display(),
        r.entries,
        r.bindings,
        r.recipes,
        if r.recipes == 1 { "" } else { "s" },
        r.backup
            .map(|b| format!("; the old database is {}", b.display()))
            .unwrap_or_default()
    );
    Ok(())
}
