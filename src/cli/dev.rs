//! `orgctl dev …`: a throwaway local PostgreSQL with a sample org.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start (or reuse) a throwaway PostgreSQL with the platform schema and a sample org;
    /// prints the DATABASE_URL on stdout.
    ///
    /// Example: export DATABASE_URL=$(orgctl dev up)
    Up(DevUpArgs),
    /// Stop the throwaway PostgreSQL and delete its data.
    Down(DevDirArgs),
    /// Add a large generated org to a dev database (for benchmarks).
    Seed(DevSeedArgs),
}

#[derive(Debug, Args, Clone)]
pub struct DevDirArgs {
    /// Where the dev server keeps its data. Default: $TMPDIR/orgctl-dev-<uid> (/tmp unless
    /// TMPDIR is set), the same whatever the current directory. `dev down` only stops and
    /// deletes a directory that `dev up` created (its marker must name the data directory's
    /// system identifier); anything else is refused (exit 3) untouched.
    #[arg(long, value_name = "DIR", env = "ORGCTL_DEV_DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct DevUpArgs {
    #[command(flatten)]
    pub dir: DevDirArgs,
    /// Loopback port to listen on. Default: a free port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Also make N sample tenants (databases orgctl_dev_t1 … orgctl_dev_tN, each with the
    /// sample org; existing ones are kept as they are) and write a ready tenants file for
    /// `backfill` into the dev directory (tenants.txt; its path is printed on stderr, and in
    /// the JSON as tenants_file).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub tenants: Option<u32>,
}

#[derive(Debug, Args, Clone)]
pub struct DevSeedArgs {
    /// Number of root workspaces.
    #[arg(long, default_value_t = 1000)]
    pub roots: u32,
    /// Total number of workspaces (roots included).
    #[arg(long, default_value_t = 100_000)]
    pub workspaces: u32,
    /// Total number of tokens.
    #[arg(long, default_value_t = 1_000_000)]
    pub tokens: u32,
    /// How many of the tokens are anchored to roots (the rest to non-roots or unanchored).
    #[arg(long, default_value_t = 300_000)]
    pub tokens_on_roots: u32,
    /// Percentage of tokens that are revoked.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub revoked_pct: u32,
    /// Allowlist rows spread over the roots.
    #[arg(long, default_value_t = 50_000)]
    pub allowlist: u32,
    /// Distinct plugin names (fewer names mean more collisions across roots).
    #[arg(long, default_value_t = 200)]
    pub plugins: u32,
}
