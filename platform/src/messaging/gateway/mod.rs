//! The broker gateway: the only way tenants' programs reach the Kafka-API broker.
//!
//! The local broker (tansu) has no authentication or authorization, so on it any client could read,
//! describe, write and commit any topic or group. The gateway listens on loopback, learns who connected
//! from the kernel (the uid owning the peer's socket: each tenant's programs run as the tenant's own
//! uid in the sandbox, `peer`), and passes a request to the broker only if it stays within the
//! tenant's own topics and groups (`policy`). A firewall rule keeps tenants' uids from reaching the
//! broker itself (`firewall`). The platform's own clients (monitor, manager, topics) talk to the broker
//! directly.
//!
//! One upstream broker (every broker an answer names becomes the gateway itself, which is right for
//! the single local broker); one upstream connection per client connection. Requests are checked in
//! order and passed on, answers relayed in the same order (Kafka answers a connection's requests in
//! order), with the gateway's own refusals slotted in where their requests were.

pub mod firewall;
pub mod peer;
pub mod policy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::messaging::wire::{read_frame, write_frame};
use crate::store::Db;
use crate::tenant::TenantId;
use policy::{Decision, Reply, Scope};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one tenant may hold open at once: each costs a connection to the broker too, so a
/// tenant opening thousands would tie up the broker's for everyone. Ample for its instances' clients
/// (a consumer holds two or three, a producer one or two).
pub const MAX_CONNECTIONS_PER_TENANT: usize = 128;

/// Open connections per tenant; a slot is given back when its guard drops.
#[derive(Clone, Default)]
struct Slots(Arc<Mutex<HashMap<TenantId, usize>>>);

struct Slot(Slots, TenantId);

impl Slots {
    fn take(&self, tenant: &TenantId) -> Option<Slot> {
        let mut open = self.0.lock().expect("slots lock");
        let n = open.entry(tenant.clone()).or_default();
        if *n >= MAX_CONNECTIONS_PER_TENANT {
            return None;
        }
        *n += 1;
        Some(Slot(self.clone(), tenant.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = (self.0).0.lock().expect("slots lock");
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// A running gateway.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// `host:port` tenants' programs are given as `KAFKA_BROKERS`.
    pub address: String,
}

/// Starts the gateway in front of `brokers` (its first address: one upstream broker, see the module
/// doc) on a free loopback port, until `shutdown`.
pub async fn start(db: Db, brokers: String, shutdown: CancellationToken) -> std::io::Result<Gateway> {
    let upstream = brokers.split(',').map(str::trim).find(|b| !b.is_empty()).unwrap_or_default().to_owned();
    let denied = tokio::task::spawn_blocking(firewall::denied_ports).await.map_err(std::io::Error::other)?;
    let listener = bind_avoiding(|port| denied.contains(&port)).await?;
    let local = listener.local_addr()?;
    let address = local.to_string();
    tracing::info!(%address, %upstream, "broker gateway listening");
    let slots = Slots::default();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let (client, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "the broker gateway could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (db, upstream, shutdown, slots) = (db.clone(), upstream.clone(), shutdown.clone(), slots.clone());
            tokio::spawn(async move {
                let who = match identify(&db, peer, local).await {
                    Ok(scope) => scope,
                    Err(why) => {
                        tracing::warn!(%peer, "broker gateway refused a connection: {why}");
                        return;
                    }
                };
                let tenant = who.tenant.clone();
                let Some(_slot) = slots.take(&tenant) else {
                    tracing::warn!(%tenant, %peer, "broker gateway refused a connection: the tenant holds {MAX_CONNECTIONS_PER_TENANT} already");
                    return;
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    r = relay(client, &upstream, who, local) => if let Err(e) = r {
                        tracing::debug!(%tenant, %peer, error = %e, "broker gateway connection ended");
                    }
                }
            });
        }
    });
    Ok(Gateway { address })
}

/// A loopback listener on a free port that `denied` does not name. The firewall rules a platform
/// adds for its broker's port stay when it stops (see `firewall`); a gateway given such a port later
/// would be refused to every tenant's program (seen in the tests, whose brokers come and go).
async fn bind_avoiding(denied: impl Fn(u16) -> bool) -> std::io::Result<TcpListener> {
    // The refused listeners stay bound until a good one is found, so the kernel does not offer
    // the same port again.
    let mut refused = Vec::new();
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        if !denied(port) {
            return Ok(listener);
        }
        tracing::info!(port, "the broker gateway skips a port the firewall keeps tenants from");
        refused.push(listener);
        if refused.len() > 64 {
            return Err(std::io::Error::other("no free loopback port the firewall lets tenants reach"));
        }
    }
}

