//! The platform's own rules, in one place (STYLE.md "the shape to grow into"): how it reads the
//! encryption key and secret values ([`keys`]), which workspaces its restart skips and its HTTP
//! API ([`restart`]), its registration gate ([`MODEL_KEY`]), and the org tree's depth limits,
//! sibling-name rule and tombstone ([`tree`]). Command modules call these; nothing here renders
//! or prompts.

pub mod keys;
pub mod provision;
pub mod restart;
pub mod tree;

/// The workspace secret a platform agent needs: the platform marks an agent without it failed
/// at registration (SPEC §1, the MODEL gate).
pub const MODEL_KEY: &str = "MODEL";
