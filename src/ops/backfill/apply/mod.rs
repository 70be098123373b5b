//! `backfill run`: install-platform-agent on every selected tenant.
//!
//! Per tenant, in ONE transaction: the tenant advisory lock, the run-state check (done under this
//! run id already: skipped), the row locks of install, the plan (the same code as
//! `install-platform-agent`), the snapshot of every row the plan changes into the tenant's
//! `orgctl` tables (set-based `INSERT … SELECT`, before the change), the change itself with its
//! row-count checks and verification, the run-state row and an audit row, then COMMIT. A failure
//! anywhere rolls that tenant back alone; the failure is then recorded (best effort, in its own
//! transaction) so `backfill status` can show it, and the other tenants carry on.

mod provision;
mod run;
mod snapshot;

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::db::{self, Arg, Settings};
use crate::error::{Error, Result};
use crate::ops::backfill::records::{prior_run, record_failure, record_run};
use crate::ops::backfill::{clean, digest, Committing, Tenant};
use crate::ops::install::{self, AgentAction, InstallInput, ModelAction, Plan};
use crate::output::duration::millis;
use crate::platform::keys::SecretBox;
use crate::platform::provision::ProvisionResult;

pub use provision::ProvisionJob;
pub use run::{run_fleet, totals, Report, Summary};
use snapshot::snapshot;

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
    /// The run's `--reason`, recorded on every tenant's audit rows.
    pub who: crate::audit::Who,
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
        input.provision_without_url = self.provision.is_some() && t.platform_url.is_none();
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
            provision::provision_tenant(&job, pj, &t, conn.as_mut(), &committing, &mut result)
                .await;
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
        result.duration_ms = millis(start.elapsed());
        result
    })
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
        plan_only(job, t, conn, &input).await
    } else {
        change(job, t, conn, &input, committing).await
    }
}

/// The dry run of one tenant: its plan, read-only (`pending` when the install would change it).
async fn plan_only(
    job: &Job,
    t: &Tenant,
    conn: &mut PgConnection,
    input: &InstallInput,
) -> Result<TenantResult> {
    db::ensure_compatible(conn).await?;
    let mut tx = db::begin_read_only(conn, &job.settings).await?;
    let prior = prior_run(&mut tx, &job.run_id, false).await?;
    let plan = install::plan(&mut tx, input, &job.sb, install::Orgctl::Probe).await?;
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
    Ok(match (plan.changed(), extra) {
        (true, Some(w)) => r.note(w),
        (true, None) => r,
        (false, _) => r.note("already installed"),
    })
}

/// The change on one tenant, in one transaction: skipped when done under this run already or
/// when there is nothing to do, else the snapshot, the install and its audit row, committed.
async fn change(
    job: &Job,
    t: &Tenant,
    conn: &mut PgConnection,
    input: &InstallInput,
    committing: &Committing,
) -> Result<TenantResult> {
    // The platform's schema checked and orgctl's own created or checked in the transaction of
    // the change, so the snapshot has somewhere to go before anything changes.
    // On a tenant's first touch the row locks and the plan's first reads ride in the message
    // that creates orgctl's schema.
    let db::Begun {
        mut tx,
        created,
        tail,
    } = db::begin_change_on(conn, &t.url, &job.settings, &install::plan_tail(input)).await?;
    // A schema this transaction has just created holds no run row (one statement fewer on a
    // tenant's first touch).
    let prior = if created {
        None
    } else {
        prior_run(&mut tx, &job.run_id, true).await?
    };
    if let Some(p) = prior.filter(|p| p.done()) {
        tx.rollback().await?;
        let mut r = TenantResult::new(t, Status::Skipped)
            .note(format!("{} under this run already", p.status));
        // For --provision on a resumed run.
        r.agent_id = p.agent_id;
        return Ok(r);
    }
    let plan = install::lock_and_plan(&mut tx, input, &job.sb, tail).await?;
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
    let head = install_with_snapshot(&mut tx, job, t, input, &plan).await?;
    let evidence = crate::ops::evidence::RunRow {
        run_id: job.run_id.clone(),
        status: "applied",
    };
    let note = commit(tx, job, t, committing, &evidence).await?;
    let mut r = TenantResult::new(t, Status::Applied).with_plan(&plan);
    r.audit_head = Some(head);
    let extra = join_notes(ceiling, outranked);
    Ok(match (note, extra) {
        (Some(n), Some(w)) => r.note(format!("{w}; {n}")),
        (Some(n), None) => r.note(n),
        (None, Some(w)) => r.note(w),
        (None, None) => r,
    })
}

/// The snapshot, the install and the audit row, in the tenant's transaction (not committed).
/// The snapshot and the audit chain's head travel in the change's first statement, the
/// verification with the audit row: three statements fewer for every tenant. Returns the audit
/// chain's new head.
async fn install_with_snapshot(
    tx: &mut PgConnection,
    job: &Job,
    t: &Tenant,
    input: &InstallInput,
    plan: &Plan,
) -> Result<crate::audit::HeadJson> {
    let mut args = install::audit_args(input, plan);
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
    let (mut first, parts) = snapshot(&job.run_id, &t.name, plan)?;
    let raw = first.arg(Arg::TextList(crate::audit::audit_head_args(&entry)));
    // The snapshot's digest, from what its writes returned, merged into the audit row.
    let lines: Vec<String> = parts
        .iter()
        .map(|c| format!("SELECT part, line FROM {c}"))
        .collect();
    let digest = format!(
        "jsonb_build_object('{}', {})",
        digest::ARG,
        digest::digest_sql(&lines.join(" UNION ALL "))
    );
    first.read(
        crate::audit::AUDIT_HEAD_CTE,
        crate::audit::audit_head_columns_merging(&raw, Some(&digest)),
    );
    let read = install::execute(&mut *tx, plan, input, &job.sb, first)
        .await?
        .ok_or_else(|| Error::failed("internal: the change's first statement read nothing"))?;
    let head = crate::audit::AuditHead::decode(&read, 0)?;
    let (head_seq, head_hash) = crate::audit::append_after_head(
        &mut *tx,
        &job.who,
        head,
        &entry,
        Some(install::verification(plan)),
    )
    .await?;
    Ok(crate::audit::HeadJson {
        seq: head_seq,
        row_hash: crate::audit::hex(&head_hash),
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
