//! Digest authentication (RFC 3261 §22, RFC 2617, RFC 7616 / RFC 8760) for the box's own
//! requests: the PBX's 401 or 407 challenge is read here, and the box answers it with MD5 or
//! SHA-256, whichever the PBX asks for. rsipstack 0.7.14 has a digest of its own, but it does not
//! read the RFC 7616 name `SHA-256` (only `SHA256`), so a PBX asking for SHA-256 failed; the
//! hashing itself is still rsipstack's [`compute_digest`].

use rsipstack::dialog::authenticate::compute_digest;
use rsipstack::sip::headers::auth::{Algorithm, AuthQop};
use rsipstack::sip::prelude::*;
use rsipstack::sip::{Header, Method, Response};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("the {status} carries no {header} challenge")]
    NoChallenge { status: u16, header: &'static str },
    #[error("the challenge is not a digest (scheme `{0}`)")]
    NotDigest(String),
    #[error("the challenge has no {0}")]
    Missing(&'static str),
    #[error(
        "the PBX asks for the digest algorithm `{0}`, which the box does not speak (MD5, SHA-256)"
    )]
    UnsupportedAlgorithm(String),
}

/// The hash a challenge asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Md5,
    Sha256,
}

impl DigestAlgorithm {
    fn parse(name: &str) -> Option<DigestAlgorithm> {
        match name.trim().to_ascii_uppercase().as_str() {
            "MD5" => Some(DigestAlgorithm::Md5),
            "SHA-256" | "SHA256" => Some(DigestAlgorithm::Sha256),
            _ => None,
        }
    }

    /// The name as RFC 7616 writes it.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Sha256 => "SHA-256",
        }
    }

    fn hash(self) -> Algorithm {
        match self {
            DigestAlgorithm::Md5 => Algorithm::Md5,
            DigestAlgorithm::Sha256 => Algorithm::Sha256,
        }
    }
}

/// One digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: DigestAlgorithm,
    /// The server asked for `qop=auth`.
    pub qop_auth: bool,
    /// The server only rejected an old nonce (the password was right).
    pub stale: bool,
    /// From a 407 (answered with Proxy-Authorization) rather than a 401.
    pub proxy: bool,
}

/// The `name=value` parameters of a challenge, values unquoted.
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            // A quoted string; `\"` escapes a quote.
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((name, value));
        rest = next;
    }
    out
}

