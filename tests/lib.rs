//! The one integration-test binary (every extra one relinks the whole tree and starts its own
//! PostgreSQL). Modules share the harness's server.

mod harness;
mod pty;
mod stand_in;

mod backfill;
mod dev;
mod docs;
mod global;
mod install;
mod interactive;
mod kubernetes;
mod pooler;
mod rekey;
mod reliability;
mod restart_http;
mod rollback_checks;
mod secret;
mod status;
mod token;
