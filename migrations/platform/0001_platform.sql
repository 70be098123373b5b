-- The platform tables orgctl touches, mirroring the platform's own definitions (SPEC §2).
-- orgctl applies this only to databases it creates itself (`orgctl dev up`, the tests);
-- on a real tenant it checks compatibility instead and never runs this file.

CREATE TYPE workspace_status AS ENUM (
    'provisioning', 'online', 'offline', 'degraded', 'failed', 'removed', 'paused', 'hibernated'
);

CREATE TABLE workspaces (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name             TEXT NOT NULL,
    role             TEXT,
    tier             INT DEFAULT 1,
    status           workspace_status DEFAULT 'provisioning',
    parent_id        UUID REFERENCES workspaces(id),
    runtime          TEXT DEFAULT 'langgraph',
    kind             TEXT,            -- NULL, 'workspace' or 'platform'; NULL means 'workspace'
    last_outbound_at TIMESTAMPTZ,
    created_at       TIMESTAMPTZ DEFAULT now(),
    updated_at       TIMESTAMPTZ DEFAULT now()
);
CREATE INDEX idx_workspaces_parent_id ON workspaces (parent_id);

CREATE TABLE workspace_secrets (
    id                 UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    workspace_id       UUID REFERENCES workspaces(id),
    key                TEXT NOT NULL,
    encrypted_value    BYTEA NOT NULL,
    encryption_version INT NOT NULL DEFAULT 0,
    created_at         TIMESTAMPTZ DEFAULT now(),
    updated_at         TIMESTAMPTZ DEFAULT now(),
    UNIQUE (workspace_id, key)
);

CREATE TABLE global_secrets (
    id                 UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    key                TEXT NOT NULL UNIQUE,
    encrypted_value    BYTEA NOT NULL,
    encryption_version INT NOT NULL DEFAULT 0,
    created_at         TIMESTAMPTZ DEFAULT now(),
    updated_at         TIMESTAMPTZ DEFAULT now()
);

CREATE TABLE org_api_tokens (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash   BYTEA NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    name         TEXT,
    created_by   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    org_id       UUID REFERENCES workspaces(id) ON DELETE SET NULL
);
CREATE INDEX idx_org_api_tokens_live_hash ON org_api_tokens (token_hash) WHERE revoked_at IS NULL;
CREATE INDEX idx_org_api_tokens_org_id ON org_api_tokens (org_id) WHERE org_id IS NOT NULL;

CREATE TABLE org_plugin_allowlist (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id      UUID NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    plugin_name TEXT NOT NULL,
    enabled_by  TEXT NOT NULL,
    enabled_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (org_id, plugin_name)
);

-- A different namespace (the control plane's org UUID): orgctl never touches it. Present so
-- tests can prove that.
CREATE TABLE rescue_bundles (
    id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id     UUID NOT NULL,
    payload    BYTEA,
    created_at TIMESTAMPTZ DEFAULT now()
);
