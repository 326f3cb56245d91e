//! Keeps tenants' programs from going around the gateway: a netfilter rule rejecting connections from
//! the tenants' uid range to the broker's own address, so the gateway is the only way in. Idempotent
//! (checked before it is added), kept when the platform stops: it only ever denies tenants' uids, and
//! a later platform finds it in place.

use std::net::ToSocketAddrs;
use std::process::Command;

/// Marks the platform's rules, so an operator can find them (`iptables -S OUTPUT | grep mysimbdp`).
const COMMENT: &str = "mysimbdp: tenants reach the broker only through its gateway";

/// Taken while the rules are checked and added.
const LOCK: &str = "/run/mysimbdp-firewall.lock";

/// The uids tenants' programs run as: from the sandbox's base, this many.
pub const TENANT_UIDS: u32 = 1 << 24;

/// The ports of `brokers` (`host:port`, comma-separated). The rule is by port, whatever the address:
/// a broker listening on every interface is reachable at each of the machine's addresses.
fn ports(brokers: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for b in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let resolved = b.to_socket_addrs().map_err(|e| format!("resolving the broker address `{b}`: {e}"))?;
        out.extend(resolved.map(|a| a.port()));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The rule for one broker port, as iptables arguments after the chain.
fn rule(port: u16, uid_base: u32) -> Vec<String> {
    let uids = format!("{uid_base}-{}", uid_base.saturating_add(TENANT_UIDS - 1));
    [
        "-p",
        "tcp",
        "--dport",
        &port.to_string(),
        "-m",
        "owner",
        "--uid-owner",
        &uids,
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Makes sure tenants' uids cannot connect to `brokers` themselves, over IPv4 and (where the kernel
/// has it) IPv6.
pub fn protect(brokers: &str, uid_base: u32) -> Result<(), String> {
    // Platforms starting together would each find no rule and each add one: check and add under a
    // lock all of them take.
    let lock = std::fs::File::create(LOCK).map_err(|e| format!("opening {LOCK}: {e}"))?;
    // SAFETY: an open file's descriptor; the lock goes with the file when it is dropped.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(format!("locking {LOCK}: {}", std::io::Error::last_os_error()));
    }
    let ipv6 = std::path::Path::new("/proc/net/if_inet6").exists();
    for port in ports(brokers)? {
        for tool in ["iptables", "ip6tables"].into_iter().filter(|t| *t == "iptables" || ipv6) {
            ensure(tool, &rule(port, uid_base))?;
        }
        tracing::info!(port, uid_base, "tenants' uids reach the broker only through the gateway");
    }
    Ok(())
}

/// The ports the platform's rules (this platform's, and any an earlier platform left for its own
/// broker) keep tenants' uids from, over IPv4: the gateway must not listen on one of them, or no
/// tenant's program could reach it. Empty where iptables cannot be read (no rules are added there).
pub fn denied_ports() -> Vec<u16> {
    match Command::new("iptables").args(["-w", "-S", "OUTPUT"]).output() {
        Ok(out) if out.status.success() => parse_denied(&String::from_utf8_lossy(&out.stdout)),
        _ => Vec::new(),
    }
}

fn parse_denied(rules: &str) -> Vec<u16> {
    rules
        .lines()
        .filter(|l| l.contains(COMMENT))
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "--dport").nth(1)?.parse().ok())
        .collect()
}

fn ensure(tool: &str, args: &[String]) -> Result<(), String> {
    let run = |op: &str| {
        Command::new(tool)
            .arg("-w")
            .arg(op)
            .arg("OUTPUT")
            .args(args)
            .output()
            .map_err(|e| format!("running {tool} (Debian's iptables package; broker isolation needs it): {e}"))
    };
    if run("-C")?.status.success() {
        return Ok(());
    }
    let added = run("-I")?;
    if !added.status.success() {
        let why = String::from_utf8_lossy(&added.stderr);
        return Err(format!("{tool} -I OUTPUT {} failed: {}", args.join(" "), why.trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_names_the_broker_and_the_tenants_uid_range() {
        let r = rule(59092, 2_000_000_000);
        assert_eq!(
            r.join(" "),
            "-p tcp --dport 59092 -m owner --uid-owner 2000000000-2016777215 -m comment --comment mysimbdp: tenants reach the broker only through its gateway -j REJECT --reject-with tcp-reset"
        );
        assert_eq!(ports("localhost:9092, 127.0.0.1:9092,127.0.0.1:9093").unwrap(), [9092, 9093]);
    }

    #[test]
    fn the_platforms_rules_give_the_denied_ports_and_no_other_rule_does() {
        let rules = format!(
            "-P OUTPUT ACCEPT\n-A OUTPUT -p tcp -m tcp --dport 40205 -m owner --uid-owner 2000000000-2016777215 -m comment --comment \"{COMMENT}\" -j REJECT --reject-with tcp-reset\n-A OUTPUT -p tcp -m tcp --dport 22 -j DROP\n"
        );
        assert_eq!(parse_denied(&rules), [40205]);
    }
}
