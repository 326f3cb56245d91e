//! Fraud agent 1: a transaction of `LIMIT` or more is an alert.

use std::process::ExitCode;

use fraud_agents::{transaction, Alert};
use mysimbdp_sdk::{run_transform, TransformOptions};

const AGENT: &str = "fraud-amount";
const LIMIT: f64 = 5_000.0;

fn main() -> ExitCode {
    run_transform(AGENT, TransformOptions::default(), |m| {
        let Some(t) = transaction(m.payload)? else { return Ok(Vec::new()) };
        if t.amount < LIMIT {
            return Ok(Vec::new());
        }
        let reason = format!("amount {:.2} is at or over {LIMIT:.0}", t.amount);
        Ok(vec![Alert { agent: AGENT, transaction_id: t.id, account_id: t.account_id, amount: t.amount, reason }
            .output()?])
    })
}
