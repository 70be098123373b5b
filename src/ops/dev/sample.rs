//! The sample org of every dev database, the sample tenants of `dev up --tenants N`, and the
//! large generated org of `dev seed`.

use std::path::{Path, PathBuf};

use sqlx::Executor;

use super::cluster::url_for;
use crate::db::{self, DbUrl, Settings};
use crate::error::{Error, Result};
use crate::output::Output;

pub const DEV_DATABASE: &str = "orgctl_dev";
/// Marks a database as a throwaway one that `dev seed` may fill.
pub const DEV_COMMENT: &str = "orgctl dev database";
pub const SAMPLE_ORG_SQL: &str = include_str!("../../sql/sample_org.sql");

/// Whether a database of this name exists.
pub(super) const DATABASE_EXISTS_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)";
/// The current database's comment ([`DEV_COMMENT`] on a dev database).
pub(super) const DATABASE_COMMENT_SQL: &str =
    "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()";

/// Create `name` with the platform schema and the sample org unless it exists; whether it was
/// created. The name is orgctl's own (a constant or `orgctl_dev_tN`): it cannot be a bound
/// value in CREATE DATABASE.
pub(super) async fn sample_database(
    settings: &Settings,
    admin: &mut sqlx::PgConnection,
    port: u16,
    name: &str,
) -> Result<bool> {
    let exists: bool = db::query_scalar(DATABASE_EXISTS_SQL)
        .bind(name)
        .fetch_one(&mut *admin)
        .await?;
    if exists {
        return Ok(false);
    }
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    admin
        .execute(format!("COMMENT ON DATABASE {name} IS '{DEV_COMMENT}'").as_str())
        .await?;
    let url = DbUrl::parse(&url_for(port, name))?;
    let mut dev = db::connect(&url, settings).await?;
    let mut tx = db::begin_write(&mut dev, settings).await?;
    tx.execute(db::PLATFORM_SCHEMA_SQL).await?;
    tx.execute(SAMPLE_ORG_SQL).await?;
    tx.commit().await?;
    Ok(true)
}

/// The tenants file `dev up --tenants N` writes into the dev directory (`dev down` removes it).
pub const TENANTS_FILE: &str = "tenants.txt";
/// Its first line: `dev down` removes a tenants file only when it starts so.
const TENANTS_HEAD: &str = "# Sample tenants of `orgctl dev up --tenants N`";

/// `dev up --tenants N`: N sample tenants `dev-1` … `dev-N` (databases `orgctl_dev_t1` …, each
/// with the sample org and its own org id `dev-org-I`) and the tenants file naming them.
pub(super) async fn sample_fleet(
    out: &Output,
    settings: &Settings,
    admin: &mut sqlx::PgConnection,
    port: u16,
    dir: &Path,
    n: u32,
) -> Result<PathBuf> {
    let mut text = format!("{TENANTS_HEAD}: NAME DATABASE_URL org_id=ID\n");
    let mut made = 0;
    for i in 1..=n {
        if sample_database(settings, admin, port, &format!("{DEV_DATABASE}_t{i}")).await? {
            made += 1;
        }
        text.push_str(&format!(
            "dev-{i} {} org_id=dev-org-{i}\n",
            url_for(port, &format!("{DEV_DATABASE}_t{i}"))
        ));
    }
    let path = dir.join(TENANTS_FILE);
    std::fs::write(&path, text)
        .map_err(|e| Error::failed(format!("could not write {}: {e}", path.display())))?;
    out.info(&format!(
        "{n} sample tenant(s) ({made} new, each with the sample org); tenants file: {}",
        path.display()
    ));
    Ok(path)
}

/// Remove the tenants file of `dev up --tenants` from `dir` (it names databases that are gone
/// now): only a file that starts as orgctl writes it.
pub(super) fn remove_tenants_file(dir: &Path) {
    let tenants = dir.join(TENANTS_FILE);
    if std::fs::read_to_string(&tenants).is_ok_and(|t| t.starts_with(TENANTS_HEAD)) {
        let _ = std::fs::remove_file(&tenants);
    }
}

