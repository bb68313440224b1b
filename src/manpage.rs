//! Manual pages generated from the CLI definition, so they document exactly what clap parses.
//! `man/` holds them, kept in sync by a test (`SENTINEL_BLESS=1 cargo test manpages`).

use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;

/// Writes `sentinel.1` and a page per subcommand (`sentinel-claim.1`, …) into `dir`.
pub fn generate_to(dir: &Path) -> std::io::Result<()> {
    clap_mangen::generate_to(Cli::command(), dir)
}
