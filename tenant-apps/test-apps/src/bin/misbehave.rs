//! A batch app that misbehaves on purpose, for the platform's tests: `misbehave <mode> [input]`.
//!
//! - `memory`: allocates and touches 2 GiB, so a memory limit below that stops it
//! - `flood`: prints 20 MB to stdout and stderr, then fails
//! - `crash`: prints a line and exits with status 3
//! - `hang`: sleeps for an hour
//! - `env`: prints its environment and exits 0 (what an app can see)

use std::io::Write;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "memory" => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for _ in 0..32 {
                blocks.push(vec![1u8; 64 << 20]);
            }
            println!("allocated {} blocks", blocks.len());
        }
        "flood" => {
            let line = [b'x'; 1000];
            let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
            for i in 0..10_000 {
                let _ = writeln!(out, "{i} {}", String::from_utf8_lossy(&line));
                let _ = writeln!(err, "{i} {}", String::from_utf8_lossy(&line));
            }
            let _ = writeln!(err, "flood finished");
            std::process::exit(1);
        }
        "crash" => {
            eprintln!("misbehave: crashing on purpose");
            std::process::exit(3);
        }
        "hang" => std::thread::sleep(std::time::Duration::from_secs(3600)),
        "env" => {
            for (k, v) in std::env::vars() {
                println!("{k}={v}");
            }
        }
        other => {
            eprintln!("misbehave: unknown mode `{other}`");
            std::process::exit(2);
        }
    }
}
