//! The MODEL secret's rule: what the install does to the agent's MODEL secret (seed it,
//! replace it, leave it present, or report it missing), and what is said when orgctl writes it
//! itself rather than the platform.

use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::planned::{AgentAction, AgentPlan, ModelAction, Plan};
use super::InstallInput;
use crate::db;
use crate::error::Result;
use crate::platform::keys::SecretBox;
use crate::platform::MODEL_KEY;

/// The agent's MODEL secret as stored ($1 the agent, $2 [`MODEL_KEY`]).
pub(super) const MODEL_SECRET: &str =
    "SELECT encrypted_value, encryption_version FROM workspace_secrets
              WHERE workspace_id = $1 AND key = $2";

/// What the install does to the MODEL secret. Reads the stored value only to compare it with
/// `--model` (the same value, readable with the key at hand, is not written again).
pub(super) async fn model_action(
    conn: &mut PgConnection,
    agent: &AgentPlan,
    input: &InstallInput,
    sb: &SecretBox,
) -> Result<ModelAction> {
    let existing = if agent.action == AgentAction::Create {
        None
    } else {
        db::query(MODEL_SECRET)
            .bind(agent.id)
            .bind(MODEL_KEY)
            .fetch_optional(&mut *conn)
            .await?
    };
    let action = match (&input.model, existing) {
        (None, Some(_)) => ModelAction::Present,
        (None, None) => ModelAction::Missing,
        (Some(_), None) => ModelAction::Seeded,
        (Some(wanted), Some(row)) => {
            let stored: Vec<u8> = row.try_get(0)?;
            let version: i32 = row.try_get(1)?;
            // Same value already stored (readable with the key at hand): nothing to write, so a
            // rerun with the same --model stays a no-op.
            match sb.open(&stored, version) {
                Some(plain) if plain.as_slice() == wanted.as_bytes() => ModelAction::Present,
                _ => ModelAction::Replaced,
            }
        }
    };
    if action.writes() && !input.provision {
        // A dry run meets the same key/production refusal apply would. (Through the platform,
        // the platform encrypts MODEL with its own key.)
        sb.write_version()?;
    }
    Ok(action)
}

/// orgctl writes MODEL itself (no `--provision`): the platform has not validated the value for
/// the agent's runtime, and the running agent picks it up only at its next provision; and a
/// MOLECULE_MODEL secret, when set, outranks it. Said on stderr, before anything is changed.
pub fn direct_model_warnings(plan: &Plan) -> Vec<String> {
    let mut w = vec![
        "MODEL is written straight to the database: the platform has not validated it for the agent's runtime, and it applies at the agent's next provision (pass --provision to have the platform validate and set it)".to_string(),
    ];
    if let Some(place) = plan.model_outranked {
        w.push(format!(
            "a {} secret is set {place}: it outranks MODEL, so the agent will not run the model given with --model",
            crate::platform::MODEL_OVERRIDE_KEY,
        ));
    }
    w
}
