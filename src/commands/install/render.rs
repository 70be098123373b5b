//! What install-platform-agent prints: the plan (or the applied result) as text tables or as
//! one JSON document, with the provision result when `--provision` was given.

use std::fmt::Write as _;

use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::ops::install::{AgentAction, ModelAction, Plan, PluginAction};
use crate::output::{truncated, Output};
use crate::platform::agent as platform_agent;
use crate::platform::provision::ProvisionResult;
use crate::platform::tree;

/// Rows a table section lists before it summarises the rest (JSON always lists all).
const TABLE_ROWS: usize = 50;

#[derive(Serialize)]
struct JsonPlan<'a> {
    dry_run: bool,
    changed: bool,
    platform_agent: JsonAgent<'a>,
    reparented: Vec<JsonReparent<'a>>,
    /// What the re-parented roots lose on the platform; null when no root is re-parented.
    root_behaviour_lost: Option<JsonRootLoss>,
    anchor_moves: Vec<JsonMove>,
    allowlist_merged: Vec<JsonMerged<'a>>,
    model_secret: ModelAction,
    declared_plugin: JsonPlugin,
    plan_hash: String,
    /// Only with --provision.
    #[serde(skip_serializing_if = "Option::is_none")]
    provision: Option<&'a ProvisionResult>,
}

#[derive(Serialize)]
struct JsonAgent<'a> {
    id: Uuid,
    name: &'a str,
    action: AgentAction,
    /// The fields an update changes, old and new.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    changes: Vec<JsonChange<'a>>,
    /// On create: the row the platform inserts.
    #[serde(skip_serializing_if = "Option::is_none")]
    row: Option<JsonNewAgent<'a>>,
}

#[derive(Serialize)]
struct JsonChange<'a> {
    field: &'a str,
    old: &'a str,
    new: &'a str,
}

#[derive(Serialize)]
struct JsonNewAgent<'a> {
    /// How the id was found: the platform's id for the org id, its self-hosted id, or --id.
    id_source: &'a str,
    kind: &'static str,
    tier: i32,
    status: &'static str,
    runtime: &'a str,
    template: &'static str,
    broadcast_enabled: bool,
}

#[derive(Serialize)]
struct JsonPlugin {
    workspace_id: Uuid,
    plugin_name: &'static str,
    source_raw: &'static str,
    action: PluginAction,
}

#[derive(Serialize)]
struct JsonReparent<'a> {
    id: Uuid,
    name: &'a str,
    old_parent_id: Option<Uuid>,
    new_parent_id: Uuid,
}

#[derive(Serialize)]
struct JsonRootLoss {
    roots: usize,
    effect: &'static str,
}

/// What the re-parented roots lose (None when there are none): said in the plan, since the
/// platform's own installer does it without a word.
fn root_loss(plan: &Plan) -> Option<JsonRootLoss> {
    (!plan.reparented.is_empty()).then_some(JsonRootLoss {
        roots: plan.reparented.len(),
        effect: tree::FORMER_ROOT_LOSES,
    })
}

#[derive(Serialize)]
struct JsonMove {
    table: &'static str,
    from: Uuid,
    to: Uuid,
    rows: i64,
}

#[derive(Serialize)]
struct JsonMerged<'a> {
    id: &'a str,
    plugin_name: &'a str,
    from: Uuid,
}

/// Render the plan (or the applied result) on stdout, with the provision result when
/// --provision was given. `shown`: the whole plan was shown on the terminal before a
/// confirmation; then an applied plan's text is one line of what was done, not the plan again.
pub(super) fn render(
    out: &Output,
    plan: &Plan,
    dry_run: bool,
    applied: bool,
    shown: bool,
    provision: Option<(&ProvisionResult, Option<&Error>)>,
) -> Result<()> {
    // In a dry run, whether apply would change anything.
    let changed = (dry_run || applied) && plan.changed();
    // After the platform answered, MODEL as it is: a model the platform refused is not claimed.
    let model = match provision {
        Some((p, _)) if !dry_run => plan.model_reported(p.accepted()),
        _ => plan.model,
    };
    if out.json_mode() {
        return out.json(&json_doc(
            plan,
            dry_run,
            changed,
            model,
            provision.map(|(p, _)| p),
        ));
    }
    let mut text = if shown && applied {
        // The plan is on the terminal already (shown before the prompt): say what was done.
        format!(
            "Applied: {}.\nplan_hash: {}\n",
            plan.actions().join(", "),
            plan.hash()
        )
    } else {
        render_text(out, plan, dry_run, applied, model)
    };
    if let Some((p, problem)) = provision {
        let _ = writeln!(text, "Provision: {}", p.short(problem));
    }
    out.stdout(&text)
}

