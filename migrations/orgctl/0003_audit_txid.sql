-- The id of the write transaction an audit row was written in (orgctl generates one per write
-- transaction). When the connection drops after COMMIT was sent, orgctl reconnects and looks
-- for this id to learn whether the change was committed. NULL on rows written before 0003.
ALTER TABLE orgctl.audit_log ADD COLUMN IF NOT EXISTS txid UUID;
CREATE INDEX IF NOT EXISTS audit_log_txid ON orgctl.audit_log (txid) WHERE txid IS NOT NULL;
