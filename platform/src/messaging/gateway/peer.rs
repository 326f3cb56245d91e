//! Who is on the other end of a loopback TCP connection: the uid that owns the peer's socket, read
//! from the kernel's socket table (`/proc/net/tcp`, `/proc/net/tcp6`), as identd does. Tenants'
//! programs run as their tenant's own uid in the sandbox, so the uid names the tenant without any
//! credential the program could leak or another program could replay.

use std::net::{IpAddr, SocketAddr};

/// The uid owning the socket at `peer` that is connected to `local`, if the kernel lists it.
pub fn uid(peer: SocketAddr, local: SocketAddr) -> std::io::Result<Option<u32>> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(uid) = find(&text, peer, local) {
            return Ok(Some(uid));
        }
    }
    Ok(None)
}

/// The uid of the row whose local address is `peer` and remote address is `local`.
fn find(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let (want_local, want_remote) = (encode(peer), encode(local));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
        let matches = f.len() > 7
            && want_local.iter().any(|w| f[1].eq_ignore_ascii_case(w))
            && want_remote.iter().any(|w| f[2].eq_ignore_ascii_case(w));
        matches.then(|| f[7].parse().ok()).flatten()
    })
}

/// An address as the kernel's table spells it: each 32-bit word of the address in host (little
/// endian) byte order, then the port. An IPv4 address may also appear mapped into IPv6.
fn encode(a: SocketAddr) -> Vec<String> {
    let words = |bytes: &[u8]| -> String {
        bytes.chunks(4).map(|w| format!("{:02X}{:02X}{:02X}{:02X}", w[3], w[2], w[1], w[0])).collect()
    };
    let port = format!("{:04X}", a.port());
    match a.ip() {
        IpAddr::V4(v4) => {
            let mapped = v4.to_ipv6_mapped().octets();
            vec![format!("{}:{port}", words(&v4.octets())), format!("{}:{port}", words(&mapped))]
        }
        IpAddr::V6(v6) => vec![format!("{}:{port}", words(&v6.octets()))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peers_row_gives_its_uid() {
        // Two ends of 127.0.0.1:40000 <-> 127.0.0.1:9092, as /proc/net/tcp lists them.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2384 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1
   1: 0100007F:9C40 0100007F:2384 01 00000000:00000000 00:00000000 00000000 2000000001 0 2 1 0 20 4 30 10 -1
";
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:9092".parse().unwrap();
        assert_eq!(find(table, peer, local), Some(2_000_000_001));
        assert_eq!(find(table, local, peer), Some(0));
        assert_eq!(find(table, "127.0.0.1:40001".parse().unwrap(), local), None);
    }

    #[test]
    fn this_processes_own_connection_is_found_as_its_own_uid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let me = unsafe { libc::geteuid() };
        assert_eq!(uid(peer, listener.local_addr().unwrap()).unwrap(), Some(me));
    }
}
