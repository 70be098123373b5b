//! `orgctl dev up|down|seed`: a throwaway local PostgreSQL with a sample org, for trying
//! orgctl out. `up` prints the dev database's URL on stdout (or a JSON document).

use crate::cli::{DevCommand, DevDirArgs, DevSeedArgs, DevUpArgs};
use crate::error::{Exit, Result};
use crate::ops::dev::{self, Down, SeedInput, Up, UpInput, DEV_DATABASE};
use crate::Context;

pub async fn run(ctx: &Context, cmd: &DevCommand) -> Result<Exit> {
    match cmd {
        DevCommand::Up(a) => up(ctx, a).await,
        DevCommand::Down(a) => down(ctx, a),
        DevCommand::Seed(a) => seed(ctx, a).await,
    }
}

async fn up(ctx: &Context, a: &DevUpArgs) -> Result<Exit> {
    let dir = dev::dev_dir(a.dir.dir.as_deref())?;
    let input = UpInput {
        dir: dir.clone(),
        port: a.port,
        tenants: a.tenants,
    };
    let dir_given = a.dir.dir.is_some();
    dev::up(&ctx.out, &ctx.settings, &input, |up| {
        report_up(ctx, up, &input, dir_given)
    })
    .await?;
    Ok(Exit::Ok)
}

/// Where the dev server runs and how to stop it (stderr); its URL, or the JSON document, on
/// stdout.
fn report_up(ctx: &Context, up: &Up, input: &UpInput, dir_given: bool) -> Result<()> {
    let out = &ctx.out;
    let dir = &input.dir;
    let down = if dir_given {
        format!("orgctl dev down --dir {}", dir.display())
    } else {
        "orgctl dev down".to_string()
    };
    out.info(&format!(
        "dev database {} on 127.0.0.1:{} ({}, data in {}); stop it with `{down}`",
        DEV_DATABASE,
        up.port,
        if up.reused { "reused" } else { "started" },
        dir.display()
    ));
    if out.json_mode() {
        let mut doc = serde_json::json!({ "database_url": up.database_url });
        if let Some(f) = &up.tenants_file {
            doc["tenants_file"] = serde_json::Value::from(f.display().to_string());
        }
        out.json(&doc)?;
    } else {
        out.stdout(&format!("{}\n", up.database_url))?;
    }
    Ok(())
}

fn down(ctx: &Context, a: &DevDirArgs) -> Result<Exit> {
    let dir = dev::dev_dir(a.dir.as_deref())?;
    match dev::down(&dir)? {
        Down::Nothing => ctx.out.info(&format!(
            "no dev server in {}: nothing to do",
            dir.display()
        )),
        Down::Stopped { data, kept } => ctx.out.info(&format!(
            "stopped the dev server and deleted {}{}",
            if kept { data.display() } else { dir.display() },
            if kept {
                " (the directory holds other files: kept)"
            } else {
                ""
            }
        )),
    }
    Ok(Exit::Ok)
}

async fn seed(ctx: &Context, a: &DevSeedArgs) -> Result<Exit> {
    let input = SeedInput {
        roots: a.roots,
        workspaces: a.workspaces,
        tokens: a.tokens,
        tokens_on_roots: a.tokens_on_roots,
        revoked_pct: a.revoked_pct,
        allowlist: a.allowlist,
        plugins: a.plugins,
    }
    .check()?;
    let url = ctx.url()?;
    dev::seed(&ctx.out, &ctx.settings, &url, &input).await?;
    ctx.out.info(&format!(
        "seeded {} roots, {} workspaces, {} tokens ({} on roots), {} allowlist rows into {}",
        a.roots,
        a.workspaces,
        a.tokens,
        a.tokens_on_roots,
        a.allowlist,
        url.target()
    ));
    Ok(Exit::Ok)
}
