//! What install-platform-agent would do now, as status reports it.

use sqlx::postgres::PgConnection;

use super::InstallWould;
use crate::error::{Exit, Result};
use crate::ops::install::{self, InstallInput};
use crate::platform::keys::SecretBox;

/// What install-platform-agent would do, computed by the very code a dry run uses (read-only).
/// No --model: MODEL is reported as present or missing, never written.
///
/// A new agent's id comes from `MOLECULE_ORG_ID` when it is set (as the platform reads it); a
/// tenant with no agent and no org id reports the refusal install would meet.
pub(super) async fn install_would(conn: &mut PgConnection) -> Result<InstallWould> {
    let org_id = crate::platform::agent::env("MOLECULE_ORG_ID");
    let input = match InstallInput::new(None, None, None, true)?.with_identity(
        org_id.as_deref(),
        false,
        "MOLECULE_ORG_ID",
    ) {
        Ok(i) => match i.with_org_name_from_env() {
            Ok(i) => i,
            Err(e) => return Ok(InstallWould::refused(e.message)),
        },
        Err(e) => return Ok(InstallWould::refused(e.message)),
    };
    let sb = SecretBox::from_env();
    // A plan apply would refuse (two live namesakes under one parent) is reported as refused.
    let planned = install::plan(conn, &input, &sb, install::Orgctl::Probe)
        .await
        .and_then(|p| match p.refusal() {
            Some(e) => Err(e),
            None => Ok(p),
        });
    match planned {
        Ok(p) => {
            let mut summary = p.summary();
            if p.model == install::ModelAction::Missing {
                summary.push_str(
                    " The agent has no MODEL secret: pass --provision (the platform seeds it as it provisions the agent) or --model MODEL.",
                );
            }
            Ok(InstallWould {
                action: if p.changed() { "install" } else { "none" },
                summary,
                agent: Some(p.agent.action),
                reparented: p.reparented.len(),
                tokens_moved: p.tokens_moved(),
                allowlist_moved: p.allowlist_moved(),
                allowlist_merged: p.merged.len(),
                model_secret: Some(p.model),
            })
        }
        // A refusal (several agents, a removed agent, a name clash, no org id for a new
        // agent) is a finding, not a failure of status itself.
        Err(e) if matches!(e.exit, Exit::Refused | Exit::Usage) => {
            Ok(InstallWould::refused(e.message))
        }
        Err(e) => Err(e),
    }
}

impl InstallWould {
    fn refused(summary: String) -> Self {
        InstallWould {
            action: "refused",
            summary,
            agent: None,
            reparented: 0,
            tokens_moved: 0,
            allowlist_moved: 0,
            allowlist_merged: 0,
            model_secret: None,
        }
    }
}
