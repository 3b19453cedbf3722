//! Generating, parsing and checking `<id>_<secret>` tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Which kind of secret a token is; decides the id prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// An authtoken (`cr_`).
    Credential,
    /// An API key (`ak_`).
    ApiKey,
}

impl SecretKind {
    fn prefix(self) -> &'static str {
        match self {
            SecretKind::Credential => "cr",
            SecretKind::ApiKey => "ak",
        }
    }
}

/// Bytes of randomness in a secret.
const SECRET_BYTES: usize = 32;
/// Random characters after an id's prefix.
const ID_CHARS: usize = 26;

/// Characters of an id that encode its creation second.
const TIME_CHARS: usize = 6;
/// Base 62 in ASCII order, so ids sort by creation time as plain byte strings.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new id such as `cr_0TbK3x...`: 6 base-62 characters of the Unix second, then random
/// characters. Ids of one kind sort by creation time (to the second), which the API's
/// `before_id` pagination relies on.
pub fn generate_id(prefix: &str) -> String {
    let mut id = Vec::with_capacity(prefix.len() + 1 + ID_CHARS);
    write_id(prefix, &mut id);
    String::from_utf8(id).expect("ids are ASCII")
}

/// Appends a new id (as [`generate_id`] makes it) to `out`: traffic events write theirs
/// straight into the event's text.
pub fn write_id(prefix: &str, out: &mut Vec<u8>) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    write_id_at(prefix, secs, out);
}

/// [`write_id`] for an id made at `secs` (Unix seconds) by a caller that has read the clock.
pub fn write_id_at(prefix: &str, secs: u64, out: &mut Vec<u8>) {
    let mut chars = [b'0'; ID_CHARS];
    let (time, random) = chars.split_at_mut(TIME_CHARS);
    let mut v = secs;
    for c in time.iter_mut().rev() {
        *c = BASE62[(v % 62) as usize];
        v /= 62;
    }
    // Ten base-62 digits of each of two random 64-bit numbers (about 119 random bits in
    // all), read as a fraction's digits: each digit is the integer part of the fraction
    // times 62 and one multiplication, where division and remainder took several (traffic
    // events make one id per request; it showed in their profiles).
    let mut rng = rand::rng();
    for ten in random.chunks_mut(10) {
        let mut fraction: u64 = rng.random();
        for c in ten {
            let scaled = u128::from(fraction) * 62;
            *c = BASE62[(scaled >> 64) as usize];
            fraction = scaled as u64;
        }
    }
    out.extend_from_slice(prefix.as_bytes());
    out.push(b'_');
    out.extend_from_slice(&chars);
}

/// SHA-256 of a token's secret part.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits `<prefix>_<id chars>_<secret>` into the id and the secret part. The secret is
/// base64url and may itself contain `_`, so the id is taken by its known shape.
pub fn parse_token(kind: SecretKind, token: &str) -> Option<(&str, &str)> {
    let prefix = kind.prefix();
    let rest = token.strip_prefix(prefix)?.strip_prefix('_')?;
    let id_len = prefix.len() + 1 + ID_CHARS;
    // Bytes, not `str` slices: a token from the network may have a multi-byte character
    // anywhere, and slicing inside one panics. Past these checks every cut is at an ASCII byte.
    let bytes = rest.as_bytes();
    if bytes.len() <= ID_CHARS + 1
        || !bytes[..ID_CHARS].iter().all(|b| b.is_ascii_alphanumeric())
        || bytes[ID_CHARS] != b'_'
    {
        return None;
    }
    Some((&token[..id_len], &rest[ID_CHARS + 1..]))
}

pub(crate) fn new_secret(kind: SecretKind) -> (String, String, [u8; 32]) {
    let id = generate_id(kind.prefix());
    let mut raw = [0u8; SECRET_BYTES];
    rand::rng().fill(&mut raw);
    let secret = URL_SAFE_NO_PAD.encode(raw);
    let hash = hash_secret(&secret);
    (id.clone(), format!("{id}_{secret}"), hash)
}

/// A token for a DNS TXT record: 32 random characters, letters and digits.
pub(crate) fn challenge_token() -> String {
    rand::rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect()
}

pub(crate) fn hash_matches(presented: &str, stored: &[u8]) -> bool {
    let h = hash_secret(presented);
    stored.len() == h.len() && bool::from(h.ct_eq(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_even_when_the_secret_has_underscores() {
        let (id, token, hash) = new_secret(SecretKind::Credential);
        let (pid, secret) = parse_token(SecretKind::Credential, &token).unwrap();
        assert_eq!(pid, id);
        assert!(hash_matches(secret, &hash));
        assert!(secret.len() >= 43, "32 random bytes in base64url");
        let t = format!("{id}_a_b-c");
        assert_eq!(parse_token(SecretKind::Credential, &t), Some((id.as_str(), "a_b-c")));
        assert_eq!(parse_token(SecretKind::ApiKey, &token), None);
        assert_eq!(parse_token(SecretKind::Credential, "cr_short_x"), None);
        assert_eq!(parse_token(SecretKind::Credential, ""), None);
        assert_eq!(parse_token(SecretKind::Credential, &format!("{id}_")), None);
    }

    #[test]
    fn non_ascii_tokens_are_refused_without_panicking() {
        let (_, token, _) = new_secret(SecretKind::Credential);
        for bad in [
            "cr_ééééééééééééééééééééééééééé_x".to_owned(),
            format!("cr_{}é_secret", "a".repeat(25)),
            format!("cr_{}_sécret", "a".repeat(26)),
            "cr_\u{1F600}".to_owned(),
            token.replacen('_', "é", 2),
        ] {
            let parsed = parse_token(SecretKind::Credential, &bad);
            assert!(parsed.is_none() || parsed.unwrap().1.contains('é'), "{bad:?}");
        }
    }

    #[test]
    fn ids_sort_by_second_and_every_random_character_is_evenly_spread() {
        let at = |secs| {
            let mut id = Vec::new();
            write_id_at("ev", secs, &mut id);
            String::from_utf8(id).unwrap()
        };
        assert!(at(1_796_083_199) < at(1_796_083_200));
        assert_eq!(at(0).len(), 3 + ID_CHARS);
        // 200 of each character expected at each random position: a digit read from bits
        // that never change, or a character never drawn, lands far outside these bounds.
        let ids: Vec<String> = (0..62 * 200).map(|_| at(1_796_083_199)).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for position in 3 + TIME_CHARS..3 + ID_CHARS {
            let mut counts = [0u32; 62];
            for id in &ids {
                let c = id.as_bytes()[position];
                counts[BASE62.iter().position(|&b| b == c).expect("base 62")] += 1;
            }
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(*min >= 120 && *max <= 290, "position {position}: {min}..{max}");
        }
    }
}
