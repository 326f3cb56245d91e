//! The Kafka-API broker (mysimbdp-messagingsystem): the tenants' topics (`topics`) and a readiness
//! probe. [`probe`] speaks the protocol's own handshake (ApiVersions) over a plain TCP connection, so
//! readiness means "a Kafka broker answered", not merely "a port is open".

pub mod topics;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const API_VERSIONS: i16 = 18;
const CORRELATION: i32 = 0x6d79_7369; // "mysi"
const CLIENT_ID: &[u8] = b"mysimbdp-readyz";

/// Asks each of `brokers` (`host:port`, comma-separated) for its API versions until one answers.
/// Returns what answered, or why none did.
pub async fn probe(brokers: &str, timeout: Duration) -> Result<String, String> {
    let mut why = Vec::new();
    for broker in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        match tokio::time::timeout(timeout, api_versions(broker)).await {
            Ok(Ok(n)) => return Ok(format!("Kafka broker {broker} answered ApiVersions ({n} APIs)")),
            Ok(Err(e)) => why.push(format!("{broker}: {e}")),
            Err(_) => why.push(format!("{broker}: no answer within {}ms", timeout.as_millis())),
        }
    }
    if why.is_empty() {
        return Err("no broker address configured".into());
    }
    Err(why.join("; "))
}

/// One ApiVersions v0 round trip; the number of APIs the broker lists.
async fn api_versions(broker: &str) -> std::io::Result<usize> {
    let mut conn = TcpStream::connect(broker).await?;
    let mut req = Vec::with_capacity(32);
    let body_len = 2 + 2 + 4 + 2 + CLIENT_ID.len();
    req.extend_from_slice(&(body_len as i32).to_be_bytes());
    req.extend_from_slice(&API_VERSIONS.to_be_bytes());
    req.extend_from_slice(&0i16.to_be_bytes()); // version 0: understood by every broker
    req.extend_from_slice(&CORRELATION.to_be_bytes());
    req.extend_from_slice(&(CLIENT_ID.len() as i16).to_be_bytes());
    req.extend_from_slice(CLIENT_ID);
    conn.write_all(&req).await?;
    let len = conn.read_i32().await?;
    if !(10..=1 << 20).contains(&len) {
        return Err(bad(format!("answered with a {len}-byte frame; not a Kafka broker?")));
    }
    let mut resp = vec![0u8; len as usize];
    conn.read_exact(&mut resp).await?;
    let correlation = i32::from_be_bytes(resp[0..4].try_into().expect("4 bytes"));
    let error = i16::from_be_bytes(resp[4..6].try_into().expect("2 bytes"));
    let count = i32::from_be_bytes(resp[6..10].try_into().expect("4 bytes"));
    if correlation != CORRELATION {
        return Err(bad(format!("answered another request (correlation id {correlation})")));
    }
    if error != 0 {
        return Err(bad(format!("answered ApiVersions with error code {error}")));
    }
    Ok(count.max(0) as usize)
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}
