//! The platform's own rules, in one place (STYLE.md "the shape to grow into"): how it reads the
//! encryption key and secret values ([`keys`]), which workspaces its restart skips and its HTTP
//! API ([`restart`]), how it counts, caps and audits org API tokens ([`tokens`]), and its
//! registration gate ([`MODEL_KEY`]). Command modules call these;
//! nothing here renders or prompts.

pub mod keys;
pub mod provision;
pub mod restart;
pub mod tokens;

/// The workspace secret a platform agent needs: the platform marks an agent without it failed
/// at registration (SPEC §1, the MODEL gate).
pub const MODEL_KEY: &str = "MODEL";
