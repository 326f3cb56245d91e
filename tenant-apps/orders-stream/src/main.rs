//! clientstreamingestapp for the food tenant: order events (seed 004) as JSON messages on
//! `food.orders` into the `orders` collection, with the batch app's cleaning (`orders-model`). Unlike
//! `tortoise-stream`, each document's `_id` is the business key `<order_id>:<status>`, so an event
//! produced twice (a producer's retry) is stored once, not only a message read twice.

use std::process::ExitCode;

use mysimbdp_sdk::{run_stream, StreamOptions, Wrangled};
use serde::Serialize;

#[derive(Serialize)]
struct Source<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

fn main() -> ExitCode {
    run_stream("orders-stream", StreamOptions::default(), |m| {
        let source = Source { topic: m.topic, partition: m.partition, offset: m.offset };
        let (id, json) = orders_model::document(m.payload, source)?;
        Ok(Wrangled::new(json).with_id(id))
    })
}
