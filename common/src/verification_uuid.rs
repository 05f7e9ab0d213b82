//! The verification uuid: one per case, the same on every attempt, so the
//! verification server refuses to text a case twice. It is an HMAC-SHA256 of
//! the case id under a configured key, cut to 128 bits and stamped as a
//! version 8 (custom) RFC 9562 UUID. Without the key, nobody can link a uuid
//! back to a case id; changing the key would let old cases be texted again,
//! so the key must stay fixed for a deployment's life.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::{CaseId, Secret};

/// Derives the case's verification uuid, in the canonical lowercase form
/// the server requires.
pub fn derive(key: &Secret, case_id: &CaseId) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
        .expect("HMAC accepts a key of any length");

    // A domain tag keeps this hash distinct from any other use of the key.
    mac.update(b"canotify verification uuid v1\0");
    mac.update(case_id.as_str().as_bytes());
    let digest = mac.finalize().into_bytes();

    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// True for a uuid in the canonical lowercase 8-4-4-4-12 form.
pub fn is_canonical(s: &str) -> bool {
    Uuid::try_parse(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(id: &str) -> CaseId {
        CaseId::new(id).unwrap()
    }

    #[test]
    fn the_same_case_always_gets_the_same_uuid() {
        let key = Secret::new("deployment key");

        assert_eq!(derive(&key, &case("A-1")), derive(&key, &case("A-1")));
    }

    #[test]
    fn different_cases_get_different_uuids() {
        let key = Secret::new("deployment key");
        let uuids: std::collections::HashSet<String> = (0..10_000)
            .map(|i| derive(&key, &case(&format!("A-{i}"))))
            .collect();

        assert_eq!(uuids.len(), 10_000);
    }

    #[test]
    fn another_key_gives_another_uuid() {
        assert_ne!(
            derive(&Secret::new("one"), &case("A-1")),
            derive(&Secret::new("two"), &case("A-1"))
        );
    }

    #[test]
    fn the_uuid_is_canonical_and_rfc_9562_version_8() {
        let uuid = derive(&Secret::new("k"), &case("A-1"));
        let parsed = Uuid::parse_str(&uuid).unwrap();

        assert!(is_canonical(&uuid));
        assert_eq!(parsed.get_version_num(), 8);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(uuid.len(), 36);
    }

    #[test]
    fn is_canonical_refuses_other_spellings() {
        assert!(!is_canonical("not-a-uuid"));
        assert!(!is_canonical("6BA7B810-9DAD-11D1-80B4-00C04FD430C8"));
        assert!(!is_canonical("6ba7b8109dad11d180b400c04fd430c8"));
    }
}
