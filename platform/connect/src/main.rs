//! `mysimbdp-connect <connector>`: runs one connector with the configuration in its environment.

use std::process::ExitCode;

fn main() -> ExitCode {
    let kind = std::env::args().nth(1).unwrap_or_default();
    let outcome = match kind.as_str() {
        "postgres-cdc" => mysimbdp_connect::cdc::Config::from_env().and_then(mysimbdp_connect::cdc::run),
        other => Err(anyhow::anyhow!("unknown connector `{other}` (postgres-cdc)")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mysimbdp-connect {kind}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
