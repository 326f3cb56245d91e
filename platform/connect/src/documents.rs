//! The `coredms` sink: a tenant's JSON messages as documents of its coredms, through the SDK's
//! stream loop (written idempotently, offsets committed after the write, reports, SIGTERM). Each
//! document's `_id` is the message's key, or `<topic>/<partition>/<offset>` for a message without
//! one, so a message read twice (after a crash) is stored once.

use mysimbdp_sdk::{run_stream, Message, StreamOptions, Wrangled};

/// The environment a coredms sink is given (beside the stream app contract's).
pub mod env {
    /// The one collection the sink writes; unset: each topic's own.
    pub const COLLECTION: &str = "MYSIMBDP_SINK_COLLECTION";
}

/// A message as a document, or why it is not one.
pub fn document(m: &Message<'_>) -> Result<Wrangled, String> {
    if m.payload.is_empty() {
        return Err("no value (a tombstone): nothing to store".into());
    }
    // Checked, then stored as written (JSON parsed from bytes is UTF-8).
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(m.payload)
        .map_err(|e| format!("not a JSON object: {e}"))?;
    let json = String::from_utf8_lossy(m.payload).into_owned();
    let key = m.key.filter(|k| !k.is_empty()).map(|k| std::str::from_utf8(k).map(str::to_owned));
    match key {
        None => Ok(Wrangled::new(json)),
        Some(Ok(id)) => Ok(Wrangled::new(json).with_id(id)),
        Some(Err(_)) => Err("its key is not UTF-8 text (a document's _id is text)".into()),
    }
}

pub fn run() -> std::process::ExitCode {
    let collection = std::env::var(env::COLLECTION).ok().filter(|c| !c.is_empty());
    run_stream("coredms-sink", StreamOptions { collection, ..StreamOptions::default() }, document)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message<'a>(key: Option<&'a [u8]>, payload: &'a [u8]) -> Message<'a> {
        Message { topic: "t.orders", partition: 1, offset: 7, key, payload, timestamp_ms: None }
    }

    #[test]
    fn the_key_is_the_id_and_a_message_that_is_no_object_is_refused() {
        let w = document(&message(Some(br#"{"id":1}"#), br#"{"id":1,"a":"x"}"#)).unwrap();
        assert_eq!((w.id.as_deref(), w.json.as_str()), (Some(r#"{"id":1}"#), r#"{"id":1,"a":"x"}"#));
        assert_eq!(document(&message(None, b"{}")).unwrap().id, None);
        assert_eq!(document(&message(None, b"")).unwrap_err(), "no value (a tombstone): nothing to store");
        assert!(document(&message(None, b"[1]")).unwrap_err().starts_with("not a JSON object"));
        assert!(document(&message(Some(&[0xff]), b"{}")).unwrap_err().contains("not UTF-8"));
    }
}
