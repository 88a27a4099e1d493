//! The box's registration with the office PBX (RFC 3261 §10): REGISTER (rsipstack's
//! transaction) with digest auth (the 401/407 answered by [`super::digest`], in MD5 or SHA-256,
//! whichever the PBX asks for), refreshed at
//! 80 % of the Expires the registrar granted, retried with a growing backoff after a failure or
//! a network loss, and withdrawn (Expires 0) when the user agent shuts down. Its state is
//! published on a watch channel so the box (and the tests) can see how it stands.

use std::time::Duration;

use rsipstack::dialog::registration::Registration;
use rsipstack::sip::{Header, Method, StatusCode, Uri};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::digest::{self, Challenge};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error("the registrar `{0}` is not a SIP address (write host[:port] or sip:host[:port])")]
    BadRegistrar(String),
    #[error(
        "the registrar {registrar} refused the password of `{user}` (it challenged again with \
         {status} after the credentials were sent): check sip.password_file"
    )]
    WrongPassword {
        registrar: String,
        user: String,
        status: u16,
    },
    #[error("the registrar {registrar} forbids `{user}` to register ({status} {reason})")]
    Forbidden {
        registrar: String,
        user: String,
        status: u16,
        reason: String,
    },
    #[error("the registrar {registrar} refused the registration: {status} {reason}")]
    Refused {
        registrar: String,
        status: u16,
        reason: String,
    },
    #[error("the registrar {registrar} sent a challenge the box cannot answer: {reason}")]
    Challenge { registrar: String, reason: String },
    #[error("the registrar {registrar} did not answer within {seconds} s (unreachable, or no SIP server there)")]
    Unreachable { registrar: String, seconds: u64 },
    #[error("cannot send the REGISTER to {registrar}: {reason}")]
    Transport { registrar: String, reason: String },
    #[error("the registrar {registrar} failed the TLS handshake (its certificate is not trusted, see sip.tls_ca): {reason}")]
    Tls { registrar: String, reason: String },
}

/// Where and as whom the box registers.
#[derive(Clone)]
pub struct RegistrationOptions {
    /// `host[:port]` or a `sip:` URI of the registrar.
    pub registrar: String,
    pub user: String,
    pub password: String,
    /// The registration lifetime asked for, in seconds; the registrar may grant another.
    pub expires: u32,
    /// Longest wait for the registrar's final answer to one REGISTER.
    pub answer_within: Duration,
    /// The first wait before registering again after a failure; it doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Over TLS: the trust anchors (PEM) the registrar's certificate is checked against when it
    /// does not answer, to name a refused certificate rather than an unreachable registrar.
    pub tls_roots: Option<std::sync::Arc<Vec<u8>>>,
}

impl std::fmt::Debug for RegistrationOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationOptions")
            .field("registrar", &self.registrar)
            .field("user", &self.user)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl RegistrationOptions {
    pub fn new(registrar: &str, user: &str, password: &str) -> RegistrationOptions {
        RegistrationOptions {
            registrar: registrar.to_string(),
            user: user.to_string(),
            password: password.to_string(),
            expires: 3600,
            answer_within: Duration::from_secs(10),
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(120),
            tls_roots: None,
        }
    }

    /// The registrar as a SIP URI.
    pub fn registrar_uri(&self) -> Result<Uri, RegistrationError> {
        let text = if self.registrar.starts_with("sip:") || self.registrar.starts_with("sips:") {
            self.registrar.clone()
        } else {
            format!("sip:{}", self.registrar)
        };
        let uri = Uri::try_from(text.as_str())
            .map_err(|_| RegistrationError::BadRegistrar(self.registrar.clone()))?;
        if uri.auth.is_some() || uri.host_with_port.to_string().is_empty() {
            return Err(RegistrationError::BadRegistrar(self.registrar.clone()));
        }
        Ok(uri)
    }

    /// The registrar's host and port as written in request URIs (`host[:port]`).
    pub fn domain(&self) -> Result<String, RegistrationError> {
        Ok(self.registrar_uri()?.host_with_port.to_string())
    }
}

