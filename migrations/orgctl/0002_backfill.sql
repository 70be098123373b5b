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

-- The snapshot of every row a run changed, one table for every kind (one table, not four: on a
-- fleet orgctl creates this schema on every tenant's first touch, and each table costs the
-- server a relation, its primary key and a TOAST table). `kind` says what a row is:
--   root    a root the run re-parented (tbl workspaces): old_parent_id, old_updated_at
--   anchor  a token or allowlist row the run moved to the agent: old_org_id
--   merged  an allowlist row the run merged away (deleted), whole (to_jsonb) in `row`, to
--           re-insert as it was
--   kept    a row that already hung off an existing agent before the run (a child, token or
--           allowlist row): rollback leaves it there, and counts only other rows on the agent
--           as new
-- run_id is at most 64 characters (`--run-id`'s limit).
CREATE TABLE IF NOT EXISTS orgctl.backfill_rows (
    run_id         VARCHAR(64) NOT NULL,
    kind           VARCHAR(8) NOT NULL CHECK (kind IN ('root', 'anchor', 'merged', 'kept')),
    tbl            VARCHAR(32) NOT NULL
                   CHECK (tbl IN ('workspaces', 'org_api_tokens', 'org_plugin_allowlist')),
    row_id         UUID NOT NULL,
    old_parent_id  UUID,
    old_updated_at TIMESTAMPTZ,
    old_org_id     UUID,
    row            JSONB,
    PRIMARY KEY (run_id, kind, tbl, row_id)
);
