//! `backfill run`: install-platform-agent on every selected tenant.
//!
//! Per tenant, in ONE transaction: the tenant advisory lock, the run-state check (done under this
//! run id already: skipped), the row locks of install, the plan (the same code as
//! `install-platform-agent`), the snapshot of every row the plan changes into the tenant's
//! `orgctl` tables (set-based `INSERT … SELECT`, before the change), the change itself with its
//! row-count checks and verification, the run-state row and an audit row, then COMMIT. A failure
//! anywhere rolls that tenant back alone; the failure is then recorded (best effort, in its own
//! transaction) so `backfill status` can show it, and the other tenants carry on.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{clean, Cancel, Committing, Shard, Slot, Tenant};
use crate::cli::BackfillRunArgs;
use crate::db::{self, Arg, DbUrl, Settings};
use crate::error::{Error, Exit, Result};
use crate::install::{self, AgentAction, InstallInput, ModelAction, Plan};
use crate::output::duration::{human_ms, millis};
use crate::platform::keys::SecretBox;
use crate::platform::provision::{self, ProvisionResult};
use crate::Context;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Installed by this run, with its snapshot.
    Applied,
    /// Nothing to do (already installed), or done under this run id before.
    Skipped,
    /// Rolled back alone; see `error`.
    Failed,
    /// Dry run: the install would change this tenant.
    Pending,
    /// Not started: Ctrl-C, or a failed canary stopped the run first.
    NotStarted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
            Status::Pending => "pending",
            Status::NotStarted => "not_started",
        }
    }
}

/// One tenant's line of the summary and the report.
#[derive(Clone, Debug, Serialize)]
pub struct TenantResult {
    pub tenant: String,
    /// host:port/dbname — never the user or password.
    pub database: String,
    pub status: Status,
    pub agent_id: Option<Uuid>,
    pub agent_action: Option<AgentAction>,
    pub reparented: i64,
    pub tokens_moved: i64,
    pub allowlist_moved: i64,
    pub allowlist_merged: i64,
    pub model_secret: Option<ModelAction>,
    pub plan_hash: Option<String>,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// The COMMIT's answer was lost and orgctl could not check it: the change may have been
    /// committed (see `error`). Only present when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub in_doubt: bool,
    pub note: Option<String>,
    /// Only with --provision: what became of the agent after the commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provision: Option<ProvisionResult>,
    /// Why the provision did not bring the agent online (the tenant stays committed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provision_error: Option<String>,
    /// The tenant's audit chain head after this run's change (seq, row_hash): keep it outside
    /// the database for `orgctl audit verify --head`. Only on a tenant the run changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<crate::audit::HeadJson>,
    /// --model goes to the platform with the provision request (not written by orgctl), and
    /// the platform is asked to set it: [`Plan::model_via_platform`], [`Plan::model_to_platform`].
    #[serde(skip)]
    model_via_platform: bool,
    #[serde(skip)]
    model_to_platform: bool,
}

impl TenantResult {
    fn new(t: &Tenant, status: Status) -> Self {
        TenantResult {
            tenant: t.name.clone(),
            database: t.database(),
            status,
            audit_head: None,
            agent_id: None,
            agent_action: None,
            reparented: 0,
            tokens_moved: 0,
            allowlist_moved: 0,
            allowlist_merged: 0,
            model_secret: None,
            plan_hash: None,
            duration_ms: 0,
            error: None,
            in_doubt: false,
            note: None,
            provision: None,
            provision_error: None,
            model_via_platform: false,
            model_to_platform: false,
        }
    }

