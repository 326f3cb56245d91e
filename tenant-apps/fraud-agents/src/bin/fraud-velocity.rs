//! Fraud agent 2: an account making its `BURST`th transaction within `WINDOW_MS` is an alert (each
//! further one inside the window too). It keeps each account's recent transactions in memory, as
//! the seeds' agents do; a restarted run starts that memory from what it reads next.

use std::collections::{HashMap, VecDeque};
use std::process::ExitCode;

use fraud_agents::{transaction, Alert};
use mysimbdp_sdk::{run_transform, TransformOptions};

const AGENT: &str = "fraud-velocity";
const BURST: usize = 4;
const WINDOW_MS: i64 = 60_000;

fn main() -> ExitCode {
    let mut recent: HashMap<i64, VecDeque<i64>> = HashMap::new();
    run_transform(AGENT, TransformOptions::default(), move |m| {
        let Some(t) = transaction(m.payload)? else { return Ok(Vec::new()) };
        let times = recent.entry(t.account_id).or_default();
        times.push_back(t.at_ms);
        while times.front().is_some_and(|&first| t.at_ms - first > WINDOW_MS) {
            times.pop_front();
        }
        if times.len() < BURST {
            return Ok(Vec::new());
        }
        let reason = format!("{} transactions of account {} within {}s", times.len(), t.account_id, WINDOW_MS / 1000);
        Ok(vec![Alert { agent: AGENT, transaction_id: t.id, account_id: t.account_id, amount: t.amount, reason }
            .output()?])
    })
}
