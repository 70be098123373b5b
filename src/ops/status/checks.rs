//! Each check of `orgctl status`: a verdict on the facts the reads gathered, the message that
//! explains it, and the command that fixes it (as data, null when the fix is by hand).

use super::read::Facts;
use super::{AgentInfo, Check, Finding, RootRow, Severity};
use crate::error::sanitize;
use crate::ops::org::MAX_DEPTH;
use crate::platform::agent::REMOVED_STATUS;

/// The names of the checks, in the order they are reported. Stable: scripts key on them.
pub const CHECK_NAMES: &[&str] = &[
    "single_root",
    "platform_agent_is_root",
    "unique_platform_agent",
    "model_secret",
    "tokens_on_root",
    "allowlist_on_root",
    "parent_chains",
    "unanchored_tokens",
    "platform_agent_running",
    "platform_agent_not_removed",
];

/// The checks, in the order of [`CHECK_NAMES`].
const CHECKS: &[fn(&Facts) -> Check] = &[
    single_root,
    platform_agent_is_root,
    unique_platform_agent,
    model_secret,
    tokens_on_root,
    allowlist_on_root,
    parent_chains,
    unanchored_tokens,
    platform_agent_running,
    platform_agent_not_removed,
];

/// The fix of the invariants install restores (one root, the agent at it).
const INSTALL_FIX: &str = "orgctl install-platform-agent --dry-run, then without --dry-run";
/// Stale token anchors (on a non-root, on a former root) all move to the root at once.
const FIX_STALE_TOKENS: &str = "orgctl token anchor --stale --dry-run, then --stale --yes";
/// An unanchored token is anchored one at a time.
const FIX_UNANCHORED: &str = "orgctl token anchor <id or prefix> (each token named below)";
/// A stopped agent that `--provision` acts on.
const FIX_START_AGENT: &str = "orgctl install-platform-agent --provision --wait";
/// A removed agent is brought back.
const FIX_REVIVE: &str = "orgctl install-platform-agent --revive";
/// MODEL written by hand, where provisioning would not seed it.
const FIX_SET_MODEL: &str =
    "orgctl secret set <agent id> MODEL (a model registered for its runtime)";
/// MODEL seeded by the platform as it provisions the agent.
const FIX_PROVISION: &str = "orgctl install-platform-agent --provision";

/// Every check's verdict on `f`, in the order of [`CHECK_NAMES`].
pub(super) fn judge(f: &Facts) -> Vec<Check> {
    CHECKS.iter().map(|check| check(f)).collect()
}

fn single_root(f: &Facts) -> Check {
    let root_count = f.root_count;
    let root_rows = &f.root_rows;
    Check {
        name: "single_root",
        severity: Severity::Error,
        ok: root_count == 1,
        count: root_count,
        rows: if root_count == 1 {
            Vec::new()
        } else {
            root_rows.iter().map(root_finding).collect()
        },
        message: match root_count {
            0 => "no workspace has parent_id NULL: the org has no root".to_string(),
            1 => "exactly one root".to_string(),
            n => format!("{n} roots where the org must have exactly one (the platform agent)"),
        },
        fix: (root_count != 1).then(|| INSTALL_FIX.to_string()),
    }
}

/// Some agent sits at the root, and it is the only root. (Its tier is the platform's: the
/// platform inserts 0 and a re-install preserves whatever it is.)
fn platform_agent_is_root(f: &Facts) -> Check {
    let (agents, misplaced, root_count, lim) =
        (f.agents.total, f.agents.misplaced, f.root_count, f.limit);
    let agent_ok = agents >= 1 && misplaced == 0 && root_count == 1;
    let misplaced_rows: Vec<Finding> = f
        .agent_rows
        .iter()
        .filter_map(|a| {
            a.parent_id.map(|p| Finding {
                table: "workspaces",
                id: a.id.to_string(),
                detail: format!(
                    "\"{}\": kind platform but under {p}, not a root",
                    sanitize(&a.name)
                ),
            })
        })
        .take(lim)
        .collect();
    Check {
        name: "platform_agent_is_root",
        severity: Severity::Error,
        ok: agent_ok,
        count: misplaced,
        rows: misplaced_rows,
        message: if agents == 0 {
            "no platform agent: no workspace has kind='platform'".to_string()
        } else if misplaced > 0 {
            format!("{misplaced} platform agent(s) not at the root")
        } else if !agent_ok {
            "the platform agent is a root, but not the only one".to_string()
        } else {
            "the platform agent is the root".to_string()
        },
        fix: (!agent_ok && agents <= 1).then(|| INSTALL_FIX.to_string()),
    }
}

