//! Generates example data for demos, tests and benchmarks, deterministically from a seed:
//!
//!   gen-data tortoise <rows> <bad-every> <seed>   CSV in seed 002's schema to stdout
//!   gen-data orders <rows> <bad-every> <seed>     JSON lines in seed 004's schema to stdout
//!
//! Every `bad-every`-th row is malformed (0: none), so the apps' rejection counts are known.
//! Timestamps advance per row, so every good row has a distinct `_id`.

use std::io::{BufWriter, Write};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: fast and good enough for synthetic data
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        eprintln!("usage: gen-data tortoise|orders <rows> <bad-every> <seed>");
        std::process::exit(2)
    };
    if args.len() != 5 {
        usage();
    }
    let rows: u64 = args[2].parse().unwrap_or_else(|_| usage());
    let bad_every: u64 = args[3].parse().unwrap_or_else(|_| usage());
    let seed: u64 = args[4].parse().unwrap_or_else(|_| usage());
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let bad = |i: u64| bad_every > 0 && (i + 1).is_multiple_of(bad_every);
    // Distinct per seed so files generated with different seeds never share ids.
    let base_time = 1_600_000_000 + seed * 100_000_000;
    match args[1].as_str() {
        "tortoise" => {
            writeln!(out, "time,readable_time,acceleration,acceleration_x,acceleration_y,acceleration_z,battery,humidity,pressure,temperature,dev-id")?;
            for i in 0..rows {
                let time = base_time + i;
                let dev = format!("tortoise-{:02}", i % 16);
                if bad(i) {
                    writeln!(out, "{time},2020-09-13 12:26:40,not-a-number,1,2,3,3000,45.5,1013.2,21.4,{dev}")?;
                    continue;
                }
                let (x, y, z) = (rng.below(2000) as i64 - 1000, rng.below(2000) as i64 - 1000, rng.below(2000) as i64);
                let mag = ((x * x + y * y + z * z) as f64).sqrt();
                writeln!(
                    out,
                    "{time},2020-09-13 12:26:40,{mag:.3},{x},{y},{z},{},{:.1},{:.1},{:.2},{dev}",
                    2500 + rng.below(700),
                    20.0 + rng.below(600) as f64 / 10.0,
                    990.0 + rng.below(400) as f64 / 10.0,
                    10.0 + rng.below(2000) as f64 / 100.0,
                )?;
            }
        }
        "orders" => {
            let customers = ["John Doe", "Aino Virtanen", "Priya Shah", "Li Wei", "Maria Garcia"];
            let restaurants = ["Burger Junction", "Pho Real", "Curry House", "Sushi Go", "Pizza Napoli"];
            let items = ["Veg Burger", "Pho Bo", "Paneer Tikka", "Salmon Roll", "Margherita"];
            let statuses = ["PLACED", "PREPARING", "DELIVERED"];
            for i in 0..rows {
                if bad(i) {
                    writeln!(out, "{{\"order_id\": null, \"amount\": -1, \"order_status\": \"PLACED\", \"created_at\": \"2025-01-18T12:24:00Z\"}}")?;
                    continue;
                }
                let order_id = base_time + i / 3;
                let status = statuses[(i % 3) as usize];
                let k = rng.below(5) as usize;
                let secs = (i % 86_400) as u32;
                writeln!(
                    out,
                    "{{\"order_id\": {order_id}, \"customer_name\": \"{}\", \"restaurant_name\": \"{}\", \"item\": \"{}\", \"amount\": {}.{:02}, \"order_status\": \"{status}\", \"created_at\": \"2025-01-18T{:02}:{:02}:{:02}Z\"}}",
                    customers[k],
                    restaurants[(k + 1) % 5],
                    items[(k + 2) % 5],
                    5 + rng.below(60),
                    rng.below(100),
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60,
                )?;
            }
        }
        _ => {
            usage();
        }
    }
    out.flush()
}
