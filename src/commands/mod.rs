//! One file (or folder) per subcommand: arguments → checked input → an operation → rendering.
//! The layer under [`crate::cli`]'s callers and over [`crate::ops`].
pub mod audit;
pub mod backfill;
pub(crate) mod change;
pub mod completions;
pub mod dev;
pub mod install;
pub mod secret;
pub mod status;
pub mod token;
