//! The orgctl binary: parse, run, map the outcome to an exit code. Everything else lives in
//! the library.

fn main() {
    std::process::exit(orgctl::run());
}
