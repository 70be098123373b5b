//! What several commands share: the long help's tail (exit codes and environment), the
//! duration parser, the platform API option, the restart deadline, and the fleet shard options
//! of every `backfill` command.

use std::time::Duration;

use clap::Args;

/// The long help's tail: exit codes (`$four`: the line of exit 4, for the commands that accept
/// --detailed-exitcode, else "") and the environment.
macro_rules! after_help {
    ($four:literal) => {
        concat!(
            "Exit codes:\n  0    done, or nothing to do\n  1    failed (nothing was changed unless the message says what did)\n  2    bad input or usage\n  3    refused by a guard or precondition (incompatible schema, lock held, missing MODEL,\n       drift on rollback, confirmation needed)\n",
            $four,
            "  130  interrupted\n\nEnvironment:\n  DATABASE_URL             tenant database when --database-url is not given\n  SECRETS_ENCRYPTION_KEY   AES-256 key for secret values (base64 of 32 bytes, or 32 raw bytes)\n  MOLECULE_ENV             prod/production: refuse to write secrets without a usable key\n  NO_COLOR                 disable colour\n  CI                       set (not false/0): never prompt; changes need --yes\n  PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE PGSSLMODE PGSSLROOTCERT PGPASSFILE\n                           fill what the URL leaves out (the URL wins)"
        )
    };
}

pub(crate) const AFTER_HELP: &str = after_help!("");
/// For install-platform-agent and backfill run, which take --detailed-exitcode.
pub(crate) const AFTER_HELP_PENDING: &str =
    after_help!("  4    with --dry-run --detailed-exitcode: changes are pending\n");
/// For the top level: which commands exit 4.
pub(crate) const AFTER_HELP_TOP: &str = after_help!(
    "  4    with --dry-run --detailed-exitcode (install-platform-agent, backfill run): changes are pending\n"
);

/// Which part of the fleet this worker takes (run, status and rollback alike).
#[derive(Debug, Args, Clone, Default)]
pub struct ShardArgs {
    /// Only the tenants whose stable hash of NAME modulo N is I-1 (e.g. 2/8). The hash is the
    /// first 8 bytes of sha256(NAME) as a big-endian integer: the same on every machine.
    #[arg(long, value_name = "I/N", conflicts_with = "shards")]
    pub shard: Option<String>,
    /// N shards, this worker's taken from JOB_COMPLETION_INDEX (0-based, as a Kubernetes
    /// Indexed Job sets it): shard JOB_COMPLETION_INDEX+1 of N.
    #[arg(long, value_name = "N")]
    pub shards: Option<u64>,
}

/// Parse "500ms", "5s", "2m", "1h" (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 500ms, 5s, 2m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 7.0).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--platform-url`: the platform's HTTP API, for the commands that call it.
#[derive(Debug, Args, Clone)]
pub struct PlatformArgs {
    /// Base URL of the platform API (needs MOLECULE_ADMIN_TOKEN): provisioning for
    /// install-platform-agent --provision, restarts for secret changes. Without it a secret
    /// change prints the restart plan instead of restarting.
    #[arg(
        long,
        env = "MOLECULE_PLATFORM_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub platform_url: Option<String>,
}

/// `--restart-timeout`: the deadline of a secret change's restart calls.
#[derive(Debug, Args, Clone)]
pub struct RestartDeadlineArgs {
    /// Deadline for all the restart calls together (e.g. 90s, 10m): calls not started by
    /// then are reported as not attempted (the secret stays committed; exit 1).
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_duration)]
    pub restart_timeout: Duration,
}