/// How the registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// The first REGISTER is on its way.
    Registering,
    /// Registered for `expires` seconds; `times` counts successful REGISTERs (refreshes included).
    Registered { expires: u32, times: u64 },
    /// The last attempt failed; the next one follows after `retry_in`.
    Failed {
        error: RegistrationError,
        retry_in: Duration,
        failures: u64,
    },
    /// Withdrawn (Expires 0) at shutdown.
    Unregistered,
}

/// When to refresh a registration granted for `expires` seconds: at 80 %, at least 1 s ahead.
pub fn refresh_after(expires: u32) -> Duration {
    let expires_ms = u64::from(expires) * 1000;
    let at = (expires_ms * 4 / 5).min(expires_ms.saturating_sub(1000));
    Duration::from_millis(at.max(500))
}

/// The wait before the `failures`-th retry: `base` doubled per failure, at most `max`.
pub fn backoff_after(failures: u64, base: Duration, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(16) as u32;
    base.saturating_mul(1 << shift).min(max)
}

/// The REGISTER dialogue with one registrar: rsipstack's transaction, the box's digest.
struct Registrar {
    registration: Registration,
    server: Uri,
    /// To and From: the box's address of record, `user@registrar` (rsipstack would leave the
    /// user out, having no credential of its own).
    address_of_record: Vec<Header>,
    /// The last challenge, and how many times its nonce was used.
    challenge: Option<(Challenge, u8)>,
}

impl Registrar {
    /// Why a registrar over TLS did not answer, when its handshake is what failed.
    async fn no_answer(&self, options: &RegistrationOptions) -> Option<RegistrationError> {
        let roots = options.tls_roots.as_ref()?;
        let host = self.server.host_with_port.host.to_string();
        let port = self
            .server
            .host_with_port
            .port
            .as_ref()
            .map_or(5061, |p| p.value().to_owned());
        let reason = super::tls::handshake_failure(&host, port, roots).await?;
        Some(RegistrationError::Tls {
            registrar: options.registrar.clone(),
            reason,
        })
    }

