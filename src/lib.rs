//! orgctl: the operator's tool for the org hierarchy of an agent platform's tenant database.
//!
//! [`run`] is the whole program: parse the command line, run the command on a tokio runtime
//! raced against Ctrl-C, print an error once on stderr, and return the exit code. `main.rs`
//! only calls it. The integration tests run the binary, and reach a few pieces through
//! [`testing`].

mod audit;
mod cli;
mod commands;
mod context;
mod db;
mod error;
mod interrupt;
mod ops;
mod output;
mod platform;
mod redact;
mod sys;

use crate::cli::{Cli, Command};
use crate::context::Context;
use crate::error::{Error, Exit, Result};

/// What the integration tests reach inside orgctl besides running the binary: the dev server
/// they start their PostgreSQL with, the platform schema fixture, and a few rules they check
/// independently. Not an API.
#[doc(hidden)]
pub mod testing {
    pub use crate::cli::docs::render_all;
    pub use crate::error::sanitize;
    pub use crate::ops::backfill::{tenants, Shard};
    pub use crate::ops::dev::server as pgserver;
    pub use crate::platform::crypto::token_hash;
    pub use crate::platform::keys::SecretBox;
    pub use crate::redact::mask;
    pub use crate::statements;

    /// Database mechanics and fixtures.
    pub mod db {
        pub use crate::db::{
            DbUrl, PLATFORM_LEGACY_TEXT_STATUS_SQL, PLATFORM_SCHEMA_SQL, TENANT_LOCK,
        };
    }
    /// The dev server's markers and its sample org.
    pub mod dev {
        pub use crate::ops::dev::{DEV_COMMENT, MARKER, SAMPLE_ORG_SQL};
    }
    /// Process control.
    pub mod sys {
        pub use crate::sys::{is_root, kill, set_parent_death_signal};
    }
}

/// Every static SQL statement orgctl sends, as (owning module, name, text); statements built at
/// run time are not listed. The test suite prepares each against the platform's schema and
/// orgctl's own, so a typo or a renamed column fails in seconds.
#[doc(hidden)]
pub fn statements() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut all = Vec::new();
    let mut add = |module: &'static str, list: &[(&'static str, &'static str)]| {
        all.extend(list.iter().map(|(name, sql)| (module, *name, *sql)));
    };
    for list in db::STATEMENTS {
        add("db", list);
    }
    for list in audit::STATEMENTS {
        add("audit", list);
    }
    add("platform::restart", platform::restart::STATEMENTS);
    add("platform::provision", platform::provision::STATEMENTS);
    add("ops::evidence", ops::evidence::STATEMENTS);
    add("ops::org", ops::org::STATEMENTS);
    add("ops::install", ops::install::STATEMENTS);
    add("ops::token", ops::token::STATEMENTS);
    add("ops::status", ops::status::STATEMENTS);
    add("ops::dev", ops::dev::STATEMENTS);
    add("ops::secret", ops::secret::STATEMENTS);
    add("ops::rekey", ops::rekey::STATEMENTS);
    add("ops::backfill", &ops::backfill::statements());
    all
}

/// Run orgctl with the process's arguments; returns the exit code.
pub fn run() -> i32 {
    let parsed = {
        use clap::{CommandFactory, FromArgMatches};
        Cli::command().try_get_matches().and_then(|m| {
            let mut cli = Cli::from_arg_matches(&m)?;
            cli.global.database_url_on_command_line = database_url_on_command_line(&m);
            Ok(cli)
        })
    };
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(msg) = secret_argv_error(&e) {
                print_error(&Error::usage(msg));
                return Exit::Usage.code();
            }
            // --help and --version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.code()
            } else {
                0
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            print_error(&Error::failed(format!("could not start the runtime: {e}")));
            return Exit::Failed.code();
        }
    };
    let terminal = sys::SavedTerminal::save();
    let outcome = runtime.block_on(run_interruptible(cli));
    if matches!(&outcome, Err(e) if e.exit == Exit::Interrupted) {
        // A prompt may have been cut off with echo disabled or the cursor hidden; its line
        // is ended before the error line (no empty line when no prompt was open).
        terminal.restore();
        if output::prompt_line_open() {
            output::stderr("\n");
        }
    }
    // Do not wait for stray blocking tasks (a prompt thread) on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match outcome {
        Ok(exit) => exit.code(),
        Err(e) => {
            print_error(&e);
            e.exit.code()
        }
    }
}

async fn run_interruptible(cli: Cli) -> Result<Exit> {
    // Before anything connects: a reason required and missing is a refusal (exit 2).
    let reason = audit::check_reason(
        cli.global.reason.as_deref(),
        std::env::var("ORGCTL_REQUIRE_REASON").ok().as_deref(),
        cli.command.mutating(),
    )?;
    let ctx = Context::new(&cli, reason);
    // Install the SIGINT/SIGTERM handlers before any work starts.
    drop(interrupt::level());
    let verbose = if cli.global.quiet {
        0
    } else {
        cli.global.verbose
    };
    output::verbose::install(verbose);
    let started = std::time::Instant::now();
    if verbose > 0 {
        let target = ctx
            .url()
            .map(|u| u.target().to_string())
            .unwrap_or_else(|_| "no database".into());
        output::verbose::say(
            verbose,
            &format!(
                "orgctl {}: {} on {target}",
                env!("CARGO_PKG_VERSION"),
                command_name(&cli.command)
            ),
        );
    }
    let r = run_command(&ctx, &cli).await;
    if verbose > 0 {
        output::verbose::say(
            verbose,
            &format!(
                "{} after {} ms, {} SQL statement(s)",
                match &r {
                    Ok(_) => "done".to_string(),
                    Err(e) => format!("exit {}", e.exit.code()),
                },
                started.elapsed().as_millis(),
                output::verbose::statements()
            ),
        );
    }
    r
}

