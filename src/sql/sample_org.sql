-- The sample org `orgctl dev up` seeds and the tests use: every awkward case install has to
-- handle. Fixed ids so the README and the tests can name them.
--   roots:     Acme HQ (online), Acme Labs (online), Acme Legacy (removed tombstone)
--   children:  a chain five deep under Acme HQ; an external and a paused workspace under Labs
--   tokens:    live and revoked on a root, on the tombstone, unanchored (live and revoked),
--              and one anchored to a non-root
--   allowlist: 'github' enabled on two roots (collision), one plugin per root besides
--   secrets:   a workspace secret, a workspace override of a global key, global secrets

INSERT INTO workspaces (id, name, role, tier, status, parent_id, runtime, kind, created_at) VALUES
 ('a0000000-0000-4000-8000-000000000001', 'Acme HQ',      'org',      1, 'online',  NULL, 'langgraph', 'workspace', '2024-01-01T00:00:00Z'),
 ('b0000000-0000-4000-8000-000000000001', 'Acme Labs',    'org',      1, 'online',  NULL, 'langgraph', 'workspace', '2024-02-01T00:00:00Z'),
 ('c0000000-0000-4000-8000-000000000001', 'Acme Legacy',  'org',      1, 'removed', NULL, 'langgraph', 'workspace', '2023-06-01T00:00:00Z');
INSERT INTO workspaces (id, name, role, tier, status, parent_id, runtime, kind, created_at) VALUES
 ('a0000000-0000-4000-8000-000000000002', 'Research',      'team',  2, 'online',  'a0000000-0000-4000-8000-000000000001', 'langgraph', 'workspace', '2024-01-02T00:00:00Z'),
 ('a0000000-0000-4000-8000-000000000003', 'Research Ops',  'team',  3, 'online',  'a0000000-0000-4000-8000-000000000002', 'langgraph', 'workspace', '2024-01-03T00:00:00Z'),
 ('a0000000-0000-4000-8000-000000000004', 'Eval Runner',   'agent', 4, 'offline', 'a0000000-0000-4000-8000-000000000003', 'langgraph', 'workspace', '2024-01-04T00:00:00Z'),
 ('a0000000-0000-4000-8000-000000000005', 'Eval Worker',   'agent', 5, 'online',  'a0000000-0000-4000-8000-000000000004', 'langgraph', 'workspace', '2024-01-05T00:00:00Z'),
 ('a0000000-0000-4000-8000-000000000006', 'Eval Sandbox',  'agent', 6, 'degraded','a0000000-0000-4000-8000-000000000005', 'langgraph', 'workspace', '2024-01-06T00:00:00Z'),
 ('b0000000-0000-4000-8000-000000000002', 'Labs Bridge',   'agent', 2, 'online',  'b0000000-0000-4000-8000-000000000001', 'external',  'workspace', '2024-02-02T00:00:00Z'),
 ('b0000000-0000-4000-8000-000000000003', 'Labs Archive',  'agent', 2, 'paused',  'b0000000-0000-4000-8000-000000000001', 'langgraph', 'workspace', '2024-02-03T00:00:00Z');

-- Token hashes are sha256 of fixed strings; these tokens are samples, not credentials.
INSERT INTO org_api_tokens (id, token_hash, prefix, name, created_by, created_at, revoked_at, org_id) VALUES
 ('70000000-0000-4000-8000-000000000001', sha256('sample-token-1'::bytea), 'sampl001', 'hq ci',        'session',               '2024-03-01T00:00:00Z', NULL,                   'a0000000-0000-4000-8000-000000000001'),
 ('70000000-0000-4000-8000-000000000002', sha256('sample-token-2'::bytea), 'sampl002', 'hq deploy',    'admin-token',           '2024-03-02T00:00:00Z', NULL,                   'a0000000-0000-4000-8000-000000000001'),
 ('70000000-0000-4000-8000-000000000003', sha256('sample-token-3'::bytea), 'sampl003', 'hq old',       'session',               '2024-03-03T00:00:00Z', '2024-04-01T00:00:00Z', 'a0000000-0000-4000-8000-000000000001'),
 ('70000000-0000-4000-8000-000000000004', sha256('sample-token-4'::bytea), 'sampl004', 'labs bot',     'org-token:sampl001',    '2024-03-04T00:00:00Z', NULL,                   'b0000000-0000-4000-8000-000000000001'),
 ('70000000-0000-4000-8000-000000000005', sha256('sample-token-5'::bytea), 'sampl005', 'legacy sync',  'session',               '2023-07-01T00:00:00Z', NULL,                   'c0000000-0000-4000-8000-000000000001'),
 ('70000000-0000-4000-8000-000000000006', sha256('sample-token-6'::bytea), 'sampl006', 'unanchored',   'admin-token',           '2024-03-06T00:00:00Z', NULL,                   NULL),
 ('70000000-0000-4000-8000-000000000007', sha256('sample-token-7'::bytea), 'sampl007', 'unanch. old',  'admin-token',           '2024-03-07T00:00:00Z', '2024-05-01T00:00:00Z', NULL),
 ('70000000-0000-4000-8000-000000000008', sha256('sample-token-8'::bytea), 'sampl008', 'on a child',   'session',               '2024-03-08T00:00:00Z', NULL,                   'a0000000-0000-4000-8000-000000000002');

INSERT INTO org_plugin_allowlist (id, org_id, plugin_name, enabled_by, enabled_at) VALUES
 ('e0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'github',    'alice', '2024-01-10T00:00:00Z'),
 ('e0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001', 'slack',     'alice', '2024-01-11T00:00:00Z'),
 ('e0000000-0000-4000-8000-000000000003', 'b0000000-0000-4000-8000-000000000001', 'github',    'bob',   '2024-03-05T00:00:00Z'),
 ('e0000000-0000-4000-8000-000000000004', 'b0000000-0000-4000-8000-000000000001', 'jira',      'bob',   '2024-03-06T00:00:00Z'),
 ('e0000000-0000-4000-8000-000000000005', 'c0000000-0000-4000-8000-000000000001', 'pagerduty', 'carol', '2023-08-01T00:00:00Z');

INSERT INTO workspace_secrets (workspace_id, key, encrypted_value, encryption_version) VALUES
 ('a0000000-0000-4000-8000-000000000002', 'OPENAI_API_KEY', 'sk-sample-not-a-real-key'::bytea, 0),
 ('b0000000-0000-4000-8000-000000000002', 'LOG_LEVEL',      'debug'::bytea, 0);
INSERT INTO global_secrets (key, encrypted_value, encryption_version) VALUES
 ('LOG_LEVEL',      'info'::bytea, 0),
 ('DEFAULT_REGION', 'eu-west-1'::bytea, 0);

INSERT INTO rescue_bundles (id, workspace_id, org_id, reason) VALUES
 (1, 'a0000000-0000-4000-8000-000000000002', '5e5e5e5e-0000-4000-8000-000000000001', 'sample');
