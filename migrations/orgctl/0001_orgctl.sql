-- orgctl's own state, in its own schema. Applied on first mutating use, on a connection whose
-- search_path is `orgctl`, so sqlx's version table is orgctl._sqlx_migrations.
-- No foreign keys into platform tables: orgctl must never change how the platform's own
-- deletes behave.

CREATE TABLE IF NOT EXISTS orgctl.audit_log (
    id             BIGSERIAL PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    os_user        TEXT NOT NULL,
    db_user        TEXT NOT NULL DEFAULT current_user,
    command        TEXT NOT NULL,
    args           JSONB NOT NULL DEFAULT '{}'::jsonb,
    outcome        TEXT NOT NULL,
    orgctl_version TEXT NOT NULL
);

-- Roots that install-platform-agent re-parented under the agent. A later install sweeps any
-- anchor row still pointing at one of them (a platform write that raced the install's commit),
-- and `status` reports such rows.
CREATE TABLE IF NOT EXISTS orgctl.former_roots (
    workspace_id  UUID PRIMARY KEY,
    agent_id      UUID NOT NULL,
    reparented_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
