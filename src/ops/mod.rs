//! The domain: plain-data plans computed read-only and applied on a connection, each owning
//! its SQL. No clap types, no tables: [`crate::commands`] turns arguments into an operation's
//! input and renders its result.
pub mod backfill;
pub mod dev;
pub mod evidence;
pub mod install;
pub mod org;
pub mod provision;
pub mod rekey;
pub mod secret;
pub mod status;
pub mod token;
