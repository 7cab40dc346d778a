//! `rkd-orch stage --spec FILE` (hidden): one stage, in the process the coordinator started.

use std::path::PathBuf;

use rkd_orch::exit::CliError;

#[derive(clap::Args)]
pub struct StageArgs {
    #[arg(long)]
    spec: PathBuf,
}

pub fn run(a: StageArgs) -> Result<(), CliError> {
    // A debugging aid, used by the tests of the coordinator's kill path: a stage that
    // ignores Ctrl-C/SIGTERM, as a stuck one would.
    if std::env::var_os("RKD_ORCH_STAGE_IGNORE_SIGNALS").is_some() {
        // SAFETY: setting a signal disposition to SIG_IGN before other threads exist.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }
    // A NaN/inf loss exits with its own code (`exit::NONFINITE`): the coordinator does not
    // retry it.
    Ok(rkd_orch::stage::run_from_file(&a.spec)?)
}