/// The JSON document of a plan.
fn json_doc<'a>(
    plan: &'a Plan,
    dry_run: bool,
    changed: bool,
    model: ModelAction,
    provision: Option<&'a ProvisionResult>,
) -> JsonPlan<'a> {
    let to = plan.agent.id;
    let mut anchor_moves: Vec<JsonMove> = plan
        .token_moves
        .iter()
        .map(|m| JsonMove {
            table: "org_api_tokens",
            from: m.from,
            to,
            rows: m.live + m.revoked,
        })
        .collect();
    anchor_moves.extend(plan.allowlist_moves.iter().map(|m| JsonMove {
        table: "org_plugin_allowlist",
        from: m.from,
        to,
        rows: m.rows,
    }));
    JsonPlan {
        dry_run,
        changed,
        platform_agent: json_agent(plan),
        reparented: plan
            .reparented
            .iter()
            .map(|r| JsonReparent {
                id: r.id,
                name: &r.name,
                old_parent_id: None,
                new_parent_id: to,
            })
            .collect(),
        root_behaviour_lost: root_loss(plan),
        anchor_moves,
        allowlist_merged: plan
            .merged
            .iter()
            .map(|m| JsonMerged {
                id: &m.id,
                plugin_name: &m.plugin_name,
                from: m.from,
            })
            .collect(),
        model_secret: model,
        declared_plugin: JsonPlugin {
            workspace_id: plan.agent.id,
            plugin_name: platform_agent::MCP_PLUGIN,
            source_raw: platform_agent::MCP_PLUGIN_SOURCE,
            action: plan.plugin,
        },
        plan_hash: plan.hash(),
        provision,
    }
}

/// The platform agent in the JSON document: its action, and on create the row inserted.
fn json_agent(plan: &Plan) -> JsonAgent<'_> {
    JsonAgent {
        id: plan.agent.id,
        name: &plan.agent.name,
        action: plan.agent.action,
        changes: plan
            .agent
            .changes
            .iter()
            .map(|c| JsonChange {
                field: c.field,
                old: &c.old,
                new: &c.new,
            })
            .collect(),
        row: (plan.agent.action == AgentAction::Create).then(|| JsonNewAgent {
            id_source: &plan.agent.id_source,
            kind: "platform",
            tier: 0,
            status: platform_agent::INITIAL_STATUS,
            runtime: &plan.agent.runtime,
            template: platform_agent::TEMPLATE,
            broadcast_enabled: true,
        }),
    }
}

