//! `backfill run --provision`: after a tenant's commit, its agent brought to life through the
//! tenant's platform (never a running one), the result recorded on the tenant's line.

use sqlx::postgres::PgConnection;

use super::{Job, Status, TenantResult};
use crate::ops::backfill::{clean, Cancel, Committing, Tenant};
use crate::ops::install::{AgentAction, ModelAction};
use crate::platform::provision::{self, ProvisionResult};

/// `--provision` (and `--wait`): what every tenant's provision shares.
pub struct ProvisionJob {
    pub wait: Option<provision::Wait>,
    /// The first Ctrl-C stops waiting (the tenant is committed; the wait is reported).
    pub cancel: Cancel,
    pub out: crate::output::Output,
}

/// With --provision: after the tenant's commit, provision its agent (never a running one), and
/// record the result on the tenant's line. Not a failure of the tenant: its change is committed.
pub(super) async fn provision_tenant(
    job: &Job,
    pj: &ProvisionJob,
    t: &Tenant,
    conn: Option<&mut PgConnection>,
    committing: &Committing,
    result: &mut TenantResult,
) {
    let skip = |r: &mut TenantResult, why: &str| r.provision = Some(ProvisionResult::skipped(why));
    if job.dry_run {
        return skip(result, "dry-run");
    }
    if !matches!(result.status, Status::Applied | Status::Skipped) {
        return skip(result, "not installed");
    }
    let Some(url) = t.platform_url.as_deref() else {
        return skip(result, "no platform URL");
    };
    let (Some(conn), Some(agent)) = (conn, result.agent_id) else {
        return skip(result, "agent unknown");
    };
    let platform = match provision::platform_for(Some(url)) {
        Ok(p) => p,
        Err(e) => {
            skip(result, "bad platform URL");
            result.provision_error = Some(clean(&e));
            return;
        }
    };
    // After the commit: a second Ctrl-C waits for this (bounded) work instead of abandoning
    // the tenant and calling it rolled back.
    let _guard = committing.enter();
    let mut cancel = pj.cancel.clone();
    let stop: provision::Stop = Box::pin(async move { cancel.reached(1).await });
    let created =
        result.status == Status::Applied && result.agent_action == Some(AgentAction::Create);
    // The tenant's org id (its line's, else the run's; none for a self-hosted tenant), sent as
    // the platform's org header.
    let org_id = if t.org_id.is_some() || t.self_hosted {
        t.org_id.as_deref()
    } else if job.self_hosted {
        None
    } else {
        job.org_id.as_deref()
    };
    let ask = provision::Ask {
        org_id,
        model: job
            .model
            .as_ref()
            .filter(|_| result.model_to_platform)
            .map(|m| m.as_str()),
    };
    let p = crate::ops::provision::provision(
        &pj.out,
        conn,
        &job.settings,
        &job.who,
        &platform,
        agent,
        created,
        ask,
        pj.wait,
        stop,
        &format!("tenant {}: the install", t.name),
    )
    .await;
    // A model the platform refused (or never got) is not claimed as set.
    if result.model_via_platform && !p.result.accepted() {
        result.model_secret = result.model_secret.map(|m| match m {
            ModelAction::Seeded => ModelAction::Missing,
            ModelAction::Replaced => ModelAction::Present,
            other => other,
        });
    }
    result.provision_error = p.problem.as_ref().map(clean);
    result.provision = Some(p.result);
}
