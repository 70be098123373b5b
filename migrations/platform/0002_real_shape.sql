-- The shape of the platform's real schema around `workspaces` (SPEC §2), for development and
-- tests only (orgctl never applies it to a tenant): more `workspaces` columns the platform
-- maintains (some NOT NULL with defaults or CHECKs, a second self-reference), and other tables
-- that reference `workspaces(id)` in each way the platform's do — ON DELETE CASCADE, plain
-- (restrict) and ON DELETE SET NULL. The names are ours; the kinds of reference are the point:
-- orgctl must find them through the catalog, never from a list.

ALTER TABLE workspaces
    ADD COLUMN url               TEXT,
    ADD COLUMN last_heartbeat_at TIMESTAMPTZ,
    ADD COLUMN provisioned_at    TIMESTAMPTZ,
    -- A second self-reference, plain: a workspace that forwards to another blocks its delete.
    ADD COLUMN forwarded_to      UUID REFERENCES workspaces(id),
    ADD COLUMN visibility        TEXT NOT NULL DEFAULT 'org'
                                 CHECK (visibility IN ('private', 'org', 'public')),
    ADD COLUMN max_concurrency   INT NOT NULL DEFAULT 1 CHECK (max_concurrency > 0),
    ADD COLUMN config            JSONB NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN restart_count     INT NOT NULL DEFAULT 0;

-- ON DELETE CASCADE: deleting a workspace silently takes these with it.
CREATE TABLE canvas_layouts (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    x            INT NOT NULL DEFAULT 0,
    y            INT NOT NULL DEFAULT 0
);
CREATE TABLE activity_logs (
    id           BIGSERIAL PRIMARY KEY,
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    event        TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_activity_logs_workspace ON activity_logs (workspace_id);
CREATE TABLE workspace_auth_tokens (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    token_hash   BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE agent_memories (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    content      TEXT NOT NULL
);

-- Plain (NO ACTION / RESTRICT): deleting a referenced workspace fails.
CREATE TABLE agents (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id UUID NOT NULL REFERENCES workspaces(id),
    model        TEXT,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE approval_requests (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id UUID NOT NULL REFERENCES workspaces(id) ON DELETE RESTRICT,
    -- Two references to workspaces from one table.
    approver_workspace_id UUID REFERENCES workspaces(id) ON DELETE RESTRICT,
    status       TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'denied'))
);

-- ON DELETE SET NULL: deleting a workspace leaves these dangling-by-NULL.
CREATE TABLE delegations (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    from_workspace_id UUID REFERENCES workspaces(id) ON DELETE SET NULL,
    task              TEXT NOT NULL
);
