-- An older tenant's variant (dev/test only): `workspaces.status` is TEXT, not the
-- workspace_status enum. Applied after the platform schema to build such a tenant.
ALTER TABLE workspaces ALTER COLUMN status DROP DEFAULT;
ALTER TABLE workspaces ALTER COLUMN status TYPE TEXT USING status::text;
ALTER TABLE workspaces ALTER COLUMN status SET DEFAULT 'provisioning';
DROP TYPE workspace_status;