/// Whether `--database-url` was typed (not taken from `DATABASE_URL`): global options are
/// recorded on the innermost subcommand's matches.
fn database_url_on_command_line(m: &clap::ArgMatches) -> bool {
    let mut m = m;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    m.value_source("database_url") == Some(clap::parser::ValueSource::CommandLine)
}

/// The command path for -v ("token list", "backfill run").
fn command_name(_c: &Command) -> String {
    use clap::CommandFactory;
    let args: Vec<String> = std::env::args().collect();
    let mut cmd = Cli::command();
    let mut path = Vec::new();
    for a in args.iter().skip(1) {
        if let Some(sub) = cmd.find_subcommand(a) {
            path.push(a.clone());
            cmd = sub.clone();
        }
    }
    path.join(" ")
}

async fn run_command(ctx: &Context, cli: &Cli) -> Result<Exit> {
    if let Command::Backfill(_) = cli.command {
        if cli.global.database_url_on_command_line {
            // Ignoring it would let an operator believe it picked the database.
            return Err(Error::usage(
                "backfill takes its databases from the tenants file (--tenants), not --database-url: remove --database-url",
            ));
        }
        // Backfill handles Ctrl-C itself (backfill::Cancel): it starts no new tenant, lets
        // in-flight ones finish or roll back and prints the summary, so it is never dropped.
        return dispatch(ctx, &cli.command).await;
    }
    let work = dispatch(ctx, &cli.command);
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        _ = interrupt::reached(1) => {
            if interrupt::committing() {
                // A COMMIT (or post-commit work) is under way: let it finish so what we report
                // is true, then exit 130 whatever it returned.
                Err(after_commit(work.await))
            } else if interrupt::committed() {
                Err(Error::new(
                    Exit::Interrupted,
                    "interrupted after the change was committed (see orgctl.audit_log); the rest of the output was cut short",
                ))
            } else {
                Err(Error::interrupted())
            }
        }
    }
}

/// The report of a command interrupted during its commit: exit 130, saying what was committed.
fn after_commit(r: Result<Exit>) -> Error {
    if !interrupt::committed() {
        // The COMMIT failed or is in doubt: its own message says which.
        return match r {
            Err(e) => Error::new(Exit::Interrupted, e.message),
            Ok(_) => Error::interrupted(),
        };
    }
    match r {
        Ok(_) => Error::new(
            Exit::Interrupted,
            "interrupted after the change was committed",
        ),
        Err(e) => Error::new(
            Exit::Interrupted,
            format!("interrupted after the change was committed: {}", e.message),
        ),
    }
}

async fn dispatch(ctx: &Context, command: &Command) -> Result<Exit> {
    match command {
        Command::InstallPlatformAgent(args) => commands::install::run(ctx, args).await,
        Command::Dev(cmd) => commands::dev::run(ctx, cmd).await,
        Command::Completions { shell } => commands::completions::run(*shell),
        Command::Token(cmd) => commands::token::run(ctx, cmd).await,
        Command::Secret(cmd) => commands::secret::run(ctx, cmd).await,
        Command::Backfill(cmd) => commands::backfill::run(ctx, cmd).await,
        Command::Status(args) => commands::status::run(ctx, args).await,
        Command::Audit(args) => commands::audit::run(ctx, args).await,
    }
}

/// clap quotes the argument it did not expect. Under `orgctl secret` that argument may be the
/// secret value someone typed on the command line (`secret set WS KEY hunter2`,
/// `--value=hunter2`), so it must not be echoed: say what went wrong without it.
fn secret_argv_error(e: &clap::Error) -> Option<String> {
    use clap::error::ErrorKind;
    if !matches!(
        e.kind(),
        ErrorKind::UnknownArgument
            | ErrorKind::TooManyValues
            | ErrorKind::WrongNumberOfValues
            | ErrorKind::NoEquals
            | ErrorKind::InvalidValue
            | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let mut args = std::env::args_os().skip(1);
    if !args.any(|a| a == "secret") {
        return None;
    }
    Some(
        "unexpected argument to `orgctl secret` (not shown: it may be a secret value); secret values are never read from the command line: pipe the value on stdin, pass --value-file PATH, or type it at the hidden prompt; if you typed a real secret, it is in your shell history: rotate it"
            .to_string(),
    )
}

/// Print an error once, on stderr: one line, control characters stripped, passwords masked.
fn print_error(e: &Error) {
    let msg = redact::mask(&error::sanitize(&e.message));
    output::stderr(&format!("error: {msg}\n"));
}
