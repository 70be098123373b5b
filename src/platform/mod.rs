//! The platform's own rules, in one place: what it writes, reads, refuses and undoes, so that
//! orgctl writes exactly what the platform itself would. One module per area: its agent's id,
//! row and declared plugin ([`agent`]); how it reads the encryption key and secret values
//! ([`keys`]) and the channel fields that key also protects ([`channels`]); which workspaces its
//! restart skips and its HTTP API ([`restart`]); the vendor keys it refuses on platform-managed
//! models ([`vendor_keys`]); how it counts, caps and audits org API tokens ([`tokens`]); the org
//! tree's depth limits, sibling-name rule and tombstone ([`tree`]); and its registration gate
//! ([`MODEL_KEY`]). Command modules call these; nothing here renders or prompts.

pub mod agent;
pub mod channels;
pub mod keys;
pub mod provision;
pub mod restart;
pub mod tokens;
pub mod tree;
pub mod vendor_keys;

/// The workspace secret a platform agent needs: the platform marks an agent without it failed
/// at registration (SPEC §1, the MODEL gate).
pub const MODEL_KEY: &str = "MODEL";
