//! The one integration-test binary (every extra one relinks the whole tree and starts its own
//! PostgreSQL). Modules share the harness's server.

mod harness;

mod backfill;
mod dev;
mod docs;
mod global;
mod install;
mod pooler;
mod provision;
mod reliability;
mod secret;
mod status;
mod token;