fn unique_platform_agent(f: &Facts) -> Check {
    let (agents, agent_rows, lim) = (f.agents.total, &f.agent_rows, f.limit);
    Check {
        name: "unique_platform_agent",
        severity: Severity::Error,
        ok: agents <= 1,
        count: if agents > 1 { agents } else { 0 },
        rows: if agents > 1 {
            agent_rows.iter().take(lim).map(agent_finding).collect()
        } else {
            Vec::new()
        },
        message: if agents > 1 {
            format!("{agents} workspaces have kind='platform'; an org has one platform agent")
        } else {
            "at most one workspace has kind='platform'".to_string()
        },
        fix: None,
    }
}

/// An agent without MODEL fails when it registers, unless its next start goes through the
/// platform's ensure (`--provision` acts on it), which seeds MODEL. A MODEL the key at hand
/// cannot open was written under another key (the old one after a rotation): the platform
/// cannot read it either.
fn model_secret(f: &Facts) -> Check {
    let (agents, without_model, agent_rows, lim) = (
        f.agents.total,
        f.agents.without_model,
        &f.agent_rows,
        f.limit,
    );
    let model_fails = without_model - f.model.seeded_on_provision;
    let unreadable = &f.model.unreadable;
    let unreadable_n = unreadable.len() as i64;
    Check {
        name: "model_secret",
        severity: if without_model > 0 && model_fails == 0 && unreadable_n == 0 {
            Severity::Warning
        } else {
            Severity::Error
        },
        ok: agents >= 1 && without_model == 0 && unreadable_n == 0,
        count: without_model + unreadable_n,
        rows: agent_rows
            .iter()
            .filter(|a| !a.model)
            .chain(unreadable.iter())
            .take(lim)
            .map(agent_finding)
            .collect(),
        message: if agents == 0 {
            "no platform agent to hold a MODEL secret".to_string()
        } else if unreadable_n > 0 {
            format!(
            "{unreadable_n} platform agent(s) whose MODEL secret does not decrypt with SECRETS_ENCRYPTION_KEY: it was written under another key (the old one after a rotation?), and the platform cannot read it either; check the key with `orgctl secret verify`, then write MODEL again with the tenant's key"
        )
        } else if without_model > 0 && model_fails == 0 {
            format!(
            "{without_model} platform agent(s) without a MODEL secret, and nothing runs or starts them: orgctl install-platform-agent --provision has the platform seed MODEL as it provisions them (any other start registers them without MODEL, and the platform marks them failed)"
        )
        } else if without_model > 0 {
            format!(
            "{without_model} platform agent(s) without a MODEL secret that would register without one (running or being started): the platform marks them failed; set MODEL (orgctl secret set <agent id> MODEL <a model registered for its runtime>)"
        )
        } else if f.model.key_set {
            "the platform agent has a MODEL secret, and it decrypts with the key given".to_string()
        } else {
            "the platform agent has a MODEL secret (not decrypted: no SECRETS_ENCRYPTION_KEY given)"
                .to_string()
        },
        fix: if agents == 0 {
            Some(INSTALL_FIX.to_string())
        } else if unreadable_n > 0 || (without_model > 0 && model_fails > 0) {
            Some(FIX_SET_MODEL.to_string())
        } else if without_model > 0 {
            Some(FIX_PROVISION.to_string())
        } else {
            None
        },
    }
}

fn tokens_on_root(f: &Facts) -> Check {
    let tokens = &f.tokens;
    let on_former =
        tokens.on_former_root.live + tokens.on_former_root.revoked + tokens.on_former_root.expired;
    let bad_tokens = tokens.on_non_root.live + on_former;
    Check {
        name: "tokens_on_root",
        severity: Severity::Error,
        ok: bad_tokens == 0,
        count: bad_tokens,
        rows: f.token_rows.clone(),
        message: if bad_tokens == 0 {
            "every anchored live token is on a root, none on a former root".to_string()
        } else {
            format!(
            "{} live token(s) anchored to a non-root, {} token(s) on a former root; move them all to the root with `orgctl token anchor --stale` (review with --dry-run first)",
            tokens.on_non_root.live, on_former
        )
        },
        fix: (bad_tokens > 0).then(|| FIX_STALE_TOKENS.to_string()),
    }
}

fn allowlist_on_root(f: &Facts) -> Check {
    let allow_count = f.allow_count;
    Check {
        name: "allowlist_on_root",
        severity: Severity::Error,
        ok: allow_count == 0,
        count: allow_count,
        rows: f.allow_rows.clone(),
        message: if allow_count == 0 {
            "every allowlist row is on a root".to_string()
        } else {
            format!("{allow_count} allowlist row(s) anchored to a non-root or former root")
        },
        fix: None,
    }
}

fn parent_chains(f: &Facts) -> Check {
    let broken_count = f.broken_count;
    Check {
        name: "parent_chains",
        severity: Severity::Error,
        ok: broken_count == 0,
        count: broken_count,
        rows: f.broken_rows.clone(),
        message: if broken_count == 0 {
            format!("every workspace reaches a root within {MAX_DEPTH} steps")
        } else {
            format!(
            "{broken_count} workspace(s) reach no root within {MAX_DEPTH} steps (a cycle, or a chain so deep that the platform's org-root lookup gives up: isolation checks fail closed and the plugin allowlist fails open)"
        )
        },
        fix: None,
    }
}