/// The set-based statements of `dev seed`, run in one transaction.
const LARGE_ORG: &[&str] = &[
    "CREATE TEMP TABLE seed_roots ON COMMIT DROP AS
       SELECT gen_random_uuid() AS id, g AS rn FROM generate_series(0, $1 - 1) g",
    "CREATE TEMP TABLE seed_children ON COMMIT DROP AS
       SELECT gen_random_uuid() AS id, g AS rn FROM generate_series(0, $2 - $1 - 1) g",
    "INSERT INTO workspaces (id, name, tier, status, created_at)
       SELECT id, 'root-' || rn, 1, 'online', now() - rn * interval '1 minute' FROM seed_roots",
    "INSERT INTO workspaces (id, name, tier, status, parent_id)
       SELECT c.id, 'ws-' || c.rn, 2, 'online', r.id
         FROM seed_children c JOIN seed_roots r ON r.rn = c.rn % $1",
    "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by, revoked_at, org_id)
       SELECT h, substr(encode(h, 'hex'), 1, 8), 'root-token-' || g, 'session',
              CASE WHEN g % 100 < $5 THEN now() END, r.id
         FROM generate_series(0, $4 - 1) g
         JOIN seed_roots r ON r.rn = g % $1
         CROSS JOIN LATERAL (SELECT sha256(convert_to($8 || ':r:' || g, 'UTF8')) AS h) x",
    "INSERT INTO org_api_tokens (token_hash, prefix, name, created_by, revoked_at, org_id)
       SELECT h, substr(encode(h, 'hex'), 1, 8), 'token-' || g, 'session',
              CASE WHEN g % 100 < $5 THEN now() END, c.id
         FROM generate_series(0, $3 - $4 - 1) g
         LEFT JOIN seed_children c ON g % 2 = 0 AND c.rn = g % GREATEST($2 - $1, 1)
         CROSS JOIN LATERAL (SELECT sha256(convert_to($8 || ':o:' || g, 'UTF8')) AS h) x",
    "INSERT INTO org_plugin_allowlist (org_id, plugin_name, enabled_by, enabled_at)
       SELECT r.id, 'plugin-' || (((g / $1) + r.rn * 7) % $7), 'seed',
              now() - (g % 997) * interval '1 minute'
         FROM generate_series(0, $6 - 1) g JOIN seed_roots r ON r.rn = g % $1
       ON CONFLICT DO NOTHING",
];

/// The shape of `dev seed`'s generated org.
#[derive(Clone, Copy, Debug)]
pub struct SeedInput {
    pub roots: u32,
    pub workspaces: u32,
    pub tokens: u32,
    pub tokens_on_roots: u32,
    pub revoked_pct: u32,
    pub allowlist: u32,
    pub plugins: u32,
}

impl SeedInput {
    /// At least one root and one plugin name; roots among the workspaces, root tokens among
    /// the tokens.
    pub fn check(self) -> Result<Self> {
        let a = self;
        if a.roots == 0 || a.workspaces < a.roots || a.tokens < a.tokens_on_roots || a.plugins == 0
        {
            return Err(Error::usage(
                "dev seed needs --roots >= 1, --workspaces >= --roots, --tokens >= --tokens-on-roots and --plugins >= 1",
            ));
        }
        Ok(a)
    }
}

/// Fill the dev database at `url` with the generated org, in one transaction, then ANALYZE.
/// Only a database marked [`DEV_COMMENT`] (made by `dev up` or the tests) is filled.
pub async fn seed(out: &Output, settings: &Settings, url: &DbUrl, a: &SeedInput) -> Result<()> {
    let mut conn = db::connect(url, settings).await?;
    let mut tx = db::begin_read_only(&mut conn, settings).await?;
    let comment: Option<String> = db::query_scalar(DATABASE_COMMENT_SQL)
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    if comment.as_deref() != Some(DEV_COMMENT) {
        return Err(Error::refused(format!(
            "{} is not an orgctl dev database; dev seed only fills databases made by `orgctl dev up` or the tests",
            url.target()
        )));
    }
    db::ensure_compatible(&mut conn).await?;
    let salt = uuid::Uuid::new_v4().to_string();
    let mut tx = db::begin_write(&mut conn, settings).await?;
    let pb = out.progress(LARGE_ORG.len() as u64 + 1, "seeding");
    for stmt in LARGE_ORG {
        db::query(stmt)
            .bind(a.roots as i32)
            .bind(a.workspaces as i32)
            .bind(a.tokens as i32)
            .bind(a.tokens_on_roots as i32)
            .bind(a.revoked_pct as i32)
            .bind(a.allowlist as i32)
            .bind(a.plugins as i32)
            .bind(&salt)
            .execute(&mut *tx)
            .await?;
        pb.inc(1);
    }
    tx.commit().await?;
    conn.execute("ANALYZE").await?;
    pb.finish_and_clear();
    Ok(())
}
