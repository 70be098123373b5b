//! `orgctl secret` against real PostgreSQL (issue 5).
