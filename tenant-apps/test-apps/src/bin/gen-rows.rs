//! The example tenants' source databases (their OLTP side): creates a table if it is missing and
//! inserts rows into it, deterministically from a seed, for the CDC pipelines of `scripts/run.sh`
//! and `tests/e2e/examples.rs`:
//!
//!   gen-rows orders <postgres-url> <rows> <per-second> <seed>         food's orders (seed 004)
//!   gen-rows transactions <postgres-url> <rows> <per-second> <seed>   bank's transactions (seeds 000, 001)
//!
//! `rows` 0: until stopped, each row made now; otherwise that many with made-up times spread over
//! days (orders, 6 minutes apart) or minutes (transactions, 20 seconds apart), as fast as
//! `per-second` allows (0: no pacing). Orders: every 10th has a negative amount and every 25th
//! (that is not a 10th) none, for the cleaning to drop. Transactions: every 50th is 5,000 or more,
//! and every 40th starts a burst of five by one account, for the fraud agents to find.

use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*, as gen-data
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

pub const ORDERS: &str = "create table if not exists orders (order_id serial primary key, \
    customer_name varchar(255), restaurant_name varchar(255), item varchar(255), amount numeric(10, 2), \
    order_status varchar(50), created_at timestamp)";
pub const TRANSACTIONS: &str = "create table if not exists transactions (id bigserial primary key, \
    account_id int not null, amount numeric(12, 2) not null, merchant text not null, country char(2) not null, \
    created_at timestamptz not null)";

/// Row `i` of a table, for seed `seed`, timed `now` (empty: a made-up time).
type Row = fn(u64, u64, &mut Rng, &str) -> String;

/// Made-up times start here (2026-11-28T00:00:00Z), plus `SEED_SPAN` seconds per seed, so that runs
/// with different seeds never share a time (nor an account's burst).
const BASE: u64 = 1_795_824_000;
const SEED_SPAN: u64 = 1_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: gen-rows orders|transactions <postgres-url> <rows> <per-second> <seed>");
        std::process::exit(2)
    };
    if args.len() != 6 {
        usage();
    }
    let (rows, per_second, seed): (u64, u64, u64) = match (args[3].parse(), args[4].parse(), args[5].parse()) {
        (Ok(r), Ok(p), Ok(s)) => (r, p, s),
        _ => usage(),
    };
    let (table, row): (&str, Row) = match args[1].as_str() {
        "orders" => (ORDERS, order),
        "transactions" => (TRANSACTIONS, transaction),
        _ => usage(),
    };
    let mut db = postgres::Client::connect(&args[2], postgres::NoTls).unwrap_or_else(|e| {
        eprintln!("gen-rows: connecting to the source database: {e}");
        std::process::exit(1)
    });
    db.batch_execute(table).expect("creating the table");
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let started = Instant::now();
    let mut i = 0;
    // One transaction per 100 rows (or per row when paced slower than that).
    let per_commit = if per_second == 0 { 100 } else { per_second.clamp(1, 100) };
    while rows == 0 || i < rows {
        let n = if rows == 0 { per_commit } else { per_commit.min(rows - i) };
        let values: Vec<String> = (i..i + n)
            .map(|k| {
                let at = if rows == 0 { "now()".to_owned() } else { String::new() };
                row(k, seed, &mut rng, &at)
            })
            .collect();
        let insert = match args[1].as_str() {
            "orders" => "insert into orders (customer_name, restaurant_name, item, amount, order_status, created_at)",
            _ => "insert into transactions (account_id, amount, merchant, country, created_at)",
        };
        db.batch_execute(&format!("{insert} values {}", values.join(", "))).expect("inserting rows");
        i += n;
        if per_second > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / per_second as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    eprintln!("gen-rows: {i} rows into {}", args[1]);
}

/// Row `i` of the orders; `now`: the time to give it instead of a made-up one.
fn order(i: u64, seed: u64, rng: &mut Rng, now: &str) -> String {
    const CUSTOMERS: [&str; 5] = ["John Doe", "Aino Virtanen", "Priya Shah", "Li Wei", "Maria Garcia"];
    const RESTAURANTS: [&str; 5] = ["Burger Junction", "Pho Real", "Curry House", "Sushi Go", "Pizza Napoli"];
    const ITEMS: [&str; 5] = ["Veg Burger", "Pho Bo", "Paneer Tikka", "Salmon Roll", "Margherita"];
    let k = rng.below(5) as usize;
    let cents = 500 + rng.below(6_000);
    let amount = match i + 1 {
        n if n.is_multiple_of(10) => format!("-{}.{:02}", cents / 100, cents % 100),
        n if n.is_multiple_of(25) => "null".to_owned(),
        _ => format!("{}.{:02}", cents / 100, cents % 100),
    };
    let at = if now.is_empty() {
        format!("to_timestamp({}) at time zone 'UTC'", BASE + seed * SEED_SPAN + i * 360)
    } else {
        now.into()
    };
    format!("('{}', '{}', '{}', {amount}, 'PLACED', {at})", CUSTOMERS[k], RESTAURANTS[(k + 1) % 5], ITEMS[(k + 2) % 5])
}

/// Row `i` of the transactions (bursts are rows `40k..40k+5`, all by one account).
fn transaction(i: u64, seed: u64, rng: &mut Rng, now: &str) -> String {
    const MERCHANTS: [&str; 4] = ["grocer", "fuel", "electronics", "travel"];
    const COUNTRIES: [&str; 4] = ["FI", "SE", "DE", "PT"];
    let account = if i % 40 < 5 { 1_000 + seed * 100_000 + i / 40 } else { 1 + rng.below(500) };
    let cents = if (i + 1).is_multiple_of(50) { 500_000 + rng.below(500_000) } else { 100 + rng.below(90_000) };
    let at = if now.is_empty() {
        // Burst rows 2 seconds apart, the others 20.
        let base = BASE + seed * SEED_SPAN;
        let t = if i % 40 < 5 { base + (i / 40) * 800 + (i % 40) * 2 } else { base + i * 20 };
        format!("to_timestamp({t})")
    } else {
        now.into()
    };
    let m = rng.below(4) as usize;
    format!("({account}, {}.{:02}, '{}', '{}', {at})", cents / 100, cents % 100, MERCHANTS[m], COUNTRIES[m])
}
