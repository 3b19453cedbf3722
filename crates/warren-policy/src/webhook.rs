//! `verify-webhook`: checks that a request was signed by the webhook's sender with the shared
//! secret, the way each provider signs (HMAC over the body, and for some a timestamp that must
//! be recent, so a captured request cannot be replayed later). Comparisons are constant-time.

use std::time::{Duration, SystemTime};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;

/// How old a signed timestamp may be (Stripe's, Slack's and Svix's own default).
pub(crate) const TOLERANCE: Duration = Duration::from_secs(300);

/// Who signs the requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Provider {
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(body)>`.
    Github,
    /// `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256("t.body")>[,v1=...]`.
    Stripe,
    /// `X-Slack-Signature: v0=<hex HMAC-SHA256("v0:ts:body")>`, `X-Slack-Request-Timestamp`.
    Slack,
    /// `X-Twilio-Signature: <base64 HMAC-SHA1(url + sorted form params)>`.
    Twilio,
    /// `svix-id`, `svix-timestamp`, `svix-signature: v1,<base64 HMAC-SHA256("id.ts.body")>`;
    /// the secret is `whsec_<base64 key>`.
    Svix,
    /// `X-Signature` (or the header given): hex or base64 HMAC-SHA256 of the body, with an
    /// optional `sha256=` prefix.
    Hmac { header: String },
}

impl Provider {
    pub(crate) fn parse(name: &str, header: Option<&str>) -> Result<Provider, String> {
        Ok(match name {
            "github" => Provider::Github,
            "stripe" => Provider::Stripe,
            "slack" => Provider::Slack,
            "twilio" => Provider::Twilio,
            "svix" => Provider::Svix,
            "hmac" | "hmac-sha256" | "generic" => {
                Provider::Hmac { header: header.unwrap_or("x-signature").to_ascii_lowercase() }
            }
            other => {
                return Err(format!(
                    "provider {other:?} is not supported; warren verifies github, stripe, slack, twilio, svix and hmac-sha256"
                ));
            }
        })
    }
}

/// A request to verify.
pub(crate) struct Signed<'a> {
    pub(crate) headers: &'a HeaderMap,
    /// The URL the sender called (Twilio signs it).
    pub(crate) url: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) now: SystemTime,
}

/// Ok when the request carries a valid signature.
pub(crate) fn verify(p: &Provider, secret: &str, r: &Signed<'_>) -> Result<(), String> {
    let header = |name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("the {name} header is missing"))
    };
    match p {
        Provider::Github => {
            let sig = header("x-hub-signature-256")?;
            let hex = sig.strip_prefix("sha256=").ok_or("X-Hub-Signature-256 must start with sha256=")?;
            check(&hmac256(secret.as_bytes(), &[r.body]), &decode_hex(hex)?)
        }
        Provider::Stripe => {
            let sig = header("stripe-signature")?;
            let mut ts = None;
            let mut sigs = Vec::new();
            for part in sig.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", v)) => ts = Some(v),
                    Some(("v1", v)) => sigs.push(v),
                    _ => {}
                }
            }
            let ts = ts.ok_or("Stripe-Signature has no t=")?;
            fresh(ts, r.now)?;
            let want = hmac256(secret.as_bytes(), &[ts.as_bytes(), b".", r.body]);
            if sigs.iter().any(|s| decode_hex(s).is_ok_and(|s| check(&want, &s).is_ok())) {
                Ok(())
            } else {
                Err("no v1 signature in Stripe-Signature matches".into())
            }
        }
        Provider::Slack => {
            let ts = header("x-slack-request-timestamp")?;
            fresh(ts, r.now)?;
            let sig = header("x-slack-signature")?;
            let hex = sig.strip_prefix("v0=").ok_or("X-Slack-Signature must start with v0=")?;
            check(&hmac256(secret.as_bytes(), &[b"v0:", ts.as_bytes(), b":", r.body]), &decode_hex(hex)?)
        }
        Provider::Twilio => {
            let sig = header("x-twilio-signature")?;
            let mut data = r.url.to_owned();
            let form = r
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
            if form {
                let text = std::str::from_utf8(r.body).map_err(|_| "the form body is not UTF-8")?;
                let mut params: Vec<(String, String)> = text
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (crate::vars::url_decode(k), crate::vars::url_decode(v))
                    })
                    .collect();
                params.sort();
                for (k, v) in params {
                    data.push_str(&k);
                    data.push_str(&v);
                }
            }
            let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
                .map_err(|e| e.to_string())?;
            mac.update(data.as_bytes());
            let want = mac.finalize().into_bytes().to_vec();
            let given = base64::engine::general_purpose::STANDARD
                .decode(sig)
                .map_err(|_| "X-Twilio-Signature is not base64")?;
            check(&want, &given)
        }
        Provider::Svix => {
            let id = header("svix-id")?;
            let ts = header("svix-timestamp")?;
            fresh(ts, r.now)?;
            let key = secret.strip_prefix("whsec_").unwrap_or(secret);
            let key = base64::engine::general_purpose::STANDARD
                .decode(key)
                .map_err(|_| "the svix secret is not whsec_<base64>")?;
            let want = hmac256(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", r.body]);
            let sigs = header("svix-signature")?;
            let ok = sigs.split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|s| {
                base64::engine::general_purpose::STANDARD.decode(s).is_ok_and(|s| check(&want, &s).is_ok())
            });
            if ok { Ok(()) } else { Err("no v1 signature in svix-signature matches".into()) }
        }
        Provider::Hmac { header: name } => {
            let sig = header(name)?;
            let sig = sig.strip_prefix("sha256=").unwrap_or(sig);
            let given = decode_hex(sig).or_else(|_| {
                base64::engine::general_purpose::STANDARD
                    .decode(sig)
                    .map_err(|_| format!("{name} is neither hex nor base64"))
            })?;
            check(&hmac256(secret.as_bytes(), &[r.body]), &given)
        }
    }
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn check(want: &[u8], given: &[u8]) -> Result<(), String> {
    if want.len() == given.len() && bool::from(subtle::ConstantTimeEq::ct_eq(want, given)) {
        Ok(())
    } else {
        Err("the signature does not match".into())
    }
}

fn fresh(ts: &str, now: SystemTime) -> Result<(), String> {
    let ts: u64 = ts.trim().parse().map_err(|_| format!("the timestamp {ts:?} is not a number"))?;
    let now = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    if now.abs_diff(ts) > TOLERANCE.as_secs() {
        return Err(format!(
            "the signed timestamp is {}s away from now (more than {}s)",
            now.abs_diff(ts),
            TOLERANCE.as_secs()
        ));
    }
    Ok(())
}

fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the signature is not hex".into());
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string())).collect()
}

/// Signatures as each provider makes them, for tests (here and through a tunnel).
pub mod sign {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// `X-Hub-Signature-256`.
    pub fn github(secret: &str, body: &[u8]) -> String {
        format!("sha256={}", hex(&hmac256(secret.as_bytes(), &[body])))
    }

    /// `Stripe-Signature`.
    pub fn stripe(secret: &str, ts: u64, body: &[u8]) -> String {
        let t = ts.to_string();
        format!("t={t},v1={}", hex(&hmac256(secret.as_bytes(), &[t.as_bytes(), b".", body])))
    }

    /// `X-Slack-Signature` for timestamp `ts`.
    pub fn slack(secret: &str, ts: u64, body: &[u8]) -> String {
        let t = ts.to_string();
        format!("v0={}", hex(&hmac256(secret.as_bytes(), &[b"v0:", t.as_bytes(), b":", body])))
    }

    /// `X-Twilio-Signature` for a form POST to `url`.
    pub fn twilio(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
        let mut p = params.to_vec();
        p.sort();
        let mut data = url.to_owned();
        for (k, v) in p {
            data.push_str(k);
            data.push_str(v);
        }
        let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes()).expect("any key");
        mac.update(data.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// `svix-signature` for message `id` at `ts` with secret `whsec_...`.
    pub fn svix(secret: &str, id: &str, ts: u64, body: &[u8]) -> String {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
            .expect("base64 secret");
        let t = ts.to_string();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD
                .encode(hmac256(&key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]))
        )
    }

    /// A generic hex HMAC-SHA256 of the body.
    pub fn hmac_sha256(secret: &str, body: &[u8]) -> String {
        hex(&hmac256(secret.as_bytes(), &[body]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(headers: &'a HeaderMap, body: &'a [u8], now: u64) -> Signed<'a> {
        Signed {
            headers,
            url: "https://hooks.example.com/twilio",
            body,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(now),
        }
    }

    fn h(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn each_provider_accepts_its_signature_and_refuses_a_wrong_or_stale_one() {
        let body = br#"{"event":"push"}"#;
        let now = 1_800_000_000;
        let ok =
            |p: &Provider, secret: &str, headers: HeaderMap| verify(p, secret, &req(&headers, body, now));

        let g = h(&[("x-hub-signature-256", sign::github("s3cret", body))]);
        assert!(ok(&Provider::Github, "s3cret", g.clone()).is_ok());
        assert!(ok(&Provider::Github, "other", g).is_err());
        // GitHub's documented test vector.
        let doc = h(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".into(),
        )]);
        assert!(
            verify(&Provider::Github, "It's a Secret to Everybody", &req(&doc, b"Hello, World!", now))
                .is_ok()
        );

        let s = h(&[("stripe-signature", sign::stripe("whsec_x", now, body))]);
        assert!(ok(&Provider::Stripe, "whsec_x", s).is_ok());
        let stale = h(&[("stripe-signature", sign::stripe("whsec_x", now - 301, body))]);
        assert!(ok(&Provider::Stripe, "whsec_x", stale).unwrap_err().contains("away from now"));

        let sl = h(&[
            ("x-slack-request-timestamp", now.to_string()),
            ("x-slack-signature", sign::slack("sl", now, body)),
        ]);
        assert!(ok(&Provider::Slack, "sl", sl).is_ok());
        let tampered = h(&[
            ("x-slack-request-timestamp", (now + 1).to_string()),
            ("x-slack-signature", sign::slack("sl", now, body)),
        ]);
        assert!(ok(&Provider::Slack, "sl", tampered).is_err());

        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sv = h(&[
            ("svix-id", "msg_1".into()),
            ("svix-timestamp", now.to_string()),
            ("svix-signature", sign::svix(secret, "msg_1", now, body)),
        ]);
        assert!(ok(&Provider::Svix, secret, sv).is_ok());
        let other_id = h(&[
            ("svix-id", "msg_2".into()),
            ("svix-timestamp", now.to_string()),
            ("svix-signature", sign::svix(secret, "msg_1", now, body)),
        ]);
        assert!(ok(&Provider::Svix, secret, other_id).is_err());

        let form = b"To=%2B15551234567&Body=hi";
        let tw = h(&[
            ("content-type", "application/x-www-form-urlencoded".into()),
            (
                "x-twilio-signature",
                sign::twilio(
                    "tok",
                    "https://hooks.example.com/twilio",
                    &[("To", "+15551234567"), ("Body", "hi")],
                ),
            ),
        ]);
        assert!(verify(&Provider::Twilio, "tok", &req(&tw, form, now)).is_ok());
        assert!(verify(&Provider::Twilio, "tok", &req(&tw, b"To=%2B15550000000&Body=hi", now)).is_err());

        let p = Provider::parse("hmac", Some("X-Body-Sig")).unwrap();
        let gh = h(&[("x-body-sig", sign::hmac_sha256("k", body))]);
        assert!(ok(&p, "k", gh).is_ok());
        assert!(ok(&p, "k", HeaderMap::new()).unwrap_err().contains("missing"));
        assert!(Provider::parse("acme-hooks", None).is_err());
    }
}
