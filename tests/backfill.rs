//! `orgctl backfill` against real PostgreSQL (issue 6).
