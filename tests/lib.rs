//! The one integration-test binary (every extra one relinks the whole tree and starts its own
//! PostgreSQL). Modules share the harness's server.

mod harness;
mod pty;
mod stand_in;

mod audit;
mod backfill;
mod dev;
mod doc_examples;
mod docs;
mod global;
mod image;
mod indoubt;
mod install;
mod interactive;
mod json_doc;
mod kubernetes;
mod layout;
mod output_failures;
mod platform;
mod pooler;
mod provision;
mod readonly;
mod rekey;
mod release;
mod reliability;
mod restart_http;
mod rollback_checks;
mod secret;
mod small_items;
mod statements;
mod status;
mod token;
mod token_platform;
mod tree;