    fn with_plan(mut self, plan: &Plan) -> Self {
        self.agent_id = Some(plan.agent.id);
        self.agent_action = Some(plan.agent.action);
        self.reparented = plan.reparented.len() as i64;
        self.tokens_moved = plan.tokens_moved();
        self.allowlist_moved = plan.allowlist_moved();
        self.allowlist_merged = plan.merged.len() as i64;
        self.model_secret = Some(plan.model);
        self.plan_hash = Some(plan.hash());
        self.model_via_platform = plan.model_via_platform;
        self.model_to_platform = plan.model_to_platform();
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// What every tenant task shares.
pub struct Job {
    pub run_id: String,
    pub settings: Settings,
    pub model: Option<Zeroizing<String>>,
    pub allow_missing_model: bool,
    pub replace_model: bool,
    pub sb: SecretBox,
    pub dry_run: bool,
    /// `--provision` (and `--wait`): bring each tenant's agent to life after its commit.
    pub provision: Option<ProvisionJob>,
    /// `--org-id` / `MOLECULE_ORG_ID` (checked) and `--self-hosted`: for tenant lines that say
    /// neither.
    pub org_id: Option<String>,
    pub self_hosted: bool,
}

pub struct ProvisionJob {
    pub wait: Option<provision::Wait>,
    /// The first Ctrl-C stops waiting (the tenant is committed; the wait is reported).
    pub cancel: Cancel,
    pub out: crate::output::Output,
}

/// A rerun with another --model must not silently change the model of an agent that already
/// exists: without --replace-model that tenant is refused (the dry run reports it the same).
fn ensure_model_kept(plan: &Plan, replace_model: bool) -> Result<()> {
    if plan.model == ModelAction::Replaced
        && plan.agent.action != AgentAction::Create
        && !replace_model
    {
        return Err(Error::refused(format!(
            "the platform agent {} already has a different MODEL; a backfill does not replace it silently: pass --replace-model to replace it, or rerun without --model",
            plan.agent.id
        )));
    }
    Ok(())
}

impl Job {
    /// The install's input for tenant `t`: its line's org id or self-hosted mark, else the
    /// run's.
    fn input(&self, t: &Tenant) -> Result<InstallInput> {
        let (org_id, self_hosted) = if t.org_id.is_some() || t.self_hosted {
            (t.org_id.as_deref(), t.self_hosted)
        } else {
            (self.org_id.as_deref(), self.self_hosted)
        };
        let mut input = InstallInput::new(
            None,
            None,
            self.model.as_ref().map(|m| m.as_str()),
            self.allow_missing_model,
        )?
        .with_identity(org_id, self_hosted, "the org id")?;
        // No MOLECULE_ORG_NAME: one name cannot name every org of a fleet, so a new agent gets
        // the platform's name for an org whose name it does not know.
        input.provision = self.provision.is_some() && t.platform_url.is_some();
        Ok(input)
    }
}

/// How many selected tenants take the run's org id (their line says neither `org_id=` nor
/// `self-hosted`).
pub fn taking_run_org_id(tenants: &[Tenant]) -> Vec<&str> {
    tenants
        .iter()
        .filter(|t| t.org_id.is_none() && !t.self_hosted)
        .map(|t| t.name.as_str())
        .collect()
}

/// Install on one tenant. Never returns an error: a failure is a `failed` result.
pub fn tenant(
    job: Arc<Job>,
    t: Tenant,
    committing: Committing,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = TenantResult> + Send>> {
    Box::pin(async move {
        let start = Instant::now();
        let mut conn: Option<PgConnection> = None;
        let r = apply(&job, &t, &mut conn, &committing).await;
        let mut result = match r {
            Ok(res) => res,
            Err(e) => {
                if !job.dry_run && !e.in_doubt {
                    if let Some(c) = conn.as_mut() {
                        // Best effort: the change rolled back; remember why, for `backfill status`.
                        let _ = record_failure(
                            c,
                            &t.url,
                            &job.settings,
                            &job.run_id,
                            &t.name,
                            &clean(&e),
                        )
                        .await;
                    }
                }
                let mut f = TenantResult::new(&t, Status::Failed);
                f.error = Some(clean(&e));
                f.in_doubt = e.in_doubt;
                f
            }
        };
        if let Some(pj) = &job.provision {
            provision_tenant(&job, pj, &t, conn.as_mut(), &committing, &mut result).await;
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
        result.duration_ms = millis(start.elapsed());
        result
    })
}

/// With --provision: after the tenant's commit, provision its agent (never a running one), and
/// record the result on the tenant's line. Not a failure of the tenant: its change is committed.
async fn provision_tenant(
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
    let p = provision::provision(
        &pj.out,
        conn,
        &job.settings,
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

/// Boxed with its lifetime spelled out: rustc cannot otherwise prove this future `Send` for the
/// spawned task (the "implementation of `Send` is not general enough" limitation).
fn apply<'a>(
    job: &'a Job,
    t: &'a Tenant,
    slot: &'a mut Option<PgConnection>,
    committing: &'a Committing,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<TenantResult>> + Send + 'a>> {
    Box::pin(apply_inner(job, t, slot, committing))
}

async fn apply_inner(
    job: &Job,
    t: &Tenant,
    slot: &mut Option<PgConnection>,
    committing: &Committing,
) -> Result<TenantResult> {
    let input = job.input(t)?;
    let conn = slot.insert(db::connect(&t.url, &job.settings).await?);

    if job.dry_run {
        db::ensure_compatible(conn).await?;
        let mut tx = db::begin_read_only(conn, &job.settings).await?;
        let prior = prior_run(&mut tx, &job.run_id, false).await?;
        let plan = install::plan(&mut tx, &input, &job.sb, install::Orgctl::Probe).await?;
        let extra = join_notes(
            install::token_ceiling_warning(&mut tx, &plan).await?,
            model_outranked(&plan),
        );
        tx.rollback().await?;
        if let Some(p) = prior.filter(|p| p.done()) {
            return Ok(TenantResult::new(t, Status::Skipped)
                .note(format!("{} under this run already", p.status)));
        }
        if let Some(e) = plan.refusal() {
            return Err(e);
        }
        ensure_model_kept(&plan, job.replace_model)?;
        let status = if plan.changed() {
            Status::Pending
        } else {
            Status::Skipped
        };
        let r = TenantResult::new(t, status).with_plan(&plan);
        return Ok(match (plan.changed(), extra) {
            (true, Some(w)) => r.note(w),
            (true, None) => r,
            (false, _) => r.note("already installed"),
        });
    }

    // The platform's schema checked and orgctl's own created or checked in the transaction of
    // the change, so the snapshot has somewhere to go before anything changes.
    // On a tenant's first touch the row locks and the plan's first reads ride in the message
    // that creates orgctl's schema.
    let db::Begun {
        mut tx,
        created,
        tail,
    } = db::begin_change_on(conn, &t.url, &job.settings, &install::plan_tail(&input)).await?;
    // A schema this transaction has just created holds no run row (one statement fewer on a
    // tenant's first touch).
    let prior = if created {
        None
    } else {
        prior_run(&mut tx, &job.run_id, true).await?
    };
    if let Some(p) = prior {
        if p.done() {
            tx.rollback().await?;
            let mut r = TenantResult::new(t, Status::Skipped)
                .note(format!("{} under this run already", p.status));
            // For --provision on a resumed run.
            r.agent_id = p.agent_id;
            return Ok(r);
        }
    }
    let plan = install::lock_and_plan(&mut tx, &input, &job.sb, tail).await?;
    if let Some(e) = plan.refusal() {
        return Err(e);
    }
    ensure_model_kept(&plan, job.replace_model)?;
    let ceiling = install::token_ceiling_warning(&mut tx, &plan).await?;
    if !plan.changed() {
        record_run(&mut tx, &job.run_id, &t.name, "skipped", &plan).await?;
        let evidence = crate::ops::evidence::RunRow {
            run_id: job.run_id.clone(),
            status: "skipped",
        };
        let note = commit(tx, job, t, committing, &evidence).await?;
        return Ok(TenantResult::new(t, Status::Skipped)
            .with_plan(&plan)
            .note(with_note("already installed", note)));
    }
    let outranked = model_outranked(&plan);
    let mut args = install::audit_args(&input, &plan);
    if let Some(o) = args.as_object_mut() {
        o.insert("run_id".into(), job.run_id.clone().into());
        o.insert("tenant".into(), t.name.clone().into());
    }
    let entry = [crate::audit::AuditEntry {
        command: "backfill run".to_string(),
        args,
        outcome: "applied".to_string(),
        txid: Some(Uuid::new_v4()),
    }];
    // The snapshot and the audit chain's head travel in the change's first statement, the
    // verification with the audit row: three statements fewer for every tenant.
    let (mut first, parts) = snapshot(&job.run_id, &t.name, &plan)?;
    let raw = first.arg(Arg::TextList(crate::audit::audit_head_args(&entry)));
    // The snapshot's digest, from what its writes returned, merged into the audit row.
    let lines: Vec<String> = parts
        .iter()
        .map(|c| format!("SELECT part, line FROM {c}"))
        .collect();
    let digest = format!(
        "jsonb_build_object('{}', {})",
        super::digest::ARG,
        super::digest::digest_sql(&lines.join(" UNION ALL "))
    );
    first.read(
        crate::audit::AUDIT_HEAD_CTE,
        crate::audit::audit_head_columns_merging(&raw, Some(&digest)),
    );
    let read = install::execute(&mut tx, &plan, &input, &job.sb, first)
        .await?
        .ok_or_else(|| Error::failed("internal: the change's first statement read nothing"))?;
    let head = crate::audit::AuditHead::decode(&read, 0)?;
    let (head_seq, head_hash) =
        crate::audit::append_after_head(&mut tx, head, &entry, Some(install::verification(&plan)))
            .await?;
    let evidence = crate::ops::evidence::RunRow {
        run_id: job.run_id.clone(),
        status: "applied",
    };
    let note = commit(tx, job, t, committing, &evidence).await?;
    let mut r = TenantResult::new(t, Status::Applied).with_plan(&plan);
    r.audit_head = Some(crate::audit::HeadJson {
        seq: head_seq,
        row_hash: crate::audit::hex(&head_hash),
    });
    let extra = join_notes(ceiling, outranked);
    Ok(match (note, extra) {
        (Some(n), Some(w)) => r.note(format!("{w}; {n}")),
        (Some(n), None) => r.note(n),
        (None, Some(w)) => r.note(w),
        (None, None) => r,
    })
}

/// When orgctl writes MODEL itself on this tenant and a MOLECULE_MODEL secret is set (on the
/// agent or globally), the tenant's note says that it outranks the MODEL written.
fn model_outranked(plan: &Plan) -> Option<String> {
    let place = plan.model_outranked.filter(|_| plan.writes_model())?;
    Some(format!(
        "a {} secret is set {place}: it outranks the MODEL written",
        crate::platform::MODEL_OVERRIDE_KEY
    ))
}

/// COMMIT through [`db::commit_or_resolve`]; a commit verified after a lost connection is
/// committed, with a note for the summary.
async fn commit(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    job: &Job,
    t: &Tenant,
    committing: &Committing,
    evidence: &dyn db::Evidence,
) -> Result<Option<&'static str>> {
    let _guard = committing.enter();
    let committed = db::commit_or_resolve(tx, &t.url, &job.settings, evidence).await?;
    Ok(committed.note())
}

/// Two optional notes as one (`a; b`).
fn join_notes(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

fn with_note(base: &str, note: Option<&str>) -> String {
    match note {
        Some(n) => format!("{base}; {n}"),
        None => base.to_string(),
    }
}

/// The tenant's row for this run, if any.
pub struct PriorRun {
    pub status: String,
    pub agent_id: Option<Uuid>,
}

impl PriorRun {
    /// Done under this run: resume does not touch it again (a failed tenant is retried).
    fn done(&self) -> bool {
        self.status != "failed"
    }
}

/// `schema_ensured`: orgctl's schema was just created or checked on this connection, so the
/// table is there (one statement fewer per tenant).
async fn prior_run(
    conn: &mut PgConnection,
    run_id: &str,
    schema_ensured: bool,
) -> Result<Option<PriorRun>> {
    if !schema_ensured && !super::backfill_tables_exist(conn).await? {
        return Ok(None);
    }
    let row = db::query("SELECT status, agent_id FROM orgctl.backfill_runs WHERE run_id = $1")
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(PriorRun {
            status: r.try_get(0)?,
            agent_id: r.try_get(1)?,
        })),
    }
}

/// The run-state row: binds $1 run id, $2 tenant, $3 status, $4 agent id, $5 agent action,
/// $6 model action, $7 the MODEL key, $8–$11 the counts, $12 plan hash, $13 OS user, $14 orgctl
/// version, $15 the declared plugin's action, $16 its name. Only a `failed` row of an earlier
/// attempt is overwritten.
const RUN_ROW_SQL: &str = "INSERT INTO orgctl.backfill_runs AS b
                (run_id, tenant, status, agent_id, agent_action, agent_prior, model_action,
                 model_prior, reparented, tokens_moved, allowlist_moved, allowlist_merged,
                 plan_hash, os_user, orgctl_version, plugin_action, plugin_prior)
         SELECT $1, $2, $3, $4, $5,
                (SELECT to_jsonb(w) FROM workspaces w WHERE w.id = $4),
                $6,
                (SELECT to_jsonb(s) FROM workspace_secrets s
                  WHERE s.workspace_id = $4 AND s.key = $7),
                $8, $9, $10, $11, $12, $13, $14, $15,
                (SELECT to_jsonb(p) FROM workspace_declared_plugins p
                  WHERE p.workspace_id = $4 AND p.plugin_name = $16)
         ON CONFLICT (run_id) DO UPDATE
            SET tenant = EXCLUDED.tenant, status = EXCLUDED.status,
                agent_id = EXCLUDED.agent_id, agent_action = EXCLUDED.agent_action,
                agent_prior = EXCLUDED.agent_prior, model_action = EXCLUDED.model_action,
                model_prior = EXCLUDED.model_prior, reparented = EXCLUDED.reparented,
                tokens_moved = EXCLUDED.tokens_moved,
                allowlist_moved = EXCLUDED.allowlist_moved,
                allowlist_merged = EXCLUDED.allowlist_merged, plan_hash = EXCLUDED.plan_hash,
                error = NULL, recorded_at = now(), os_user = EXCLUDED.os_user,
                orgctl_version = EXCLUDED.orgctl_version,
                plugin_action = EXCLUDED.plugin_action, plugin_prior = EXCLUDED.plugin_prior
          WHERE b.status = 'failed'";

/// The values of [`RUN_ROW_SQL`]'s $1–$16, in order.
fn run_row_args<'a>(
    run_id: &'a str,
    tenant: &'a str,
    status: &'a str,
    plan: &Plan,
) -> Vec<Arg<'a>> {
    vec![
        Arg::Text(run_id),
        Arg::Text(tenant),
        Arg::Text(status),
        Arg::Uuid(plan.agent.id),
        Arg::Text(plan.agent.action.as_str()),
        Arg::Text(plan.model.as_str()),
        Arg::Text(crate::platform::MODEL_KEY),
        Arg::I32(i32::try_from(plan.reparented.len()).unwrap_or(i32::MAX)),
        Arg::I64(plan.tokens_moved()),
        Arg::I64(plan.allowlist_moved()),
        Arg::I32(i32::try_from(plan.merged.len()).unwrap_or(i32::MAX)),
        Arg::TextOwned(plan.hash()),
        Arg::TextOwned(crate::sys::os_user()),
        Arg::Text(env!("CARGO_PKG_VERSION")),
        Arg::Text(plan.plugin.as_str()),
        Arg::Text(crate::platform::agent::MCP_PLUGIN),
    ]
}

/// The run-state row alone (a tenant with nothing to do).
async fn record_run(
    conn: &mut PgConnection,
    run_id: &str,
    tenant: &str,
    status: &str,
    plan: &Plan,
) -> Result<()> {
    let mut b = db::Binds::default();
    for a in run_row_args(run_id, tenant, status, plan) {
        b.arg(a);
    }
    let r = b
        .bind_to(db::query(RUN_ROW_SQL))
        .execute(&mut *conn)
        .await?;
    db::ensure_rows("the run-state row", r.rows_affected(), 1)
}

/// The snapshot of every row `plan` changes, as the first changes of the change's first
/// statement ([`install::execute`]): data-modifying CTEs read the rows as they were before the
/// statement, so the snapshot is of the rows before the change, and a fresh tenant pays no
/// round trip for it. The run row ([`RUN_ROW_SQL`], so its values are $1–$16) holds the agent's
/// prior row (NULL when the run creates it), the prior MODEL secret row (NULL when none) and
/// the prior declared plugin row (NULL when none);
/// one CTE per kind of row the plan has, each checked against the plan's count.
fn snapshot<'a>(
    run_id: &'a str,
    tenant: &'a str,
    plan: &Plan,
) -> Result<(install::Changes<'a>, Vec<String>)> {
    let ids: Vec<Uuid> = plan.reparented.iter().map(|r| r.id).collect();
    let merged: Vec<Uuid> = plan
        .merged
        .iter()
        .map(|m| {
            m.id.parse::<Uuid>().map_err(|_| {
                Error::failed(format!(
                    "allowlist row id '{}' is not a UUID; cannot snapshot it",
                    m.id
                ))
            })
        })
        .collect::<Result<_>>()?;
    let mut c = install::Changes::default();
    for a in run_row_args(run_id, tenant, "applied", plan) {
        c.arg(a);
    }
    if c.bound() != 16 {
        return Err(Error::failed("internal: the run row binds 16 values"));
    }
    // Every snapshot write returns its lines, for the digest the audit row records.
    let mut parts = vec![c.add_returning(
        "the run-state row",
        RUN_ROW_SQL.to_string(),
        Some(1),
        &super::digest::returning_run(),
    )];
    let row_lines = super::digest::returning_row();
    let run = "$1";
    if !ids.is_empty() {
        let n = ids.len() as i64;
        let ids = c.arg(Arg::UuidList(ids));
        parts.push(c.add_returning(
            "the roots snapshot",
            format!(
                "INSERT INTO orgctl.backfill_rows (run_id, kind, tbl, row_id, old_parent_id, old_updated_at)
                 SELECT {run}, 'root', 'workspaces', id, parent_id, updated_at FROM workspaces WHERE id = ANY({ids})"
            ),
            Some(n),
            &row_lines,
        ));
    }
    let old = c.arg(Arg::UuidList(plan.old_roots()));
    if plan.tokens_moved() > 0 {
        parts.push(c.add_returning(
            "the tokens snapshot",
            format!(
                "INSERT INTO orgctl.backfill_rows (run_id, kind, tbl, row_id, old_org_id)
                 SELECT {run}, 'anchor', 'org_api_tokens', id, org_id FROM org_api_tokens WHERE org_id = ANY({old})"
            ),
            Some(plan.tokens_moved()),
            &row_lines,
        ));
    }
    let n_merged = merged.len() as i64;
    let merged = c.arg(Arg::UuidList(merged));
    if n_merged > 0 {
        parts.push(c.add_returning(
            "the merged allowlist snapshot",
            format!(
                "INSERT INTO orgctl.backfill_rows (run_id, kind, tbl, row_id, row)
                 SELECT {run}, 'merged', 'org_plugin_allowlist', a.id, to_jsonb(a)
                   FROM org_plugin_allowlist a WHERE a.id = ANY({merged})"
            ),
            Some(n_merged),
            &row_lines,
        ));
    }
    if plan.allowlist_moved() > 0 {
        parts.push(c.add_returning(
            "the allowlist snapshot",
            format!(
                "INSERT INTO orgctl.backfill_rows (run_id, kind, tbl, row_id, old_org_id)
                 SELECT {run}, 'anchor', 'org_plugin_allowlist', id, org_id FROM org_plugin_allowlist
                  WHERE org_id = ANY({old}) AND NOT (id = ANY({merged}))"
            ),
            Some(plan.allowlist_moved()),
            &row_lines,
        ));
    }
    // Rows that already hung off an existing agent stay there on rollback; only rows added
    // after the run count as new.
    if plan.agent.action != AgentAction::Create {
        let agent = c.arg(Arg::Uuid(plan.agent.id));
        parts.push(c.add_returning(
            "the kept rows snapshot",
            format!(
                "INSERT INTO orgctl.backfill_rows (run_id, kind, tbl, row_id)
                 SELECT {run}, 'kept', 'workspaces', id FROM workspaces WHERE parent_id = {agent}
                 UNION ALL
                 SELECT {run}, 'kept', 'org_api_tokens', id FROM org_api_tokens WHERE org_id = {agent}
                 UNION ALL
                 SELECT {run}, 'kept', 'org_plugin_allowlist', id FROM org_plugin_allowlist WHERE org_id = {agent}"
            ),
            None,
            &row_lines,
        ));
    }
    Ok((c, parts))
}

/// Remember a failure in the tenant's own tables (never over a row that is not `failed`). Its
/// own transaction: the change itself rolled back, and with it orgctl's schema when the change
/// was to create it, so the schema is created here for the row — on a tenant whose schema is
/// compatible only (an incompatible tenant is left untouched: `backfill status` says
/// `never_reached`).
async fn record_failure(
    conn: &mut PgConnection,
    url: &DbUrl,
    settings: &Settings,
    run_id: &str,
    tenant: &str,
    error: &str,
) -> Result<()> {
    db::ensure_compatible(conn).await?;
    db::ensure_orgctl_schema(conn, url, settings).await?;
    let mut tx = db::begin_write(conn, settings).await?;
    db::query(
        "INSERT INTO orgctl.backfill_runs AS b (run_id, tenant, status, error, os_user, orgctl_version)
         VALUES ($1, $2, 'failed', $3, $4, $5)
         ON CONFLICT (run_id) DO UPDATE
            SET error = EXCLUDED.error, recorded_at = now(), tenant = EXCLUDED.tenant
          WHERE b.status = 'failed'",
    )
    .bind(run_id)
    .bind(tenant)
    .bind(error)
    .bind(crate::sys::os_user())
    .bind(env!("CARGO_PKG_VERSION"))
    .execute(&mut *tx)
    .await?;
    db::commit_best_effort(tx, "the tenant's failure record").await
}

// ---------------------------------------------------------------------------------------------
// The command

#[derive(Serialize)]
pub struct Totals {
    pub tenants: usize,
    pub applied: usize,
    pub skipped: usize,
    pub failed: usize,
    pub pending: usize,
    pub not_started: usize,
    pub reparented: i64,
    pub tokens_moved: i64,
    pub allowlist_moved: i64,
    pub allowlist_merged: i64,
    /// Tenants whose agent --provision did not bring to life (request refused, failed, deadline).
    pub provision_failed: usize,
}

/// The run's report (`--report FILE`, and stdout with `--output json`).
#[derive(Serialize)]
pub struct Report {
    pub run_id: String,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub shard: Option<String>,
    pub concurrency: u32,
    pub canary: Option<u32>,
    /// A canary tenant failed, so the rest were not started.
    pub canary_stopped: bool,
    /// Ctrl-C stopped the run before every tenant was started.
    pub interrupted: bool,
    pub totals: Totals,
    pub tenants: Vec<TenantResult>,
}

/// The last line of a JSON Lines report: the report without its tenants.
#[derive(Serialize)]
struct Summary<'a> {
    dry_run: bool,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    shard: &'a Option<String>,
    concurrency: u32,
    canary: Option<u32>,
    canary_stopped: bool,
    interrupted: bool,
    totals: &'a Totals,
}

