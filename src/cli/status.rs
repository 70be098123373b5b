//! `orgctl status`'s options.

use clap::Args;

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    /// How many offending rows to name per finding (and roots to list) before summarising
    /// as a count; 0 shows counts only.
    #[arg(
        long,
        default_value_t = 20,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(0..=10_000)
    )]
    pub limit: u32,
}
