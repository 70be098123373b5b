-- What the chain found when it began: how many rows were written before it existed, and the
-- highest of their ids. `orgctl audit verify` accepts exactly those rows unchained; any other row
-- without a hash (an id below the chain's first row included) was inserted outside orgctl. On a
-- tenant whose chain began before this record existed, the rows unchained now are recorded.
ALTER TABLE orgctl.audit_head
    ADD COLUMN IF NOT EXISTS pre_chain_rows   BIGINT,
    ADD COLUMN IF NOT EXISTS pre_chain_max_id BIGINT;
UPDATE orgctl.audit_head
   SET pre_chain_rows = u.n, pre_chain_max_id = u.max_id
  FROM (SELECT count(*) AS n, max(id) AS max_id
          FROM orgctl.audit_log
         WHERE seq IS NULL AND prev_hash IS NULL AND row_hash IS NULL) u
 WHERE one AND pre_chain_rows IS NULL;
