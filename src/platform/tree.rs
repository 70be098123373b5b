//! The platform's rules about the org tree: how deep its lookups reach, which sibling names it
//! allows, what a deleted agent looks like, and what a former root loses. Install, rollback and
//! status ask these; nothing here renders or queries.

use uuid::Uuid;

/// How far the platform's lookups reach down or up a parent chain, and what breaks past each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthLimit {
    /// The most hops below the org root (the agent, once installed) that still work.
    pub hops: i32,
    /// What stops working for a workspace deeper than `hops`, said of "them".
    pub beyond: &'static str,
}

/// The agent reaches at most this many hops down its org.
pub const AGENT_REACH: DepthLimit = DepthLimit {
    hops: 33,
    beyond: "the agent cannot reach them",
};

/// Memory namespaces resolve at most this many levels up a chain.
pub const MEMORY_RESOLVE: DepthLimit = DepthLimit {
    hops: 50,
    beyond: "their memory namespaces no longer resolve up to the org root (org-wide memories unreachable)",
};

/// The org-root lookup gives up beyond this many steps: isolation checks then fail closed and
/// the plugin allowlist (resolved at the org root) fails open. A chain longer than this, or a
/// cycle, is outside every org: orgctl reports it as broken.
pub const ORG_ROOT_LOOKUP: DepthLimit = DepthLimit {
    hops: 64,
    beyond: "the platform's org-root lookup gives up on them: isolation checks fail closed and the plugin allowlist fails open",
};

/// The depth limits, shallowest first.
pub const DEPTH_LIMITS: [DepthLimit; 3] = [AGENT_REACH, MEMORY_RESOLVE, ORG_ROOT_LOOKUP];

/// What a root loses on the platform when an install puts it under the agent (the platform's
/// own installer does the same without a word).
pub const FORMER_ROOT_LOSES: &str = "former roots lose root-only behaviour on the platform: their org-wide memories become unreachable and their team namespaces merge";

pub use crate::error::SIBLING_NAME_INDEX;

/// SQL predicate on `alias` for a row the sibling-name rule counts, exactly as the index's own
/// predicate (a NULL status is not counted; `::text` also fits an older tenant's TEXT status).
/// `alias` is a constant of the caller's SQL, never input.
pub fn name_counts_sql(alias: &str) -> String {
    format!("{alias}.status::text <> '{TOMBSTONE_STATUS}'")
}

/// Whether a row with this status counts for the sibling-name rule ([`name_counts_sql`]).
pub fn name_counts(status: Option<&str>) -> bool {
    matches!(status, Some(s) if s != TOMBSTONE_STATUS)
}

/// The status of a deleted workspace, and of the platform's deleted agent.
pub const TOMBSTONE_STATUS: &str = "removed";

/// Two live workspaces that a change would put under the same parent with the same name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameClash {
    pub name: String,
    /// The parent both would share; None: the top level.
    pub parent: Option<Uuid>,
    /// The workspace the change moves or inserts there.
    pub moving: Uuid,
    /// The live workspace already there.
    pub existing: Uuid,
}

impl NameClash {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::sibling_name_violation;

    #[test]
    fn limits_are_ordered() {
        assert!(DEPTH_LIMITS.windows(2).all(|w| w[0].hops < w[1].hops));
    }

    #[test]
    fn only_live_rows_count_for_names() {
        assert!(name_counts(Some("online")));
        assert!(name_counts(Some("provisioning")));
        assert!(!name_counts(Some("removed")));
        assert!(!name_counts(None));
    }

    #[test]
    fn a_violation_names_the_key() {
        let d = "Key (COALESCE(parent_id, '00000000-0000-0000-0000-000000000000'::uuid), name)=(00000000-0000-0000-0000-000000000000, Acme\u{1b}HQ) already exists.";
        let m = sibling_name_violation(Some(d));
        assert!(
            m.contains("(parent, name: 00000000-0000-0000-0000-000000000000, Acme HQ)"),
            "{m}"
        );
        assert!(!m.contains("23505"));
        assert!(sibling_name_violation(None).starts_with("two live workspaces"));
    }
}
