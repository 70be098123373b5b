//! The domain: plain-data plans computed read-only and applied on a connection, each owning
//! its SQL. No clap types, no tables: [`crate::commands`] turns arguments into an operation's
//! input and renders its result.
pub mod rekey;
pub mod secret;
