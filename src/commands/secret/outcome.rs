//! The report of a secret change (or of a replay of its restarts): the JSON document or the
//! headline with the table of restarts, and the human notes on stderr.

use std::fmt::Write as _;

use serde::Serialize;
use uuid::Uuid;

use super::TABLE_ROWS;
use crate::error::{sanitize, Result};
use crate::ops::secret::{Action, Scope};
use crate::output::{truncated, Output};
use crate::platform::restart::{self, DispatchOutcome, Dispatched, RestartPlan, SkipReason};

/// The outcome of a set, delete or restart, rendered as its JSON document or a table.
pub(super) struct Outcome<'a> {
    pub(super) scope: Scope,
    pub(super) key: &'a str,
    pub(super) target_name: Option<&'a str>,
    pub(super) action: Action,
    pub(super) encryption_version: Option<i32>,
    pub(super) restart: RestartPlan,
    pub(super) dispatched: Vec<Dispatched>,
    pub(super) dry_run: bool,
    pub(super) no_restart: bool,
    /// There is no platform URL to send restarts to: the plan is printed instead.
    pub(super) plan_only: bool,
}

#[derive(Serialize)]
struct JsonOutcome<'a> {
    scope: &'static str,
    workspace_id: Option<Uuid>,
    key: &'a str,
    action: Action,
    encryption_version: Option<i32>,
    restart: JsonRestart,
}

#[derive(Serialize)]
struct JsonRestart {
    planned: Vec<Uuid>,
    skipped: Vec<JsonSkip>,
    dispatched: Vec<Dispatched>,
}

#[derive(Serialize)]
struct JsonSkip {
    id: Uuid,
    reason: SkipReason,
}