/// The plan as text: the agent, then a table per kind of change, then MODEL, the declared
/// plugin, the summary and the plan hash.
pub(super) fn render_text(
    out: &Output,
    plan: &Plan,
    dry_run: bool,
    applied: bool,
    model: ModelAction,
) -> String {
    let mut s = String::new();
    agent_line(&mut s, plan);
    if !plan.reparented.is_empty() {
        reparented(&mut s, out, plan);
    }
    if !plan.token_moves.is_empty() || !plan.allowlist_moves.is_empty() {
        anchor_moves(&mut s, out, plan);
    }
    if !plan.merged.is_empty() {
        merged(&mut s, out, plan);
    }
    let _ = writeln!(
        s,
        "\nMODEL secret: {}{}",
        model.as_str(),
        if plan.model_to_platform() && model.writes() {
            " (by the platform, with the provision request: it validates the model for the agent's runtime)"
        } else if plan.model == ModelAction::Missing && plan.ensure {
            " (the platform seeds it when it provisions the agent)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "Declared plugin: {} ({}) — {}",
        platform_agent::MCP_PLUGIN,
        platform_agent::MCP_PLUGIN_SOURCE,
        plan.plugin.as_str()
    );
    let _ = writeln!(s, "\n{}", plan.summary());
    if plan.changed() {
        if dry_run {
            let _ = writeln!(s, "{}", crate::output::DRY_RUN_LINE);
        } else if applied {
            let _ = writeln!(s, "Applied.");
        }
    }
    let _ = writeln!(s, "plan_hash: {}", plan.hash());
    s
}

/// The agent's line: its id, name and action, with what it creates or changes.
fn agent_line(s: &mut String, plan: &Plan) {
    let agent = &plan.agent;
    let detail = match agent.action {
        AgentAction::Create => format!(
            " (kind platform, tier 0, root, status {}, runtime {}, template {}, broadcast on; id: {})",
            platform_agent::INITIAL_STATUS,
            crate::error::sanitize(&agent.runtime),
            platform_agent::TEMPLATE,
            crate::error::sanitize(&agent.id_source),
        ),
        AgentAction::Update => format!(
            " ({})",
            agent
                .changes
                .iter()
                .map(|c| format!("{}: {} → {}", c.field, c.old, c.new))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AgentAction::Unchanged => String::new(),
    };
    let _ = writeln!(
        s,
        "Platform agent: {} \"{}\" — {}{detail}",
        agent.id,
        crate::error::sanitize(&agent.name),
        agent.action.as_str(),
    );
}

/// The re-parented roots' table, and what they lose.
fn reparented(s: &mut String, out: &Output, plan: &Plan) {
    let agent = &plan.agent;
    let _ = writeln!(s, "\nRe-parented roots ({}):", plan.reparented.len());
    let mut t = out.new_table(["id", "name", "status", "old parent", "new parent"]);
    let (shown, rest) = truncated(&plan.reparented, TABLE_ROWS);
    for r in shown {
        t.add_row(vec![
            r.id.to_string(),
            crate::error::sanitize(&r.name),
            // status may be TEXT on older tenants: any value, escape sequences included.
            crate::error::sanitize(r.status.as_deref().unwrap_or("-")),
            "none (root)".into(),
            agent.id.to_string(),
        ]);
    }
    let _ = writeln!(s, "{}", out.render_table(&t));
    if rest > 0 {
        let _ = writeln!(s, "… and {rest} more (use --output json for all)");
    }
    if let Some(loss) = root_loss(plan) {
        let _ = writeln!(
            s,
            "Note: {} ({} root(s) here; the platform's own installer does the same without saying so).",
            loss.effect, loss.roots
        );
    }
}

/// The anchor rows moving to the agent, per table and old root.
fn anchor_moves(s: &mut String, out: &Output, plan: &Plan) {
    let agent = &plan.agent;
    let _ = writeln!(s, "\nAnchor moves (to {}):", agent.id);
    let mut t = out.new_table(["table", "from", "rows", "live", "revoked"]);
    let mut rows: Vec<Vec<String>> = plan
        .token_moves
        .iter()
        .map(|m| {
            vec![
                "org_api_tokens".into(),
                from_label(plan, m.from),
                (m.live + m.revoked).to_string(),
                m.live.to_string(),
                m.revoked.to_string(),
            ]
        })
        .collect();
    rows.extend(plan.allowlist_moves.iter().map(|m| {
        vec![
            "org_plugin_allowlist".into(),
            from_label(plan, m.from),
            m.rows.to_string(),
            "-".into(),
            "-".into(),
        ]
    }));
    let (shown, rest) = truncated(&rows, TABLE_ROWS);
    for r in shown {
        t.add_row(r.clone());
    }
    let _ = writeln!(s, "{}", out.render_table(&t));
    if rest > 0 {
        let _ = writeln!(s, "… and {rest} more (use --output json for all)");
    }
}

/// The allowlist rows merged away, with the row kept for each plugin.
fn merged(s: &mut String, out: &Output, plan: &Plan) {
    let _ = writeln!(
        s,
        "\nMerged allowlist rows ({}; the row with the earliest enabled_at is kept):",
        plan.merged.len()
    );
    let mut t = out.new_table(["id", "plugin", "from", "kept row"]);
    let (shown, rest) = truncated(&plan.merged, TABLE_ROWS);
    for m in shown {
        t.add_row(vec![
            m.id.clone(),
            crate::error::sanitize(&m.plugin_name),
            from_label(plan, m.from),
            plan.kept.get(&m.plugin_name).cloned().unwrap_or_default(),
        ]);
    }
    let _ = writeln!(s, "{}", out.render_table(&t));
    if rest > 0 {
        let _ = writeln!(s, "… and {rest} more (use --output json for all)");
    }
}

fn from_label(plan: &Plan, id: Uuid) -> String {
    if plan.swept_former_roots.contains(&id) {
        format!("{id} (former root)")
    } else {
        id.to_string()
    }
}