impl<'a> Summary<'a> {
    fn of(r: &'a Report) -> Self {
        Summary {
            dry_run: r.dry_run,
            started_at: r.started_at,
            finished_at: r.finished_at,
            shard: &r.shard,
            concurrency: r.concurrency,
            canary: r.canary,
            canary_stopped: r.canary_stopped,
            interrupted: r.interrupted,
            totals: &r.totals,
        }
    }
}

fn totals(results: &[TenantResult]) -> Totals {
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    let applied: Vec<&TenantResult> = results
        .iter()
        .filter(|r| matches!(r.status, Status::Applied | Status::Pending))
        .collect();
    Totals {
        tenants: results.len(),
        applied: count(Status::Applied),
        skipped: count(Status::Skipped),
        failed: count(Status::Failed),
        pending: count(Status::Pending),
        not_started: count(Status::NotStarted),
        reparented: applied.iter().map(|r| r.reparented).sum(),
        tokens_moved: applied.iter().map(|r| r.tokens_moved).sum(),
        allowlist_moved: applied.iter().map(|r| r.allowlist_moved).sum(),
        allowlist_merged: applied.iter().map(|r| r.allowlist_merged).sum(),
        provision_failed: results
            .iter()
            .filter(|r| r.provision_error.is_some())
            .count(),
    }
}

