//! `orgctl install-platform-agent`: the arguments checked into an [`InstallInput`], the change
//! run by `change::run` (plan, show, confirm, lock, re-plan, apply, audit, commit), then with
//! `--provision` the platform asked to provision the agent, and the result rendered.

mod render;

use sqlx::postgres::{PgConnection, PgRow};

use super::change::{self, Audit, Done, Mode, Planned, Shown};
use crate::cli::InstallArgs;
use crate::error::{Error, Exit, Result};
use crate::ops::install::{self as op, InstallInput, Orgctl, Plan};
use crate::platform::keys::SecretBox;
use crate::platform::provision::{self, ProvisionResult};
use crate::platform::restart::Platform;
use crate::Context;

/// The install's input from its arguments (and the environment the platform reads).
fn input_from(args: &InstallArgs) -> Result<InstallInput> {
    let mut input = InstallInput::new(
        args.id,
        args.name.as_deref(),
        args.model.as_deref(),
        args.allow_missing_model,
    )?
    .with_identity(
        args.org_id.as_deref(),
        args.self_hosted,
        "--org-id (or MOLECULE_ORG_ID)",
    )?
    .with_org_name_from_env()?;
    input.revive = args.revive;
    input.provision = args.provision;
    Ok(input)
}

pub async fn run(ctx: &Context, args: &InstallArgs) -> Result<Exit> {
    let input = input_from(args)?;
    if let Some(h) = &args.expect_plan {
        change::check_plan_hash(h)?;
    }
    // --provision needs the platform and its token before anything is changed.
    let platform = if args.provision {
        Some(provision::platform_for(
            args.platform.platform_url.as_deref(),
        )?)
    } else {
        None
    };
    let url = ctx.url()?;
    let sb = SecretBox::from_env();
    if let (Some(given), Some(derived)) = (input.id, input.identity().agent_id()) {
        if given != derived {
            ctx.out.warn(&format!(
                "--id {given} differs from the platform's id for this tenant ({derived}, {}): the platform adopts an existing agent whatever its id, but a control plane that installs or ensures with its own id expects {derived}",
                input.identity().describe()
            ));
        }
    }
    if input.model.is_some() && !input.provision {
        // An invalid key is exit 2 (production without a key exit 3) before connecting.
        sb.write_version()?;
    }
    let mode = Mode {
        dry_run: args.dry_run,
        detailed_exitcode: args.detailed_exitcode,
        expect_plan: args.expect_plan.as_deref(),
    };
    let mut install = Install {
        ctx,
        args,
        input,
        sb,
        platform,
        dry_provision: None,
    };
    change::run(ctx, &url, mode, &mut install).await
}

/// The install as [`change::run`] drives it.
struct Install<'a> {
    ctx: &'a Context,
    args: &'a InstallArgs,
    input: InstallInput,
    sb: SecretBox,
    /// With `--provision`: the platform to ask after the commit.
    platform: Option<Platform>,
    /// A dry run with `--provision`: what the provision would start from (the agent's status).
    dry_provision: Option<ProvisionResult>,
}

impl Planned for Plan {
    fn changed(&self) -> bool {
        Plan::changed(self)
    }
    fn hash(&self) -> String {
        Plan::hash(self)
    }
    fn refusal(&self) -> Option<Error> {
        Plan::refusal(self)
    }
}

