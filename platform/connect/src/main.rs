//! `mysimbdp-connect <connector>`: runs one connector with the configuration in its environment.

use std::process::ExitCode;

fn main() -> ExitCode {
    // As an argument, or (run by the stream manager, which gives a program no arguments) from the environment.
    let kind = std::env::args().nth(1).or_else(|| std::env::var("MYSIMBDP_CONNECTOR").ok()).unwrap_or_default();
    if kind == "coredms-sink" {
        // The SDK's stream loop reports its own errors and exit code.
        return mysimbdp_connect::documents::run();
    }
    let outcome = match kind.as_str() {
        "postgres-cdc" if std::env::var(mysimbdp_connect::cdc::env::RELEASE).is_ok_and(|v| v == "true") => {
            mysimbdp_connect::cdc::release_from_env()
        }
        "postgres-cdc" => mysimbdp_connect::cdc::Config::from_env().and_then(mysimbdp_connect::cdc::run),
        "parquet-lake" => mysimbdp_connect::lake::Config::from_env().and_then(mysimbdp_connect::lake::run),
        other => Err(anyhow::anyhow!("unknown connector `{other}` (postgres-cdc, parquet-lake, coredms-sink)")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mysimbdp-connect {kind}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