pub async fn run(ctx: &Context, args: &BackfillRunArgs, cancel: &Cancel) -> Result<Exit> {
    let out = &ctx.out;
    let shard = Shard::from_args(&args.shard)?;
    let run_id = match &args.run_id {
        Some(id) => {
            super::check_run_id(id)?;
            id.clone()
        }
        None => super::new_run_id(),
    };
    // Checked once up front, so a bad --model is a usage error and not N failed tenants.
    let _ = InstallInput::new(None, None, args.model.as_deref(), args.allow_missing_model)?;
    let sb = SecretBox::from_env();
    let all = super::tenants::read(&args.tenants).await?;
    let selected: Vec<Tenant> = Shard::select(shard, all);
    // Tenants where orgctl writes MODEL itself: those not provisioned through their platform.
    let direct_model = args.model.is_some()
        && !(args.provision && selected.iter().all(|t| t.platform_url.is_some()));
    if direct_model {
        // The key too: an invalid key (exit 2) or production without one (exit 3) refuses the
        // run before any tenant, and plaintext is said once, not per tenant.
        sb.write_version()?;
    }
    // The run's identity, checked once (a bad --org-id is a usage error, not N failures).
    let org_id = args
        .org_id
        .as_deref()
        .map(|o| crate::platform::agent::check_org_id(o, "--org-id (or MOLECULE_ORG_ID)"))
        .transpose()?;
    crate::platform::agent::identity(
        org_id.clone(),
        args.self_hosted,
        "--org-id (or MOLECULE_ORG_ID)",
    )?;
    // --provision: the admin token is needed before anything changes, when any selected tenant
    // has a platform URL to call (a tenant without one is reported skipped, not failed).
    if args.provision && !args.dry_run {
        match selected.iter().find_map(|t| t.platform_url.as_deref()) {
            Some(url) => {
                provision::platform_for(Some(url))?;
            }
            None => out.warn(
                "--provision: no selected tenant line has a platform URL (third field); every provision will be skipped",
            ),
        }
    }
    // The run id comes first, so an operator can resume or roll back whatever happens next.
    crate::output::stderr(&format!("run id: {run_id}\n"));
    if org_id.is_some() {
        let taking = taking_run_org_id(&selected);
        if taking.len() > 1 {
            out.warn(&format!(
                "{} tenants take the org id of --org-id (or MOLECULE_ORG_ID), but every org has its own: a tenant without a platform agent gets an agent id meant for another org; give each line its org_id=ID ({}{})",
                taking.len(),
                taking.iter().take(5).copied().collect::<Vec<_>>().join(", "),
                if taking.len() > 5 { ", …" } else { "" }
            ));
        }
    }
    let what = format!(
        "{} tenant(s){}, concurrency {}{}",
        selected.len(),
        shard.map(|s| format!(" (shard {s})")).unwrap_or_default(),
        args.concurrency,
        args.canary
            .map(|n| format!(", canary {n}"))
            .unwrap_or_default()
    );
    if args.dry_run {
        out.info(&format!("Dry run on {what}: planning read-only."));
    } else {
        out.info(&format!(
            "Installing the platform agent on {what}{}.",
            if args.model.is_some() {
                ", seeding MODEL"
            } else {
                ""
            }
        ));
        out.confirm(
            &format!("Install the platform agent on {what} (run {run_id})?"),
            ctx.yes,
        )?;
    }
    if cancel.stopping() {
        return Err(Error::new(
            Exit::Interrupted,
            "interrupted before any tenant was started; nothing was changed",
        ));
    }

    if direct_model {
        out.warn(
            "MODEL is written straight to the database on tenants not provisioned through their platform (no --provision, or no platform URL): the platform has not validated it for the agents' runtime, and it applies at each agent's next provision",
        );
        if let Some(w) = sb.plaintext_warning("the agents' MODEL secret") {
            out.warn(&w);
        }
    }
    let job = Arc::new(Job {
        run_id: run_id.clone(),
        settings: ctx.settings.clone(),
        model: args.model.as_deref().map(|m| Zeroizing::new(m.to_string())),
        allow_missing_model: args.allow_missing_model,
        replace_model: args.replace_model,
        sb,
        dry_run: args.dry_run,
        org_id,
        self_hosted: args.self_hosted,
        provision: args.provision.then(|| ProvisionJob {
            wait: provision::Wait::from_arg(args.wait),
            cancel: cancel.clone(),
            // Per-tenant messages and spinners would fight the progress bar: the summary and
            // the report carry each tenant's provision result instead.
            out: crate::output::Output::new(out.format, true, 0),
        }),
    });
    let started_at = Utc::now();
    let pb = out.progress(selected.len() as u64, "tenants");
    let (mut ok, mut failed) = (0usize, 0usize);
    // --report FILE.jsonl: one line per tenant as it finishes (see backfill::jsonl).
    let mut jsonl = match &args.report {
        Some(p) if super::jsonl::wanted(p) => Some(super::jsonl::Jsonl::create(p)?),
        _ => None,
    };
    let mut written = std::collections::HashSet::new();
    let mut on_done = |r: &TenantResult, in_flight: usize| {
        if let Some(j) = jsonl.as_mut() {
            j.line("tenant", &run_id, r);
            written.insert(r.tenant.clone());
        }
        if r.status == Status::Failed {
            failed += 1;
            if !pb.is_hidden() {
                pb.suspend(|| {
                    out.warn(&format!(
                        "{}: {}",
                        r.tenant,
                        r.error.as_deref().unwrap_or("")
                    ))
                });
            } else {
                out.warn(&format!(
                    "{}: {}",
                    r.tenant,
                    r.error.as_deref().unwrap_or("")
                ));
            }
        } else {
            ok += 1;
            out.detail(&format!(
                "{}: {} in {}",
                r.tenant,
                r.status.as_str(),
                human_ms(r.duration_ms)
            ));
        }
        pb.inc(1);
        pb.set_message(crate::output::fleet_progress(ok, failed, in_flight));
    };
    let concurrency = args.concurrency as usize;
    let work = |t: Tenant, c: Committing| tenant(job.clone(), t, c);

    // Canary: the first N selected tenants alone; any failure stops the run before the rest.
    let canary = if args.dry_run {
        0
    } else {
        args.canary
            .map(|n| n as usize)
            .unwrap_or(0)
            .min(selected.len())
    };
    let mut slots = Vec::new();
    let mut canary_stopped = false;
    if canary > 0 {
        slots = super::for_each(&selected[..canary], concurrency, cancel, work, &mut on_done).await;
        canary_stopped = slots.iter().any(|s| match s {
            Slot::Done(r) => r.status == Status::Failed,
            Slot::Abandoned(_) | Slot::Panicked(_) => true,
            Slot::NotStarted => false,
        });
        if canary_stopped {
            out.warn("a canary tenant failed: the rest of the run was not started");
        }
    }
    if canary_stopped {
        slots.extend(selected[canary..].iter().map(|_| Slot::NotStarted));
    } else {
        let rest =
            super::for_each(&selected[canary..], concurrency, cancel, work, &mut on_done).await;
        slots.extend(rest);
    }
    pb.finish_and_clear();

    let interrupted = cancel.stopping();
    let results: Vec<TenantResult> = slots
        .into_iter()
        .zip(selected.iter())
        .map(|(s, t)| match s {
            Slot::Done(r) => r,
            Slot::NotStarted => TenantResult::new(t, Status::NotStarted),
            Slot::Abandoned(ms) => {
                let mut r = TenantResult::new(t, Status::Failed);
                r.error = Some(
                    "abandoned by a second Ctrl-C before its commit: its transaction was rolled back"
                        .into(),
                );
                r.duration_ms = ms;
                r
            }
            Slot::Panicked(detail) => {
                let mut r = TenantResult::new(t, Status::Failed);
                r.error = Some(super::panicked_message(&detail));
                r
            }
        })
        .collect();
    let report = Report {
        run_id: run_id.clone(),
        dry_run: args.dry_run,
        started_at,
        finished_at: Utc::now(),
        shard: shard.map(|s| s.to_string()),
        concurrency: args.concurrency,
        canary: args.canary,
        canary_stopped,
        interrupted,
        totals: totals(&results),
        tenants: results,
    };
    // The report is written even when stdout fails: it is the record of what was committed.
    let rendered = render(ctx, &report);
    if let Some(mut j) = jsonl {
        // The tenants that never finished (not started, abandoned, panicked), then the summary.
        for r in report
            .tenants
            .iter()
            .filter(|r| !written.contains(&r.tenant))
        {
            j.line("tenant", &report.run_id, r);
        }
        j.line("summary", &report.run_id, &Summary::of(&report));
        j.finish()?;
    }
    if let Some(path) = args.report.as_ref().filter(|p| !super::jsonl::wanted(p)) {
        super::write_report(path, &report)?;
    }
    rendered.map_err(|e| after_commits(e, report.totals.applied + report.totals.skipped))?;
    let t = &report.totals;
    let in_doubt = report.tenants.iter().filter(|r| r.in_doubt).count();
    if interrupted {
        return Err(Error::new(
            Exit::Interrupted,
            if args.dry_run {
                format!(
                    "interrupted: {} tenant(s) were not planned (dry run: nothing was changed)",
                    t.not_started
                )
            } else {
                format!(
                    "interrupted: {} tenant(s) were not started; in-flight tenants finished or rolled back; resume with --run-id {run_id}",
                    t.not_started
                )
            },
        ));
    }
    if args.dry_run && t.failed > 0 {
        // Nothing ran, so nothing "rolled back".
        return Err(Error::failed(format!(
            "{} of {} tenant(s) could not be planned (see the summary); dry run: nothing was changed",
            t.failed, t.tenants
        )));
    }
    if t.failed > 0 || t.not_started > 0 {
        if t.provision_failed > 0 {
            out.warn(&format!(
                "{} committed tenant(s) did not get a running agent (see the provision column)",
                t.provision_failed
            ));
        }
        return Err(Error::failed(format!(
            "{} of {} tenant(s) failed{}; {}: fix and rerun with --run-id {run_id} to resume",
            t.failed,
            t.tenants,
            if canary_stopped {
                format!(" (canary: {} not started)", t.not_started)
            } else {
                String::new()
            },
            if in_doubt > 0 {
                format!("{in_doubt} of them may have been committed (their COMMIT's answer was lost: check them with `orgctl backfill status --run-id {run_id}`), the others changed nothing")
            } else {
                "a failed tenant is left as it was".to_string()
            }
        )));
    }
    if t.provision_failed > 0 {
        let names: Vec<&str> = report
            .tenants
            .iter()
            .filter(|r| r.provision_error.is_some())
            .map(|r| r.tenant.as_str())
            .collect();
        return Err(Error::failed(format!(
            "{} tenant(s) are installed and committed, but their agent did not come to life ({}): see the provision column, fix, and rerun with --run-id {run_id} --provision",
            t.provision_failed,
            names.join(", ")
        )));
    }
    if args.dry_run && args.detailed_exitcode && t.pending > 0 {
        return Ok(Exit::Pending);
    }
    Ok(Exit::Ok)
}

