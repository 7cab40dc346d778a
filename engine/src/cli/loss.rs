//! `rkd-orch loss eval` and `rkd-orch loss bench`: the losses on their own.

use std::path::PathBuf;

use rkd_orch::exit::CliError;

#[derive(clap::Subcommand)]
pub enum LossCmd {
    /// Compute losses and gradients (float64) for cases in the golden JSON format.
    Eval {
        /// `{"cases": [{"name", "loss", "params", "student", "teacher", ...}]}`
        #[arg(long)]
        input: PathBuf,
        /// Where to write `{"cases": [{"name", "value", "grad_student"}]}`.
        #[arg(long)]
        output: PathBuf,
    },
    /// Time one loss's forward+backward in float32 (median over repeats after a warm-up).
    Bench {
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(rkd_orch::lossbench::LOSSES))]
        loss: String,
        #[arg(long, default_value_t = 128)]
        n: usize,
        #[arg(long, default_value_t = 512)]
        dim: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 7)]
        repeat: usize,
        /// Relation masking: keep this fraction of the relations (rkd_*, sp, cc).
        #[arg(long)]
        keep: Option<f64>,
        /// Print one JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: LossCmd) -> Result<(), CliError> {
    match cmd {
        LossCmd::Eval { input, output } => eval(input, output),
        LossCmd::Bench {
            loss,
            n,
            dim,
            threads,
            repeat,
            keep,
            json,
        } => {
            let r = rkd_orch::lossbench::bench(&loss, n, dim, threads, repeat, keep)?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("serialisable"));
            } else {
                println!(
                    "{:13} N={:5} D={} threads={} keep={} fwd+bwd median {:9.2} ms (min {:.2})  peak RSS {:.0} MiB",
                    r.loss, r.n, r.dim, r.threads, r.keep, r.median_ms, r.min_ms, r.peak_rss_mib
                );
            }
            Ok(())
        }
    }
}

fn eval(input: PathBuf, output: PathBuf) -> Result<(), CliError> {
    let bytes = std::fs::read(&input).map_err(|source| CliError::Read {
        path: input.clone(),
        source,
    })?;
    let cases: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| CliError::NotJson {
            path: input.clone(),
            source,
        })?;
    let out = rkd_orch::ml::loss::eval_cases(&cases).map_err(|source| CliError::LossCases {
        path: input.clone(),
        source,
    })?;
    let n = out["cases"].as_array().map_or(0, Vec::len);
    let text = serde_json::to_vec_pretty(&out).expect("serialisable");
    std::fs::write(&output, text).map_err(|source| CliError::Write {
        path: output.clone(),
        source,
    })?;
    eprintln!("{n} cases evaluated; written to {}", output.display());
    Ok(())
}
