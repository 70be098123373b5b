-- The backfill's run state and snapshots (SPEC §7), in the tenant's own `orgctl` schema.
-- Everything here is written in the same transaction as the change it describes, so a tenant
-- is either untouched or installed with its snapshot, never in between. Keyed by run id: a
-- tenant database belongs to one tenant, so (run_id) identifies the tenant's part of a run.
-- No foreign keys into platform tables: orgctl must never change how the platform's own
-- deletes behave.

-- One row per run that reached this tenant: applied, skipped (nothing to do), failed (the
-- change rolled back; written afterwards, in its own transaction) or rolled_back.
CREATE TABLE IF NOT EXISTS orgctl.backfill_runs (
    run_id          TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('applied', 'skipped', 'failed', 'rolled_back')),
    agent_id        UUID,
    -- What the run did to the agent: create, update or unchanged.
    agent_action    TEXT,
    -- The agent's whole row before the run (to_jsonb), NULL when the run created it.
    agent_prior     JSONB,
    -- seeded, replaced, present or missing.
    model_action    TEXT,
    -- The agent's whole MODEL workspace_secrets row before the run, NULL when there was none.
    model_prior     JSONB,
    reparented      INT NOT NULL DEFAULT 0,
    tokens_moved    BIGINT NOT NULL DEFAULT 0,
    allowlist_moved BIGINT NOT NULL DEFAULT 0,
    allowlist_merged INT NOT NULL DEFAULT 0,
    plan_hash       TEXT,
    error           TEXT,
    -- The transaction time of the write. For an applied run every updated_at the run wrote
    -- equals it, which is how rollback tells a row the run left from a row changed since.
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    rolled_back_at  TIMESTAMPTZ,
    rollback_forced BOOLEAN NOT NULL DEFAULT false,
    -- Rows --force moved or merged, and rows it could not restore (JSON list).
    rollback_notes  JSONB,
    os_user         TEXT NOT NULL,
    orgctl_version  TEXT NOT NULL
);

-- Each root the run re-parented, with its parent and updated_at before.
CREATE TABLE IF NOT EXISTS orgctl.backfill_roots (
    run_id         TEXT NOT NULL,
    workspace_id   UUID NOT NULL,
    old_parent_id  UUID,
    old_updated_at TIMESTAMPTZ,
    PRIMARY KEY (run_id, workspace_id)
);

-- Each anchor row the run moved to the agent, with its org_id before.
CREATE TABLE IF NOT EXISTS orgctl.backfill_anchors (
    run_id     TEXT NOT NULL,
    tbl        TEXT NOT NULL CHECK (tbl IN ('org_api_tokens', 'org_plugin_allowlist')),
    row_id     UUID NOT NULL,
    old_org_id UUID,
    PRIMARY KEY (run_id, tbl, row_id)
);

-- Each allowlist row the run merged away (deleted), whole (to_jsonb), to re-insert as it was.
CREATE TABLE IF NOT EXISTS orgctl.backfill_merged (
    run_id TEXT NOT NULL,
    row_id UUID NOT NULL,
    row    JSONB NOT NULL,
    PRIMARY KEY (run_id, row_id)
);

-- Rows that already hung off an existing agent before the run (children, tokens, allowlist
-- rows): rollback leaves them there, and counts only other rows on the agent as new.
CREATE TABLE IF NOT EXISTS orgctl.backfill_kept (
    run_id TEXT NOT NULL,
    tbl    TEXT NOT NULL CHECK (tbl IN ('workspaces', 'org_api_tokens', 'org_plugin_allowlist')),
    row_id UUID NOT NULL,
    PRIMARY KEY (run_id, tbl, row_id)
);
