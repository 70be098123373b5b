-- The hand-written baseline for bench/install.sh: the same updates install-platform-agent
-- makes, as one transaction of plain SQL, with no planning, no checks, no audit.
\set ON_ERROR_STOP on
BEGIN;
CREATE TEMP TABLE old_roots ON COMMIT DROP AS
  SELECT id FROM workspaces WHERE parent_id IS NULL;
INSERT INTO workspaces (id, name, kind, parent_id, tier)
  VALUES ('00000000-0000-4000-8000-0000000a6e47', 'Platform Agent', 'platform', NULL, 0);
INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version)
  VALUES ('00000000-0000-4000-8000-0000000a6e47', 'MODEL', 'bench-model'::bytea, 0);
DELETE FROM org_plugin_allowlist a
 USING (SELECT id, row_number() OVER (PARTITION BY plugin_name ORDER BY enabled_at, id) AS rn
          FROM org_plugin_allowlist WHERE org_id IN (SELECT id FROM old_roots)) s
 WHERE a.id = s.id AND s.rn > 1;
UPDATE org_plugin_allowlist SET org_id = '00000000-0000-4000-8000-0000000a6e47'
 WHERE org_id IN (SELECT id FROM old_roots);
UPDATE org_api_tokens SET org_id = '00000000-0000-4000-8000-0000000a6e47'
 WHERE org_id IN (SELECT id FROM old_roots);
UPDATE workspaces SET parent_id = '00000000-0000-4000-8000-0000000a6e47', updated_at = now()
 WHERE id IN (SELECT id FROM old_roots);
COMMIT;
