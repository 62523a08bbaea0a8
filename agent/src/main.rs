//! The `sonde` binary: the agent daemon and its CLI in one.

fn main() {
    std::process::exit(sonde::cli::main());
}
