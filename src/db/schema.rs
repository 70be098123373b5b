//! The platform-schema compatibility check: the tables and columns orgctl reads or writes,
//! and the refusal (exit 3) that names each one a tenant lacks.

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Row};

use super::query::simple_batch;
use crate::error::{Error, Result};

/// The platform tables and columns orgctl reads or writes. A tenant missing any of them is
/// refused before anything else happens.
pub const REQUIRED_COLUMNS: &[(&str, &[&str])] = &[
    (
        "workspaces",
        &[
            "id",
            "name",
            "tier",
            "status",
            "parent_id",
            "runtime",
            "kind",
            "template",
            "broadcast_enabled",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "workspace_declared_plugins",
        &["workspace_id", "plugin_name", "source_raw", "updated_at"],
    ),
    (
        "workspace_secrets",
        &[
            "workspace_id",
            "key",
            "encrypted_value",
            "encryption_version",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "global_secrets",
        &[
            "key",
            "encrypted_value",
            "encryption_version",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "org_api_tokens",
        &[
            "id",
            "token_hash",
            "prefix",
            "name",
            "created_by",
            "created_at",
            "last_used_at",
            "revoked_at",
            "org_id",
            "expires_at",
        ],
    ),
    (
        "org_token_audit_logs",
        &["token_id", "action", "actor", "org_id", "metadata"],
    ),
    (
        "org_plugin_allowlist",
        &["id", "org_id", "plugin_name", "enabled_by", "enabled_at"],
    ),
];

/// Refuse (exit 3) a tenant whose schema lacks a table or column orgctl needs, naming each.
/// Runs in a transaction of its own (catalog reads only, one simple-query message): no
/// statement of orgctl runs outside one, because a transaction pooler may hand the server
/// connection to another client between statements. A change checks the same inside its own
/// transaction ([`begin_change`]).
pub async fn ensure_compatible(conn: &mut PgConnection) -> Result<()> {
    let mut tx = conn.begin().await?;
    let rows = simple_batch(&mut tx, &compatibility_sql()).await?;
    tx.rollback().await?;
    check_compatible(rows.first().map(Vec::as_slice).unwrap_or_default())
}

/// The catalog query behind [`check_compatible`]: each required table (resolved through the
/// `search_path`, as the platform's own queries do), whether it is there, and its columns.
/// Only orgctl's constant table names are written into it.
pub(super) fn compatibility_sql() -> String {
    let names: Vec<String> = REQUIRED_COLUMNS
        .iter()
        .map(|(t, _)| format!("'{t}'"))
        .collect();
    format!(
        "SELECT t.name, to_regclass(t.name) IS NOT NULL AS present, a.attname::text
           FROM unnest(ARRAY[{}]::text[]) AS t(name)
           LEFT JOIN pg_catalog.pg_attribute a
             ON a.attrelid = to_regclass(t.name) AND a.attnum > 0 AND NOT a.attisdropped",
        names.join(", ")
    )
}

pub(super) fn check_compatible(rows: &[PgRow]) -> Result<()> {
    let mut missing = Vec::new();
    for (table, columns) in REQUIRED_COLUMNS {
        let present = rows.iter().any(|r| {
            r.try_get::<String, _>(0).ok().as_deref() == Some(*table)
                && r.try_get::<bool, _>(1).unwrap_or(false)
        });
        if !present {
            missing.push(format!("table {table}"));
            continue;
        }
        for col in *columns {
            let has = rows.iter().any(|r| {
                r.try_get::<String, _>(0).ok().as_deref() == Some(*table)
                    && r.try_get::<Option<String>, _>(2).ok().flatten().as_deref() == Some(*col)
            });
            if !has {
                let hint = if *table == "workspaces" && *col == "kind" {
                    " (the platform predates the platform-agent kind)"
                } else {
                    ""
                };
                missing.push(format!("column {table}.{col}{hint}"));
            }
        }
    }
    let absent_tables = missing.iter().filter(|m| m.starts_with("table ")).count();
    if missing.is_empty() {
        Ok(())
    } else if absent_tables == REQUIRED_COLUMNS.len() {
        // None of the platform's tables: not an old tenant, not a tenant at all.
        Err(Error::refused(
            "this database has none of the platform's tables (workspaces, org_api_tokens, …): it is not a tenant database; check the database name in --database-url (or DATABASE_URL)",
        ))
    } else {
        Err(Error::refused(format!(
            "the tenant's schema is incompatible with orgctl: missing {}; upgrade the platform's schema first",
            missing.join(", ")
        )))
    }
}
