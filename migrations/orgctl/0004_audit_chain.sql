-- Audit trail an incident review can rely on (SPEC §11, issue 13): why a change was made, and
-- tamper evidence. Every row orgctl appends from here on is a link of a hash chain:
--   seq       its position in the chain (1, 2, 3 … without gaps, unlike the id sequence, which
--             a rolled-back transaction skips)
--   prev_hash the previous link's row_hash (32 zero bytes for seq 1)
--   row_hash  sha256(prev_hash || canonical content), content as README "Incident review" says
-- Rows written before this migration keep NULL there: "unchained", reported as such by
-- `orgctl audit verify`, never as broken.
ALTER TABLE orgctl.audit_log
    ADD COLUMN IF NOT EXISTS reason    TEXT,
    ADD COLUMN IF NOT EXISTS seq       BIGINT,
    ADD COLUMN IF NOT EXISTS prev_hash BYTEA,
    ADD COLUMN IF NOT EXISTS row_hash  BYTEA;

-- The chain's head: the last link orgctl appended. Every append locks this one row (FOR
-- UPDATE), so appends are serialised whatever lock the writing command holds, and a write that
-- could not see the latest head fails instead of forking the chain. Because the head is kept
-- apart from the rows, deleting the newest rows is detected even when nothing follows them.
CREATE TABLE IF NOT EXISTS orgctl.audit_head (
    one      BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    seq      BIGINT NOT NULL,
    row_hash BYTEA NOT NULL
);
INSERT INTO orgctl.audit_head (one, seq, row_hash)
VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
ON CONFLICT (one) DO NOTHING;
