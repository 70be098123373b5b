//! The platform's own rules, in one place: what it writes, reads, refuses and undoes, so that
//! orgctl writes exactly what the platform itself would. One module per area: its agent's id,
//! row and declared plugin ([`agent`]); provisioning through its ensure route ([`provision`]);
//! how it reads the encryption key and secret values ([`keys`]) and the channel fields that key
//! also protects ([`channels`]); which workspaces its restart skips and its HTTP API
//! ([`restart`]); the vendor keys it refuses on platform-managed models ([`vendor_keys`]); how it
//! counts, caps and audits org API tokens ([`tokens`]); the org tree's depth limits,
//! sibling-name rule and tombstone ([`tree`]); and its registration gate ([`MODEL_KEY`],
//! [`missing_model_is_seeded`]). Command modules call these; nothing here renders or prompts.

pub mod agent;
pub mod channels;
pub mod crypto;
pub mod keys;
pub mod provision;
pub mod restart;
pub mod tokens;
pub mod tree;
pub mod vendor_keys;

/// The workspace secret a platform agent needs: the platform marks an agent without it failed
/// at registration (the MODEL gate).
pub const MODEL_KEY: &str = "MODEL";

/// A secret that outranks MODEL: when it is set (on the agent, or globally) the agent runs the
/// model it names, whatever MODEL says.
pub const MODEL_OVERRIDE_KEY: &str = "MOLECULE_MODEL";

/// The MODEL rule, in one place. The platform's register gate marks an agent `failed` when it
/// registers without a MODEL workspace secret; but when the platform provisions the agent
/// through its ensure route (what `--provision` calls) it seeds MODEL itself when none is set.
/// So an agent without MODEL is fine exactly when its next start goes through ensure: the
/// current run provisions it (`--provision` on an agent it acts on), or, for `status`, the
/// agent is in a state where `--provision` acts (nothing runs or starts it, so the operator's
/// `--provision` is what starts it). Any other start (the platform's own restart of a running
/// or booting agent, a wake) registers it without MODEL, and it fails.
pub fn missing_model_is_seeded(next_start_through_ensure: bool) -> bool {
    next_start_through_ensure
}
