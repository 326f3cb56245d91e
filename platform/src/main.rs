//! The `mysimbdp` binary: every role of the platform and its command-line tools. See `cli`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