/// A failure to print the summary after tenants committed: say so (exit 1).
fn after_commits(e: Error, committed: usize) -> Error {
    if committed == 0 {
        return e;
    }
    Error::failed(format!(
        "{committed} tenant(s) were committed (applied or recorded skipped), but the summary could not be printed: {}",
        e.message
    ))
}

fn render(ctx: &Context, report: &Report) -> Result<()> {
    let out = &ctx.out;
    if out.json_mode() {
        return out.json(report);
    }
    let provisioning = report.tenants.iter().any(|r| r.provision.is_some());
    let mut header = vec![
        "tenant",
        "status",
        "re-parented",
        "tokens moved",
        "allowlist moved",
        "duration",
        // A failed tenant's error, or a skipped one's note ("applied under this run already").
        "error / note",
    ];
    if provisioning {
        header.push("provision");
    }
    let mut table = out.new_table(header);
    for r in &report.tenants {
        let detail = r
            .error
            .clone()
            .or_else(|| r.note.clone())
            .unwrap_or_default();
        let mut row = vec![
            crate::error::sanitize(&r.tenant),
            r.status.as_str().to_string(),
            r.reparented.to_string(),
            r.tokens_moved.to_string(),
            r.allowlist_moved.to_string(),
            if r.status == Status::NotStarted {
                "-".into()
            } else {
                human_ms(r.duration_ms)
            },
            detail,
        ];
        if provisioning {
            row.push(match (&r.provision, &r.provision_error) {
                (Some(p), Some(e)) => format!("{}: {e}", p.short(Some(&Error::failed(e.as_str())))),
                (Some(p), None) => p.short(None),
                (None, _) => "-".into(),
            });
        }
        table.add_row(row);
    }
    let t = &report.totals;
    let mut s = format!("{table}\n");
    s.push_str(&format!(
        "Run {}{}: {} tenant(s): {} applied, {} skipped, {} failed{}{}; {} root(s) re-parented, {} token(s) and {} allowlist row(s) moved, {} merged.\n",
        report.run_id,
        if report.dry_run { " (dry run, nothing changed)" } else { "" },
        t.tenants,
        t.applied,
        t.skipped,
        t.failed,
        if report.dry_run { format!(", {} pending", t.pending) } else { String::new() },
        if t.not_started > 0 { format!(", {} not started", t.not_started) } else { String::new() },
        t.reparented,
        t.tokens_moved,
        t.allowlist_moved,
        t.allowlist_merged,
    ));
    out.stdout(&s)
}
