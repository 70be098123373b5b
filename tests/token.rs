//! `orgctl token` against real PostgreSQL (issue 4).
