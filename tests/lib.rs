//! The one integration-test binary (every extra one relinks the whole tree and starts its own
//! PostgreSQL). Modules share the harness's server.

mod harness;

mod backfill;
mod dev;
mod docs;
mod global;
mod indoubt;
mod install;
mod json_doc;
mod output_failures;
mod pooler;
mod readonly;
mod reliability;
mod secret;
mod small_items;
mod status;
mod token;
