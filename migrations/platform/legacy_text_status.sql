-- An older tenant's variant (dev/test only): `workspaces.status` is TEXT, not the
-- workspace_status enum. Applied after the platform schema to build such a tenant. The two
-- partial indexes that compare status with the enum are rebuilt with text comparisons.
DROP INDEX public.idx_workspaces_stall_watch;
DROP INDEX public.workspaces_parent_name_uniq;
ALTER TABLE public.workspaces ALTER COLUMN status DROP DEFAULT;
ALTER TABLE public.workspaces ALTER COLUMN status TYPE TEXT USING status::text;
ALTER TABLE public.workspaces ALTER COLUMN status SET DEFAULT 'provisioning';
DROP TYPE public.workspace_status;
CREATE INDEX idx_workspaces_stall_watch ON public.workspaces USING btree (last_activity_at)
    WHERE ((status = 'online') AND (active_tasks > 0));
CREATE UNIQUE INDEX workspaces_parent_name_uniq ON public.workspaces USING btree
    (COALESCE(parent_id, '00000000-0000-0000-0000-000000000000'::uuid), name)
    WHERE (status <> 'removed');