impl Outcome<'_> {
    /// The workspaces that were not restarted although they should have been.
    pub(super) fn failed(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .dispatched
            .iter()
            .filter(|d| !d.ok)
            .map(|d| d.id)
            .collect();
        // A target whose kind could not be proven was not restarted either, when restarts were
        // wanted and possible.
        if !self.plan_only && !self.dry_run && !self.no_restart {
            ids.extend(
                self.restart
                    .skipped
                    .iter()
                    .filter(|s| s.reason == SkipReason::KindUnknown)
                    .map(|s| s.id),
            );
        }
        ids
    }

    pub(super) fn render(&self, out: &Output) -> Result<()> {
        if out.json_mode() {
            return out.json(&JsonOutcome {
                scope: self.scope.as_str(),
                workspace_id: self.scope.workspace_id(),
                key: self.key,
                action: self.action,
                encryption_version: self.encryption_version,
                restart: JsonRestart {
                    planned: self.restart.planned.iter().map(|t| t.id).collect(),
                    skipped: self
                        .restart
                        .skipped
                        .iter()
                        .map(|s| JsonSkip {
                            id: s.id,
                            reason: s.reason,
                        })
                        .collect(),
                    dispatched: self.dispatched.clone(),
                },
            });
        }
        out.stdout(&self.text(out, self.dry_run))
    }

    /// `preview`: before the change (a dry run, or the review before a confirmation).
    fn headline(&self, preview: bool) -> String {
        let what = match self.scope {
            Scope::Workspace(id) => match self.target_name {
                Some(n) => format!("Workspace secret {} of {id} \"{}\"", self.key, sanitize(n)),
                None => format!("Workspace secret {} of {id}", self.key),
            },
            Scope::Global => format!("Global secret {}", self.key),
        };
        let version = match self.encryption_version {
            Some(v) if self.action != Action::Deleted => format!(" (encryption_version {v})"),
            _ => String::new(),
        };
        let verb = match (self.action, preview) {
            (Action::Created, true) => "would be created",
            (Action::Updated, true) => "would be updated",
            (Action::Deleted, true) => "would be deleted",
            (Action::Created, false) => "created",
            (Action::Updated, false) => "updated",
            (Action::Deleted, false) => "deleted",
            (Action::NotFound, _) => "does not exist: nothing to do",
            (Action::Restart, true) => "restarts would be replayed (the value is left alone)",
            (Action::Restart, false) => "restarts replayed (the value was left alone)",
        };
        format!("{what}: {verb}{version}.")
    }

    /// The headline and the table of restarts. `preview`: before the change.
    pub(super) fn text(&self, out: &Output, preview: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.headline(preview));
        let rows = self.restart_rows(preview);
        if !rows.is_empty() {
            let _ = writeln!(s, "\nRestarts ({}):", rows.len());
            let mut t = out.new_table(["workspace", "name", "restart"]);
            let (shown, rest) = truncated(&rows, TABLE_ROWS);
            for r in shown {
                t.add_row(r.to_vec());
            }
            let _ = writeln!(s, "{t}");
            if rest > 0 {
                let _ = writeln!(s, "… and {rest} more (use --output json for all)");
            }
        } else if self.action.changes() {
            let _ = writeln!(s, "No workspace to restart.");
        }
        if self.dry_run && self.action.changes() {
            let _ = writeln!(s, "{}", crate::output::DRY_RUN_LINE);
        }
        s
    }

    /// One row per planned workspace (with its call's outcome) and per skipped one.
    fn restart_rows(&self, preview: bool) -> Vec<[String; 3]> {
        let mut rows: Vec<[String; 3]> = Vec::new();
        // By id: a global fan-out can list 100k workspaces.
        let results: std::collections::HashMap<Uuid, &Dispatched> =
            self.dispatched.iter().map(|d| (d.id, d)).collect();
        for t in &self.restart.planned {
            let status = match results.get(&t.id).map(|d| (d.outcome, d)) {
                Some((DispatchOutcome::Restarted, _)) => "restarted".to_string(),
                Some((DispatchOutcome::Noop, _)) => {
                    "no-op (the platform did not restart it)".to_string()
                }
                Some((DispatchOutcome::Gone, _)) => "gone (404; removed)".to_string(),
                Some((_, d)) => {
                    format!("FAILED: {}", d.error.as_deref().unwrap_or("unknown error"))
                }
                None if preview => "would restart".to_string(),
                None => "planned, not restarted (no platform URL)".to_string(),
            };
            rows.push([t.id.to_string(), name_cell(&t.name), status]);
        }
        for k in &self.restart.skipped {
            rows.push([
                k.id.to_string(),
                name_cell(&k.name),
                format!("skipped: {}", k.reason.as_str()),
            ]);
        }
        rows
    }

    /// Human notes on stderr: the guard's skips, and the restarts an operator must do by hand.
    /// `preview`: before the change (a dry run, or the review before a confirmation).
    pub(super) fn notes(&self, out: &Output, preview: bool) {
        for k in &self.restart.skipped {
            match k.reason {
                SkipReason::PlatformRoot => out.info(&format!(
                    "Not restarting the platform agent {} (platform-root guard): it reads the change at its next restart; restart it by hand when it is idle.",
                    k.id
                )),
                SkipReason::KindUnknown => out.warn(&format!(
                    "could not prove that workspace {} is not the platform agent ({}); it was not restarted (fail closed): check it and restart it by hand",
                    k.id,
                    k.detail.as_deref().unwrap_or("lookup failed")
                )),
                _ => {}
            }
        }
        let count = |o: DispatchOutcome| self.dispatched.iter().filter(|d| d.outcome == o).count();
        let noop = count(DispatchOutcome::Noop);
        if noop > 0 {
            out.info(&format!(
                "{noop} workspace(s) were not restarted: the platform answered no-op (it restarted them less than {}s ago, coalesced the call into a restart in flight, or its own rules exclude them). `orgctl secret restart` calls them again; after the debounce that restarts them if they are eligible.",
                restart::RESTART_DEBOUNCE.as_secs()
            ));
        }
        let gone = count(DispatchOutcome::Gone);
        if gone > 0 {
            out.info(&format!(
                "{gone} workspace(s) are gone: the platform has no such workspace (404) and the tenant has it removed or no longer has it; nothing to restart."
            ));
        }
        if self.plan_only && preview && !self.restart.planned.is_empty() {
            out.info(
                "No platform URL (--platform-url or MOLECULE_PLATFORM_URL): applying would print this restart plan instead of restarting.",
            );
        }
        if self.plan_only && !preview && !self.restart.planned.is_empty() {
            out.info(&format!(
                "No platform URL (--platform-url or MOLECULE_PLATFORM_URL): {} workspace(s) were not restarted; the plan is above. Restart them through the platform, or rerun with a platform URL.",
                self.restart.planned.len()
            ));
        }
    }
}

fn name_cell(name: &Option<String>) -> String {
    name.as_deref().map(sanitize).unwrap_or_else(|| "-".into())
}
