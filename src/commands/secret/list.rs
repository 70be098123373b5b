//! `orgctl secret list (WORKSPACE_ID | --global)`: keys, scopes, versions and dates — never a
//! value. Read-only: never creates orgctl's schema, takes no lock.

use serde::Serialize;
use uuid::Uuid;

use super::{parse_workspace_id, ts};
use crate::cli::SecretListArgs;
use crate::db;
use crate::error::{sanitize, Error, Exit, Result};
use crate::ops::secret::{self, Listed, Scope};
use crate::Context;

#[derive(Serialize)]
struct JsonList<'a> {
    workspace_id: Option<Uuid>,
    secrets: &'a [Listed],
}

pub(super) async fn run(ctx: &Context, args: &SecretListArgs) -> Result<Exit> {
    let scope =
        match (args.scope.global, args.workspace.as_deref()) {
            (true, None) => Scope::Global,
            (false, Some(ws)) => Scope::Workspace(parse_workspace_id(ws)?),
            (true, Some(_)) => {
                return Err(Error::usage(
                    "give either WORKSPACE_ID or --global, not both",
                ))
            }
            (false, None) => return Err(Error::usage(
                "give WORKSPACE_ID to list a workspace's secrets (own and inherited), or --global",
            )),
        };
    let url = ctx.url()?;
    let mut conn = crate::commands::connect_to(ctx, &url).await?;
    // Read-only: never creates orgctl's schema, takes no lock.
    let mut tx = db::begin_read_only(&mut conn, &ctx.settings).await?;
    let listed = secret::list(&mut tx, scope).await?;
    tx.rollback().await?;
    let out = &ctx.out;
    if out.json_mode() {
        out.json(&JsonList {
            workspace_id: scope.workspace_id(),
            secrets: &listed,
        })?;
        return Ok(Exit::Ok);
    }
    if listed.is_empty() {
        out.info("No secrets.");
        return Ok(Exit::Ok);
    }
    let mut t = out.new_table(["key", "scope", "version", "created_at", "updated_at"]);
    for l in &listed {
        let scope = if l.overrides_global {
            "workspace (overrides global)".to_string()
        } else {
            l.scope.to_string()
        };
        t.add_row(vec![
            sanitize(&l.key),
            scope,
            l.encryption_version.to_string(),
            ts(l.created_at),
            ts(l.updated_at),
        ]);
    }
    out.table(&t)?;
    Ok(Exit::Ok)
}