/// The tenant whose program holds the other end of the connection.
async fn identify(db: &Db, peer: SocketAddr, local: SocketAddr) -> Result<Scope, String> {
    let uid = tokio::task::spawn_blocking(move || peer::uid(peer, local))
        .await
        .map_err(|e| format!("looking up the peer: {e}"))?
        .map_err(|e| format!("reading the socket table: {e}"))?
        .ok_or("the kernel lists no socket for the peer")?;
    let tenant = crate::store::accounts::tenant_of(db, uid)
        .await
        .map_err(|e| format!("looking up uid {uid}: {e}"))?
        .ok_or_else(|| format!("uid {uid} is no tenant's"))?;
    Ok(Scope::new(tenant))
}

/// What the answering side does next, in request order.
enum Next {
    Broker { reply: Reply, api: kafka_protocol::messages::ApiKey, version: i16 },
    Gateway(Bytes),
}

async fn relay(client: TcpStream, upstream: &str, scope: Scope, local: SocketAddr) -> std::io::Result<()> {
    let broker = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream))
        .await
        .map_err(|_| std::io::Error::other(format!("connecting to the broker {upstream} timed out")))??;
    client.set_nodelay(true)?;
    broker.set_nodelay(true)?;
    let (mut client_in, mut client_out) = client.into_split();
    let (mut broker_in, mut broker_out) = broker.into_split();
    let (next_tx, mut next_rx) = mpsc::unbounded_channel::<Next>();
    let requests_scope = scope.clone();
    let requests = async move {
        while let Some(request) = read_frame(&mut client_in).await? {
            let decision = policy::decide(&requests_scope, request);
            tracing::debug!(tenant = %requests_scope.tenant, ?decision, "broker gateway request");
            match decision {
                Decision::Pass { frame, reply, api, version } => {
                    write_frame(&mut broker_out, &frame).await?;
                    if reply != Reply::None {
                        let _ = next_tx.send(Next::Broker { reply, api, version });
                    }
                }
                Decision::Answer(frame) => {
                    tracing::info!(tenant = %requests_scope.tenant, "broker gateway refused a request");
                    let _ = next_tx.send(Next::Gateway(frame));
                }
                Decision::Drop => tracing::info!(tenant = %requests_scope.tenant, "broker gateway dropped a produce"),
                Decision::Close(why) => {
                    tracing::warn!(tenant = %requests_scope.tenant, "broker gateway closed a connection: {why}");
                    return Ok(());
                }
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let host = local.ip().to_string();
    let answers = async move {
        while let Some(next) = next_rx.recv().await {
            let frame = match next {
                Next::Gateway(frame) => frame,
                Next::Broker { reply, api, version } => {
                    let Some(answer) = read_frame(&mut broker_in).await? else { return Ok(()) };
                    match policy::rewrite(&scope, &reply, api, version, answer, (&host, local.port() as i32)) {
                        Ok(Some(f)) => f,
                        Ok(None) => continue,
                        Err(e) => return Err(std::io::Error::other(format!("the broker's {api:?} answer: {e}"))),
                    }
                }
            };
            write_frame(&mut client_out, &frame).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    // Either side ending ends the connection (the client closed, or was refused for good).
    tokio::select! {
        r = requests => r,
        r = answers => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_holds_at_most_its_connections_and_gets_them_back() {
        let (slots, a, b) = (Slots::default(), TenantId::parse("aa").unwrap(), TenantId::parse("bb").unwrap());
        let held: Vec<Slot> = (0..MAX_CONNECTIONS_PER_TENANT).map(|_| slots.take(&a).unwrap()).collect();
        assert!(slots.take(&a).is_none(), "one more than the limit");
        assert!(slots.take(&b).is_some(), "another tenant is not affected");
        drop(held);
        assert!(slots.take(&a).is_some());
        assert!(slots.0.lock().unwrap().get(&a).is_none_or(|n| *n <= 1));
    }

    #[tokio::test]
    async fn the_gateway_never_listens_on_a_port_the_firewall_denies() {
        // The first two ports offered are taken as denied: the third is used, and is neither.
        let offered = Mutex::new(Vec::new());
        let listener = bind_avoiding(|port| {
            let mut seen = offered.lock().unwrap();
            seen.push(port);
            seen.len() <= 2
        })
        .await
        .unwrap();
        let seen = offered.into_inner().unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[2], port);
        assert!(!seen[..2].contains(&port), "{seen:?}");
        // Denied ports stay refused: everything denied is an error, not a loop.
        assert!(bind_avoiding(|_| true).await.is_err());
    }
}
