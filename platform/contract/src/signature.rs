//! A report's signature: HMAC-SHA256 over the payload's bytes, keyed with the bytes of the instance's
//! `MYSIMBDP_REPORT_KEY` as given, in lowercase hex, in the `mysimbdp-signature` header. The monitor
//! trusts a report only when it matches the key the platform gave that instance, so no one else can
//! report for it.

use hmac::{Hmac, Mac};

/// The header that carries a report's signature.
pub const HEADER: &str = "mysimbdp-signature";

/// The signature of `payload` under `key`.
pub fn sign(key: &str, payload: &[u8]) -> String {
    hex::encode(mac(key, payload).finalize().into_bytes())
}

/// Whether `signature` is `payload`'s under `key`, compared in constant time.
pub fn verify(key: &str, payload: &[u8], signature: &[u8]) -> bool {
    let Some(signature) = std::str::from_utf8(signature).ok().and_then(|s| hex::decode(s.trim()).ok()) else {
        return false;
    };
    mac(key, payload).verify_slice(&signature).is_ok()
}

fn mac(key: &str, payload: &[u8]) -> Hmac<sha2::Sha256> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(payload);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_rfc_4231s_hmac_sha256() {
        // RFC 4231, test case 2: so an app in any language can check its own signing against this.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_signature_verifies_under_its_key_only() {
        let s = sign("key", b"{}");
        assert_eq!(s.len(), 64);
        assert!(verify("key", b"{}", s.as_bytes()));
        assert!(!verify("other", b"{}", s.as_bytes()));
        assert!(!verify("key", b"{ }", s.as_bytes()));
        assert!(!verify("key", b"{}", b"not hex"));
    }
}
