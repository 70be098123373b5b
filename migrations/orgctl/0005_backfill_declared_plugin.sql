-- The platform MCP plugin the install declares on the agent (a `workspace_declared_plugins` row,
-- as the platform's own install writes it), snapshotted with the run so rollback restores it
-- exactly: `plugin_action` is what the run did to it (create, update or unchanged; NULL for a
-- run of an orgctl that did not declare it), `plugin_prior` the whole row before the run
-- (to_jsonb), NULL when there was none.
ALTER TABLE orgctl.backfill_runs
    ADD COLUMN IF NOT EXISTS plugin_action TEXT,
    ADD COLUMN IF NOT EXISTS plugin_prior  JSONB;
