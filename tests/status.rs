//! `orgctl status` against real PostgreSQL (issue 7).