/// Reads one `WWW-Authenticate` / `Proxy-Authenticate` value.
pub fn parse_challenge(value: &str, proxy: bool) -> Result<Challenge, DigestError> {
    let value = value.trim();
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(DigestError::NotDigest(scheme.to_string()));
    }
    let params = parameters(rest);
    let find = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let algorithm = match find("algorithm") {
        None => DigestAlgorithm::Md5,
        Some(name) => {
            DigestAlgorithm::parse(&name).ok_or(DigestError::UnsupportedAlgorithm(name))?
        }
    };
    let qop = find("qop");
    Ok(Challenge {
        realm: find("realm").ok_or(DigestError::Missing("realm"))?,
        nonce: find("nonce").ok_or(DigestError::Missing("nonce"))?,
        opaque: find("opaque"),
        algorithm,
        qop_auth: qop.is_some_and(|q| q.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth"))),
        stale: find("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        proxy,
    })
}

/// The challenge of a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate); of several, the
/// strongest the box speaks (RFC 8760: SHA-256 before MD5).
pub fn challenge_of(response: &Response) -> Result<Challenge, DigestError> {
    let status = u16::from(response.status_code.clone());
    let proxy = status == 407;
    let values: Vec<String> = response
        .headers()
        .iter()
        .filter_map(|header| match header {
            Header::WwwAuthenticate(h) if !proxy => Some(h.value().to_string()),
            Header::ProxyAuthenticate(h) if proxy => Some(h.value().to_string()),
            _ => None,
        })
        .collect();
    let header = if proxy {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    let mut first_error = None;
    let mut best: Option<Challenge> = None;
    for value in values {
        match parse_challenge(&value, proxy) {
            Ok(challenge) => {
                let stronger = best.as_ref().is_none_or(|b| {
                    b.algorithm == DigestAlgorithm::Md5
                        && challenge.algorithm == DigestAlgorithm::Sha256
                });
                if stronger {
                    best = Some(challenge);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    best.ok_or_else(|| first_error.unwrap_or(DigestError::NoChallenge { status, header }))
}

/// Escapes a value for a quoted string.
fn quoted(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The credentials for `challenge`: the `Authorization` (401) or `Proxy-Authorization` (407)
/// header of a request `method uri`, the `nc`-th use of the nonce.
pub fn answer(
    challenge: &Challenge,
    user: &str,
    password: &str,
    method: &Method,
    uri: &str,
    nc: u8,
    cnonce: &str,
) -> Header {
    let qop = challenge.qop_auth.then(|| AuthQop::Auth {
        cnonce: cnonce.to_string(),
        nc,
    });
    let response = compute_digest(
        user,
        password,
        &challenge.realm,
        &challenge.nonce,
        method,
        uri,
        challenge.algorithm.hash(),
        qop.as_ref(),
    );
    let mut value = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\", algorithm={}",
        quoted(user),
        quoted(&challenge.realm),
        quoted(&challenge.nonce),
        quoted(uri),
        response,
        challenge.algorithm.name(),
    );
    if challenge.qop_auth {
        value.push_str(&format!(
            ", qop=auth, nc={nc:08x}, cnonce=\"{}\"",
            quoted(cnonce)
        ));
    }
    if let Some(opaque) = &challenge.opaque {
        value.push_str(&format!(", opaque=\"{}\"", quoted(opaque)));
    }
    if challenge.proxy {
        Header::ProxyAuthorization(value.into())
    } else {
        Header::Authorization(value.into())
    }
}

/// A fresh client nonce.
pub fn cnonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kamailio_and_asterisk_challenges_are_read() {
        let c = parse_challenge(
            r#"Digest realm="127.0.0.1", nonce="aGVsbG8=", qop="auth", algorithm=SHA-256"#,
            false,
        )
        .unwrap();
        assert_eq!(c.realm, "127.0.0.1");
        assert_eq!(c.nonce, "aGVsbG8=");
        assert_eq!(c.algorithm, DigestAlgorithm::Sha256);
        assert!(c.qop_auth && !c.stale && !c.proxy);
        let c = parse_challenge(
            r#"Digest algorithm=MD5,realm="asterisk",nonce="1a2b",opaque="x\"y",stale=TRUE"#,
            true,
        )
        .unwrap();
        assert_eq!(c.algorithm, DigestAlgorithm::Md5);
        assert_eq!(c.opaque.as_deref(), Some("x\"y"));
        assert!(c.stale && c.proxy && !c.qop_auth);
        // No algorithm means MD5 (RFC 2617).
        let c = parse_challenge(r#"Digest realm="r", nonce="n""#, false).unwrap();
        assert_eq!(c.algorithm, DigestAlgorithm::Md5);
    }

    #[test]
    fn unusable_challenges_are_named() {
        assert_eq!(
            parse_challenge(r#"Basic realm="r""#, false),
            Err(DigestError::NotDigest("Basic".into()))
        );
        assert_eq!(
            parse_challenge(r#"Digest nonce="n""#, false),
            Err(DigestError::Missing("realm"))
        );
        assert_eq!(
            parse_challenge(
                r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#,
                false
            ),
            Err(DigestError::UnsupportedAlgorithm("SHA-512-256".into()))
        );
        // Truncated or hostile text does not panic.
        for junk in ["Digest realm=\"unterminated", "Digest =,=,\"", "Digest", ""] {
            let _ = parse_challenge(junk, false);
        }
    }

    #[test]
    fn the_md5_answer_matches_rfc_2617() {
        // RFC 2617 §3.5's example (the HTTP method and URI stand in for SIP's).
        let challenge = Challenge {
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            opaque: Some("5ccc069c403ebaf9f0171e9517f40e41".into()),
            algorithm: DigestAlgorithm::Md5,
            qop_auth: true,
            stale: false,
            proxy: false,
        };
        let header = answer(
            &challenge,
            "Mufasa",
            "Circle Of Life",
            &Method::Register,
            "/dir/index.html",
            1,
            "0a4f113b",
        );
        let Header::Authorization(value) = header else {
            panic!("{header:?}")
        };
        let value = value.value().to_string();
        assert!(value.contains("algorithm=MD5"), "{value}");
        assert!(value.contains("nc=00000001"), "{value}");
        assert!(
            value.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#),
            "{value}"
        );
        // The RFC's response for GET is 6629fae49393a05397450978507c4ef1; with REGISTER in its
        // place (computed independently, by Python's hashlib) it is this:
        assert!(
            value.contains(r#"response="59d17b90f0e821045ecceb843e5b38c4""#),
            "{value}"
        );
    }

    #[test]
    fn a_407_is_answered_with_proxy_authorization_in_sha_256() {
        let challenge = parse_challenge(
            r#"Digest realm="pbx", nonce="abc", algorithm=SHA-256"#,
            true,
        )
        .unwrap();
        let header = answer(
            &challenge,
            "201",
            "pw",
            &Method::Invite,
            "sip:202@pbx",
            1,
            "c",
        );
        let Header::ProxyAuthorization(value) = header else {
            panic!("{header:?}")
        };
        let value = value.value().to_string();
        assert!(value.contains("algorithm=SHA-256"), "{value}");
        assert!(!value.contains("qop="), "{value}");
        // SHA-256 of HA1:nonce:HA2, computed independently by Python's hashlib.
        assert!(
            value.contains(
                r#"response="d8f7028057783acc3532b771337bb451fee2c00a496d51143b707bf236896055""#
            ),
            "{value}"
        );
    }
}