impl change::Change for Install<'_> {
    type Plan = Plan;
    const REVIEWED: &'static str = "diff";
    const SUBJECT: &'static str = "the tenant";
    const RACED: Option<&'static str> =
        Some("Another run installed the platform agent in the meantime.");

    fn command(&self) -> &'static str {
        "install-platform-agent"
    }

    /// The plan, and its warnings on stderr: broken or too deep chains, the mint ceiling, MODEL
    /// written unvalidated or outranked, MODEL stored in plaintext.
    async fn plan(&mut self, tx: &mut PgConnection) -> Result<Plan> {
        let out = &self.ctx.out;
        let p = op::plan(tx, &self.input, &self.sb, Orgctl::Probe).await?;
        op::chain_warnings(tx, &p, |w| out.warn(w)).await?;
        if let Some(w) = op::token_ceiling_warning(tx, &p).await? {
            out.warn(&w);
        }
        if p.writes_model() {
            for w in op::direct_model_warnings(&p) {
                out.warn(&w);
            }
        }
        if self.args.dry_run && self.args.provision {
            let state = provision::agent_state(tx, p.agent.id).await?;
            self.dry_provision = Some(ProvisionResult {
                final_status: state.and_then(|s| s.status),
                ..ProvisionResult::skipped("dry-run")
            });
        }
        if p.writes_model() {
            if let Some(w) = self.sb.plaintext_warning("the agent's MODEL secret") {
                out.warn(&w);
            }
        }
        Ok(p)
    }

    fn tail(&self) -> String {
        op::plan_tail(&self.input)
    }

    async fn lock_and_plan(
        &mut self,
        tx: &mut PgConnection,
        tail: Option<Result<Vec<Vec<PgRow>>>>,
    ) -> Result<Plan> {
        op::lock_and_plan(tx, &self.input, &self.sb, tail).await
    }

    fn render(&self, plan: &Plan, shown: Shown) -> Result<()> {
        let out = &self.ctx.out;
        match shown {
            Shown::DryRun => render::render(
                out,
                plan,
                true,
                false,
                false,
                self.dry_provision.as_ref().map(|p| (p, None)),
            ),
            Shown::NotApplied => render::render(out, plan, false, false, false, None),
        }
    }

    fn review(&self, plan: &Plan) -> Option<String> {
        Some(render::render_text(
            &self.ctx.out,
            plan,
            true,
            false,
            plan.model,
        ))
    }

    fn question(&self, _plan: &Plan, target: &str) -> String {
        format!("Apply this plan to {target}?")
    }

    async fn apply(&mut self, tx: &mut PgConnection, plan: &Plan) -> Result<Audit> {
        op::execute(tx, plan, &self.input, &self.sb, op::Changes::default()).await?;
        Ok(Audit {
            args: op::audit_args(&self.input, plan),
            check: Some(op::verification(plan)),
        })
    }

    /// With --provision, bring the agent to life; then render the result with the provision
    /// outcome.
    async fn finish(&mut self, conn: &mut PgConnection, plan: &Plan, done: Done) -> Result<Exit> {
        let out = &self.ctx.out;
        let applied = done != Done::Nothing;
        let shown = done == Done::AppliedAfterReview;
        let Some(platform) = &self.platform else {
            render::render(out, plan, false, applied, shown, None)?;
            return Ok(Exit::Ok);
        };
        // Post-commit work: a Ctrl-C lets it report what it did (exit 130) instead of cutting it.
        let _guard = crate::interrupt::CommitGuard::enter();
        let created = applied && plan.agent.action == op::AgentAction::Create;
        let ask = provision::Ask {
            org_id: self.input.org_id.as_deref(),
            model: self
                .input
                .model
                .as_ref()
                .filter(|_| plan.model_to_platform())
                .map(|m| m.as_str()),
        };
        let p = crate::ops::provision::provision(
            out,
            conn,
            &self.ctx.settings,
            &self.ctx.who,
            platform,
            plan.agent.id,
            created,
            ask,
            provision::Wait::from_arg(self.args.wait),
            provision::ctrl_c(),
            if applied {
                "the install"
            } else {
                "the install (already in place, nothing was changed)"
            },
        )
        .await;
        render::render(
            out,
            plan,
            false,
            applied,
            shown,
            Some((&p.result, p.problem.as_ref())),
        )?;
        match p.problem {
            Some(e) => Err(e),
            None => Ok(Exit::Ok),
        }
    }
}
