//! One file (or folder) per subcommand: arguments → checked input → an operation → rendering.
//! The layer under [`crate::cli`]'s callers and over [`crate::ops`].
pub mod audit;
pub mod backfill;
pub(crate) mod change;
pub mod completions;
pub mod dev;
pub mod install;
pub mod secret;
pub mod status;
pub mod token;

use sqlx::postgres::PgConnection;

use crate::db::{self, DbUrl};
use crate::error::Result;
use crate::Context;

/// The tenant's URL and a connection to it, checked for a schema orgctl can work with.
pub(crate) async fn connect(ctx: &Context) -> Result<(DbUrl, PgConnection)> {
    let url = ctx.url()?;
    let conn = connect_to(ctx, &url).await?;
    Ok((url, conn))
}

/// A connection to `url`, checked for a schema orgctl can work with.
pub(crate) async fn connect_to(ctx: &Context, url: &DbUrl) -> Result<PgConnection> {
    let mut conn = db::connect(url, &ctx.settings).await?;
    db::ensure_compatible(&mut conn).await?;
    Ok(conn)
}
