//! The platform's own rules, in one place (STYLE.md "the shape to grow into"): its agent's id,
//! row and declared plugin ([`agent`]), how it reads the encryption key and secret values ([`keys`]), which workspaces its restart skips and its HTTP
//! API ([`restart`]), and its registration gate ([`MODEL_KEY`]). Command modules call these;
//! nothing here renders or prompts.

pub mod agent;
pub mod keys;
pub mod provision;
pub mod restart;

/// The workspace secret a platform agent needs: the platform marks an agent without it failed
/// at registration (SPEC §1, the MODEL gate).
pub const MODEL_KEY: &str = "MODEL";