    /// Sends one REGISTER with the current credentials.
    async fn send(
        &mut self,
        options: &RegistrationOptions,
        expires: u32,
    ) -> Result<rsipstack::sip::Response, RegistrationError> {
        let registrar = options.registrar.clone();
        let mut headers = self.address_of_record.clone();
        if let Some((challenge, uses)) = &mut self.challenge {
            *uses = uses.saturating_add(1);
            headers.push(digest::answer(
                challenge,
                &options.user,
                &options.password,
                &Method::Register,
                &self.server.to_string(),
                *uses,
                &digest::cnonce(),
            ));
        }
        self.registration.extra_headers = headers;
        let unreachable = || RegistrationError::Unreachable {
            registrar: options.registrar.clone(),
            seconds: options.answer_within.as_secs().max(1),
        };
        match tokio::time::timeout(
            options.answer_within,
            self.registration
                .register(self.server.clone(), Some(expires)),
        )
        .await
        {
            Err(_) => Err(self.no_answer(options).await.unwrap_or_else(unreachable)),
            Ok(Err(e)) => {
                let reason = e.to_string();
                // A transaction that ended without an answer is a registrar that never replied.
                if reason.contains("terminated") || reason.contains("timeout") {
                    Err(self.no_answer(options).await.unwrap_or_else(unreachable))
                } else {
                    Err(RegistrationError::Transport { registrar, reason })
                }
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// One registration (its challenge answered), mapped to the granted Expires or an error.
    async fn register(
        &mut self,
        options: &RegistrationOptions,
        expires: u32,
    ) -> Result<u32, RegistrationError> {
        let registrar = options.registrar.clone();
        // A challenge answered with a nonce fresh from the registrar and challenged again means
        // the password is wrong, unless the registrar only calls the nonce stale.
        let mut answered_fresh = 0;
        loop {
            let response = self.send(options, expires).await?;
            let status = u16::from(response.status_code.clone());
            let reason = response.status_code.to_string();
            match response.status_code {
                StatusCode::OK => return Ok(self.registration.expires()),
                StatusCode::Unauthorized | StatusCode::ProxyAuthenticationRequired => {
                    let challenge = digest::challenge_of(&response).map_err(|e| {
                        RegistrationError::Challenge {
                            registrar: registrar.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    if answered_fresh >= 3 || (answered_fresh > 0 && !challenge.stale) {
                        self.challenge = None;
                        return Err(RegistrationError::WrongPassword {
                            registrar,
                            user: options.user.clone(),
                            status,
                        });
                    }
                    self.challenge = Some((challenge, 0));
                    answered_fresh += 1;
                }
                StatusCode::Forbidden => {
                    return Err(RegistrationError::Forbidden {
                        registrar,
                        user: options.user.clone(),
                        status,
                        reason,
                    })
                }
                _ => {
                    return Err(RegistrationError::Refused {
                        registrar,
                        status,
                        reason,
                    })
                }
            }
        }
    }
}

/// Keeps the box registered until `stop` is cancelled, then unregisters; publishes its state.
pub(crate) async fn keep_registered(
    endpoint: EndpointInnerRef,
    contact: Option<Uri>,
    options: RegistrationOptions,
    state: watch::Sender<RegistrationState>,
    stop: CancellationToken,
) {
    let server = match options.registrar_uri() {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "SIP registration impossible");
            state.send_replace(RegistrationState::Failed {
                error,
                retry_in: Duration::MAX,
                failures: 1,
            });
            return;
        }
    };
    // No credential for rsipstack: the box answers the challenges itself (see `digest`).
    let mut registration = Registration::new(endpoint, None);
    registration.contact = contact.map(|uri| rsipstack::sip::typed::Contact {
        display_name: None,
        uri,
        params: vec![],
    });
    let aor = format!("<sip:{}@{}>", options.user, server.host_with_port);
    let from_tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let mut registrar = Registrar {
        registration,
        address_of_record: vec![
            Header::To(aor.clone().into()),
            Header::From(format!("{aor};tag={from_tag}").into()),
        ],
        server,
        challenge: None,
    };
    let mut times = 0u64;
    let mut failures = 0u64;
    let mut registered = false;
    loop {
        let wait = match registrar.register(&options, options.expires).await {
            Ok(expires) => {
                times += 1;
                failures = 0;
                registered = true;
                tracing::info!(registrar = %options.registrar, expires, "registered with the PBX");
                state.send_replace(RegistrationState::Registered { expires, times });
                refresh_after(expires)
            }
            Err(error) => {
                failures += 1;
                let retry_in = backoff_after(failures, options.backoff, options.max_backoff);
                tracing::warn!(%error, retry_in_s = retry_in.as_secs_f32(), "SIP registration failed");
                state.send_replace(RegistrationState::Failed {
                    error,
                    retry_in,
                    failures,
                });
                retry_in
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => break,
        }
    }
    if registered {
        match registrar.register(&options, 0).await {
            Ok(_) => tracing::info!(registrar = %options.registrar, "unregistered from the PBX"),
            Err(error) => tracing::warn!(%error, "unregistering failed"),
        }
    }
    state.send_replace(RegistrationState::Unregistered);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_come_at_four_fifths_of_the_grant() {
        assert_eq!(refresh_after(3600), Duration::from_secs(2880));
        assert_eq!(refresh_after(60), Duration::from_secs(48));
        // Short grants still leave a second's margin, and never a zero wait.
        assert_eq!(refresh_after(4), Duration::from_millis(3000));
        assert_eq!(refresh_after(0), Duration::from_millis(500));
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        assert_eq!(backoff_after(1, base, max), Duration::from_secs(2));
        assert_eq!(backoff_after(2, base, max), Duration::from_secs(4));
        assert_eq!(backoff_after(5, base, max), Duration::from_secs(32));
        assert_eq!(backoff_after(6, base, max), max);
        assert_eq!(backoff_after(u64::MAX, base, max), max);
    }

    #[test]
    fn registrars_are_read_as_sip_uris() {
        let options = RegistrationOptions::new("pbx.local:5070", "201", "pw");
        assert_eq!(options.domain().unwrap(), "pbx.local:5070");
        let options = RegistrationOptions::new("sip:10.0.0.5", "201", "pw");
        assert_eq!(options.domain().unwrap(), "10.0.0.5");
        let options = RegistrationOptions::new("sip:201@pbx", "201", "pw");
        assert!(matches!(
            options.registrar_uri(),
            Err(RegistrationError::BadRegistrar(_))
        ));
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let options = RegistrationOptions::new("pbx", "201", "hunter2");
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
