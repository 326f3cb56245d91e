//! The Kafka-API broker (mysimbdp-messagingsystem): the tenants' topics (`topics`), the static
//! members of the stream apps' consumer groups (`groups`) and a readiness probe. [`probe`] speaks the
//! protocol's own handshake (ApiVersions), so readiness means "a Kafka broker answered", not merely "a
//! port is open".

pub mod gateway;
pub mod groups;
pub mod topics;
pub mod wire;

use std::time::Duration;

use kafka_protocol::messages::ApiVersionsRequest;

/// Asks each of `brokers` (`host:port`, comma-separated) for its API versions until one answers.
/// Returns what answered, or why none did.
pub async fn probe(brokers: &str, timeout: Duration) -> Result<String, String> {
    let mut why = Vec::new();
    for broker in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        match tokio::time::timeout(timeout, api_versions(broker, timeout)).await {
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

/// One ApiVersions v0 round trip (understood by every broker); the number of APIs the broker lists.
async fn api_versions(broker: &str, timeout: Duration) -> std::io::Result<usize> {
    let mut conn = wire::Connection::connect(broker, "mysimbdp-readyz", timeout).await?;
    let answer = conn.call(&ApiVersionsRequest::default(), 0).await?;
    if answer.error_code != 0 {
        return Err(std::io::Error::other(format!("answered ApiVersions with error code {}", answer.error_code)));
    }
    Ok(answer.api_keys.len())
}
