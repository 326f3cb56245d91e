//! The PostgreSQL objects a tenant's source owns, named from the tenant and the source: two tenants
//! (or two sources) pointed at one database never share a publication or a replication slot.

use sha2::{Digest, Sha256};

/// `mysimbdp_<tenant>_<source>_<hash>`, within PostgreSQL's 63 bytes and its slot alphabet
/// (`[a-z0-9_]`). The hash of the exact pair keeps names apart that the alphabet would merge
/// (tenant `a-b` with source `c`, tenant `a` with source `b-c`).
fn object_name(tenant: &str, source: &str) -> String {
    let hash = hex::encode(&Sha256::digest(format!("{tenant}/{source}"))[..4]);
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
    };
    let mut readable = format!("mysimbdp_{}_{}", clean(tenant), clean(source));
    // 63 bytes, less `_` and the hash, less room for the snapshot slot's `_init`.
    readable.truncate(63 - 1 - hash.len() - 5);
    format!("{readable}_{hash}")
}

/// The replication slot of a tenant's source.
pub fn slot(tenant: &str, source: &str) -> String {
    object_name(tenant, source)
}

/// The temporary slot the initial snapshot runs under, until it becomes `slot`.
pub fn snapshot_slot(tenant: &str, source: &str) -> String {
    format!("{}_init", object_name(tenant, source))
}

/// The publication of a tenant's source.
pub fn publication(tenant: &str, source: &str) -> String {
    object_name(tenant, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_postgresql_and_never_collide() {
        let a = slot("a-b", "c");
        assert_ne!(a, slot("a", "b-c"));
        assert_ne!(slot("food", "orders"), slot("bank", "orders"));
        let long = snapshot_slot(&"t".repeat(32), &"s".repeat(64));
        assert!(long.len() <= 63, "{long}");
        assert!(long.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{long}");
        assert!(a.starts_with("mysimbdp_a_b_c_"), "{a}");
    }
}
