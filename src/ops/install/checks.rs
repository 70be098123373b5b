//! The warnings a plan comes with (never refusals): workspaces outside every org or too deep
//! after the install, and a mint ceiling the moved tokens reach.

use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::planned::{AgentAction, Plan};
use crate::error::Result;
use crate::platform::tree;

/// Workspaces in a parent cycle or deeper than the platform's org-root lookup below a root are
/// outside every org: the install cannot re-parent them (they are not roots) and never walks
/// them, but it says so (`orgctl status` names them all). And re-parenting puts every old root
/// one level lower, so the dry run and apply warn, per depth limit of the platform, how many
/// workspaces will sit deeper below the agent than that limit after the install and what stops
/// working for them (one walk for all the checks; up to three rows named per warning).
/// Each warning is handed to `warn` as soon as it is known.
pub async fn chain_warnings(
    conn: &mut PgConnection,
    plan: &Plan,
    mut warn: impl FnMut(&str),
) -> Result<()> {
    let roots: Vec<Uuid> = plan.reparented.iter().map(|r| r.id).collect();
    let check = crate::ops::org::chain_check(conn, &roots).await?;
    if check.broken > 0 {
        let (count, rows) = crate::ops::org::broken_chains(conn, 3).await?;
        let named: Vec<String> = rows
            .iter()
            .map(|b| {
                format!(
                    "{} \"{}\": {}",
                    b.id,
                    crate::error::sanitize(&b.name),
                    b.why
                )
            })
            .collect();
        warn(&format!(
            "{count} workspace(s) have a broken parent chain (a cycle, or deeper than {}) and stay outside the org: {}{}; see `orgctl status`",
            crate::ops::org::MAX_DEPTH,
            named.join("; "),
            if count > rows.len() as i64 { "; …" } else { "" }
        ));
    }
    for (limit, beyond) in tree::DEPTH_LIMITS.iter().zip(check.beyond_after) {
        if beyond == 0 {
            continue;
        }
        let rows = crate::ops::org::deeper_after(conn, &roots, *limit, 3).await?;
        let named: Vec<String> = rows
            .iter()
            .map(|(id, name, depth)| {
                format!("{id} \"{}\" ({depth} hops)", crate::error::sanitize(name))
            })
            .collect();
        let status = if limit.hops == crate::ops::org::MAX_DEPTH {
            "; `orgctl status` will report them as broken"
        } else {
            ""
        };
        warn(&format!(
            "after the install, {beyond} workspace(s) sit deeper than {} hops below the agent: {}: {}{}{status}; make the org shallower (or move the deep branch up) to fix it",
            limit.hops,
            limit.beyond,
            named.join("; "),
            if beyond > rows.len() as i64 { "; …" } else { "" }
        ));
    }
    Ok(())
}

/// The platform refuses new tokens for an org that already has its ceiling of live tokens
/// (`ORG_TOKEN_MINT_CEILING`): when the live tokens an install moves onto the agent bring the
/// agent's org to it, the plan says so (a warning, never a refusal: the tokens exist either
/// way). Read-only; `None` when there is nothing to say. The backfill reports it per tenant.
pub async fn token_ceiling_warning(conn: &mut PgConnection, plan: &Plan) -> Result<Option<String>> {
    use crate::platform::tokens;
    let moved = plan.live_tokens_moved();
    if moved == 0 {
        return Ok(None);
    }
    let ceiling = match tokens::ceiling_from_env() {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Ok(Some(format!(
                "{}; the mint-ceiling check of this install was skipped",
                e.message
            )))
        }
    };
    // A new agent has no tokens yet (a token's org_id references an existing workspace), so
    // a fresh install pays no statement for the check.
    let on_agent = if plan.agent.action == AgentAction::Create {
        0
    } else {
        tokens::live_count(conn, plan.agent.id).await?
    };
    let after = on_agent + moved;
    if after < ceiling {
        return Ok(None);
    }
    Ok(Some(format!(
        "after this install the platform agent's org has {after} live token(s) ({moved} moved from the old roots, {on_agent} already on it), at or past the platform's mint ceiling ({}) of {ceiling}: the platform and `orgctl token mint` refuse new tokens for the org until live ones are revoked below it",
        tokens::CEILING_ENV
    )))
}