/// A warning: the platform denies an unanchored token on org-scoped routes.
fn unanchored_tokens(f: &Facts) -> Check {
    let tokens = &f.tokens;
    Check {
        name: "unanchored_tokens",
        severity: Severity::Warning,
        ok: tokens.unanchored.live == 0,
        count: tokens.unanchored.live,
        rows: f.unanchored_rows.clone(),
        message: if tokens.unanchored.live == 0 {
            "no live unanchored token".to_string()
        } else {
            format!(
            "{} live token(s) with no org: the platform denies them on org-scoped routes (orgctl token anchor)",
            tokens.unanchored.live
        )
        },
        fix: (tokens.unanchored.live > 0).then(|| FIX_UNANCHORED.to_string()),
    }
}

/// A warning: a row is not a running agent. `--provision` is named only where it acts.
fn platform_agent_running(f: &Facts) -> Check {
    let (agents, lim) = (f.agents.total, f.limit);
    let not_running: Vec<&AgentInfo> = f.agent_rows.iter().filter(|a| !a.running()).collect();
    Check {
        name: "platform_agent_running",
        severity: Severity::Warning,
        ok: agents >= 1 && not_running.is_empty(),
        count: not_running.len() as i64,
        rows: not_running
            .iter()
            .take(lim)
            .map(|a| Finding {
                table: "workspaces",
                id: a.id.to_string(),
                detail: format!(
                    "\"{}\": kind platform, status {}",
                    sanitize(&a.name),
                    a.status.as_deref().unwrap_or("null")
                ),
            })
            .collect(),
        message: match (agents, not_running.first()) {
            (0, _) => "no platform agent: nothing is running as the org's root".to_string(),
            (_, None) => "the platform agent is running (online or degraded)".to_string(),
            (_, Some(a)) => {
                let status = a.status.as_deref().unwrap_or("without a status");
                // --provision is recommended only where it acts.
                match f.running_decision.flatten() {
                None => format!(
                    "the platform agent is {status}, not running: orgctl install-platform-agent --provision --wait"
                ),
                Some("provisioning" | "awaiting_agent") => format!(
                    "the platform agent is {status}: the platform is starting it (or, left provisioning by an older install, its sweep marks it failed after its deadline); --provision does not act on it now: check again later"
                ),
                Some("external") => format!(
                    "the platform agent is {status} on an external runtime: the platform does not provision it; start it where it runs"
                ),
                Some(_) => format!(
                    "the platform agent is {status}: the platform does not run it in that state and --provision does not act on it"
                ),
            }
            }
        },
        fix: (agents >= 1 && f.running_decision == Some(None)).then(|| FIX_START_AGENT.to_string()),
    }
}

/// A removed agent is a deleted one; the platform's boot leaves it alone, so nothing serves as
/// the org's concierge.
fn platform_agent_not_removed(f: &Facts) -> Check {
    let (removed, agent_rows, lim) = (f.agents.removed, &f.agent_rows, f.limit);
    Check {
        name: "platform_agent_not_removed",
        severity: Severity::Error,
        ok: removed == 0,
        count: removed,
        rows: agent_rows
            .iter()
            .filter(|a| a.status.as_deref() == Some(REMOVED_STATUS))
            .take(lim)
            .map(|a| Finding {
                table: "workspaces",
                id: a.id.to_string(),
                detail: format!("\"{}\": kind platform, status removed", sanitize(&a.name)),
            })
            .collect(),
        message: if removed == 0 {
            "no platform agent is removed".to_string()
        } else {
            format!(
            "{removed} platform agent(s) removed (deleted): the platform leaves a removed agent alone; bring it back with `orgctl install-platform-agent --revive`"
        )
        },
        fix: (removed > 0).then(|| FIX_REVIVE.to_string()),
    }
}

fn root_finding(r: &RootRow) -> Finding {
    Finding {
        table: "workspaces",
        id: r.id.to_string(),
        detail: format!(
            "\"{}\": root, status {}, kind {}",
            sanitize(&r.name),
            sanitize(r.status.as_deref().unwrap_or("null")),
            sanitize(r.kind.as_deref().unwrap_or("workspace"))
        ),
    }
}

fn agent_finding(a: &AgentInfo) -> Finding {
    Finding {
        table: "workspaces",
        id: a.id.to_string(),
        detail: format!(
            "\"{}\": kind platform, {}, MODEL {}",
            sanitize(&a.name),
            match a.parent_id {
                Some(p) => format!("under {p}"),
                None => "root".to_string(),
            },
            if a.model { "present" } else { "missing" }
        ),
    }
}
