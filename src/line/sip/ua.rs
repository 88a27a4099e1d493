//! The box's SIP user agent, on rsipstack: it listens on the configured address, answers INVITEs
//! (ringing first, busy beyond the configured number of calls, 488 when no codec matches), keeps
//! each call's dialog in a task of its own that carries out what the [`SipLine`] asks (BYE,
//! REFER) and what the peer does (BYE, CANCEL, re-INVITE for hold and resume, INFO keys), and
//! hands every answered call to the application as an [`IncomingCall`].
//!
//! Why rsipstack: a maintained, MIT-licensed RFC 3261 stack (transactions, dialogs, digest auth)
//! on tokio, known to work with baresip and kamailio; the project keeps it behind its own `Line`
//! so nothing above the driver sees SIP types.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rsipstack::dialog::dialog::{
    DialogState, DialogStateReceiver, DialogStateSender, TerminatedReason,
};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::dialog::DialogId;
use rsipstack::sip::prelude::*;
use rsipstack::sip::{Header, Method, StatusCode};
use rsipstack::transaction::endpoint::EndpointOption;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::tls::TlsConfig;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{TcpListenerConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use tokio::sync::{mpsc as async_mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::media::{MediaControl, MediaHandle, MediaSockets};
use super::outbound::{self, DialError, DialOptions, Dialed};
use super::registration::{
    keep_registered, RegistrationError, RegistrationOptions, RegistrationState,
};
use super::sdp::{self, Codec, Negotiated, SdpError};
use super::{CallCommand, SipLine};
use crate::config::SipTransport;
use crate::line::TransferOutcome;

#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("cannot start the SIP runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen for SIP on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error("cannot read the SIP password from {path}: {reason}")]
    Password { path: String, reason: String },
    #[error("{0}")]
    Registration(#[from] RegistrationError),
}

/// How the user agent behaves.
#[derive(Debug, Clone)]
pub struct SipOptions {
    pub listen: SocketAddr,
    /// UDP only, or TCP as well: the box then listens on TCP (and UDP) at `listen`, its Contact
    /// says `transport=tcp`, and it registers and places calls over TCP. With TLS the box
    /// connects to the PBX over TLS (its Contact says `transport=tls`) and takes calls on that
    /// connection, which the PBX keeps using (RFC 5923 `alias` in the Via).
    pub transport: SipTransport,
    /// The CA file the PBX's TLS certificate must chain to; the system's CA bundle when `None`.
    pub tls_ca: Option<std::path::PathBuf>,
    /// The user part of the box's Contact (its extension).
    pub user: String,
    /// Calls in progress at most; more get 486 Busy Here.
    pub max_calls: u32,
    /// Rings (180 Ringing, then a wait of `ring` each) before answering.
    pub answer_after_rings: u32,
    pub ring: Duration,
    /// Codecs in the box's order of preference.
    pub codecs: Vec<Codec>,
    /// Where numbers go (`host[:port]` of the PBX), e.g. a transfer to extension 201;
    /// without it, to the registrar, or else to the address the box listens on.
    pub pbx: Option<String>,
    /// Register with a PBX (and answer its challenges on calls the box places).
    pub registration: Option<RegistrationOptions>,
    /// RFC 3261's T1, the round-trip estimate its retransmission and cleanup timers scale
    /// with (finished transactions are forgotten after 64 × T1): 500 ms by default.
    pub t1: Duration,
}

impl SipOptions {
    pub fn new(listen: SocketAddr) -> SipOptions {
        SipOptions {
            listen,
            transport: SipTransport::Udp,
            tls_ca: None,
            user: "callbox".into(),
            max_calls: 4,
            answer_after_rings: 1,
            ring: Duration::from_secs(1),
            codecs: Codec::ALL.to_vec(),
            pbx: None,
            registration: None,
            t1: Duration::from_millis(500),
        }
    }

    /// The options the `[sip]` section asks for: where to listen, how many calls, how many
    /// rings, and the registration (the password read from `sip.password_file`).
    pub fn from_config(sip: &crate::config::SipConfig) -> Result<SipOptions, SipError> {
        let mut options = SipOptions::new(sip.listen);
        options.transport = sip.transport;
        options.tls_ca = sip.tls_ca.clone();
        if options.transport == SipTransport::Tls {
            // A CA file that cannot be used is named now, not at the first connection.
            super::tls::trust_anchors(options.tls_ca.as_deref())?;
        }
        options.max_calls = sip.max_calls;
        options.answer_after_rings = sip.answer_after_rings;
        if let Some(user) = &sip.user {
            options.user = user.clone();
        }
        if let Some(registrar) = &sip.registrar {
            let password = match &sip.password_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| SipError::Password {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                None => String::new(),
            };
            let registration = RegistrationOptions::new(registrar, &options.user, &password);
            registration.registrar_uri()?;
            options.registration = Some(registration);
        }
        Ok(options)
    }
}

/// A call the box has answered.
pub struct IncomingCall {
    pub line: SipLine,
    /// The caller's number (the user part of From), as the caller ID.
    pub caller: String,
    pub call_id: String,
}

/// The box's user agent; calls arrive through [`SipUa::next_call`].
pub struct SipUa {
    runtime: Option<tokio::runtime::Runtime>,
    cancel: CancellationToken,
    calls: mpsc::Receiver<IncomingCall>,
    local: SocketAddr,
    active: Arc<AtomicU32>,
    agent: Arc<Agent>,
    registration: Option<Registering>,
}

/// The registration task and how it stands.
struct Registering {
    state: watch::Receiver<RegistrationState>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

const USER_AGENT: &str = concat!("callbox/", env!("CARGO_PKG_VERSION"));

impl SipUa {
    pub fn start(options: SipOptions) -> Result<SipUa, SipError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sip")
            .enable_all()
            .build()
            .map_err(SipError::Runtime)?;
        let cancel = CancellationToken::new();
        let (call_sender, calls) = mpsc::channel();
        let active = Arc::new(AtomicU32::new(0));
        let mut options = options;
        let tls_roots = match options.transport {
            SipTransport::Tls => Some(super::tls::trust_anchors(options.tls_ca.as_deref())?),
            _ => None,
        };
        let tcp = options.transport == SipTransport::Tcp;
        let listen = if tcp {
            tcp_port_for(options.listen)?
        } else {
            options.listen
        };
        if let Some(registration) = options.registration.as_mut() {
            registration.registrar_uri()?;
            registration.tls_roots = tls_roots.clone().map(std::sync::Arc::new);
            let param = transport_param(options.transport);
            if !param.is_empty() && !registration.registrar.contains("transport=") {
                let uri = registration.registrar_uri()?.to_string();
                registration.registrar = format!("{uri}{param}");
            }
        }
        let (agent, registration) = runtime.block_on(async {
            let transport = TransportLayer::new(cancel.clone());
            if let Some(roots) = tls_roots {
                transport.set_tls_config(TlsConfig {
                    ca_certs: Some(roots),
                    ..TlsConfig::default()
                });
            }
            let connection =
                UdpConnection::create_connection(listen, None, Some(cancel.child_token()))
                    .await
                    .map_err(|e| SipError::Listen {
                        addr: listen,
                        reason: e.to_string(),
                    })?;
            let local = connection
                .get_addr()
                .get_socketaddr()
                .map_err(|e| SipError::Listen {
                    addr: listen,
                    reason: e.to_string(),
                })?;
            transport.add_transport(connection.into());
            if tcp {
                let listener = TcpListenerConnection::new(local, None).await.map_err(|e| {
                    SipError::Listen {
                        addr: local,
                        reason: e.to_string(),
                    }
                })?;
                transport.add_transport(listener.into());
            }
            // Call-IDs name the box (`<uuid>@<its address>`), not rsipstack's default domain.
            let call_id_host = if local.ip().is_unspecified() {
                "callbox".to_string()
            } else {
                local.ip().to_string()
            };
            let endpoint = EndpointBuilder::new()
                .with_cancel_token(cancel.clone())
                .with_transport_layer(transport)
                .with_user_agent(USER_AGENT)
                .with_option(EndpointOption {
                    callid_suffix: Some(call_id_host),
                    t1: options.t1,
                    t1x64: options.t1 * 64,
                    ..EndpointOption::default()
                })
                .build();
            let incoming = endpoint
                .incoming_transactions()
                .map_err(|e| SipError::Listen {
                    addr: listen,
                    reason: e.to_string(),
                })?;
            let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
            let (state_sender, state_receiver) = dialogs.new_dialog_state_channel();
            let agent = Arc::new(Agent {
                options: SipOptions {
                    listen: local,
                    ..options
                },
                dialogs,
                state_sender,
                routes: Mutex::new(HashMap::new()),
                call_sender,
                active: active.clone(),
                missed: AtomicU64::new(0),
            });
            let serve_cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = endpoint.serve() => {}
                    _ = serve_cancel.cancelled() => {}
                }
            });
            tokio::spawn(route_states(agent.clone(), state_receiver));
            tokio::spawn(accept_requests(agent.clone(), incoming));
            let registration = agent.options.registration.clone().map(|options| {
                let (sender, state) = watch::channel(RegistrationState::Registering);
                let stop = CancellationToken::new();
                let task = tokio::spawn(keep_registered(
                    agent.dialogs.endpoint.clone(),
                    agent.registered_contact(),
                    options,
                    sender,
                    stop.clone(),
                ));
                Registering { state, stop, task }
            });
            Ok::<_, SipError>((agent, registration))
        })?;
        let local = agent.options.listen;
        tracing::info!(%local, "SIP user agent listening");
        Ok(SipUa {
            runtime: Some(runtime),
            cancel,
            calls,
            local,
            active,
            agent,
            registration,
        })
    }

    /// How the registration with the PBX stands (`None` without a registrar).
    pub fn registration(&self) -> Option<RegistrationState> {
        self.registration.as_ref().map(|r| r.state.borrow().clone())
    }

    /// Waits up to `timeout` for a registration state `wanted` accepts; returns the last state
    /// seen (`None` without a registrar).
    pub fn wait_registration(
        &self,
        timeout: Duration,
        wanted: impl Fn(&RegistrationState) -> bool,
    ) -> Option<RegistrationState> {
        let registering = self.registration.as_ref()?;
        let runtime = self.runtime.as_ref()?;
        let mut state = registering.state.clone();
        runtime.block_on(async {
            let _ = tokio::time::timeout(timeout, state.wait_for(|s| wanted(s))).await;
        });
        let last = state.borrow().clone();
        Some(last)
    }

    /// Places a call to `target` (a number, sent to the PBX, or a `sip:` URI) and waits for
    /// how it went.
    pub fn dial(&self, target: &str, options: DialOptions) -> Result<Dialed, DialError> {
        let runtime = self.runtime.as_ref().ok_or(DialError::Stopped)?;
        let agent = self.agent.clone();
        let target = target.to_string();
        runtime
            .block_on(runtime.spawn(async move { outbound::dial(agent, &target, options).await }))
            .map_err(|_| DialError::Stopped)?
    }

    /// Where the user agent listens (the port is the real one when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next call the box answered, waiting at most `timeout`.
    pub fn next_call(&self, timeout: Duration) -> Option<IncomingCall> {
        self.calls.recv_timeout(timeout).ok()
    }

    pub fn active_calls(&self) -> u32 {
        self.active.load(Ordering::SeqCst)
    }

    /// What the user agent holds now: all back to zero once its calls are over (finished
    /// transactions after 64 × T1), however many calls came and went.
    pub fn stats(&self) -> SipStats {
        let transactions = self.agent.dialogs.endpoint.get_stats();
        SipStats {
            active_calls: self.active_calls(),
            dialogs: self.agent.dialogs.len(),
            routes: self.agent.routes.lock().map_or(0, |routes| routes.len()),
            running_transactions: transactions.running_transactions,
            finished_transactions: transactions.finished_transactions,
            waiting_ack: transactions.waiting_ack,
            missed_calls: self.agent.missed.load(Ordering::SeqCst),
        }
    }
}

/// The user agent's tables and counts, from [`SipUa::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SipStats {
    pub active_calls: u32,
    /// Dialogs rsipstack keeps.
    pub dialogs: usize,
    /// Calls whose dialog states are routed to their signalling task.
    pub routes: usize,
    pub running_transactions: usize,
    /// Transactions kept after they ended, to answer retransmissions (for 64 × T1).
    pub finished_transactions: usize,
    /// 2xx answers waiting for their ACK.
    pub waiting_ack: usize,
    /// Calls the caller gave up on (CANCEL) while the box let them ring.
    pub missed_calls: u64,
}

impl SipStats {
    /// Nothing held: no call, dialog, route or transaction left.
    pub fn is_idle(&self) -> bool {
        self.active_calls == 0
            && self.dialogs == 0
            && self.routes == 0
            && self.running_transactions == 0
            && self.finished_transactions == 0
            && self.waiting_ack == 0
    }
}

impl Drop for SipUa {
    fn drop(&mut self) {
        // Withdrawn from the PBX first (Expires 0), while the transport is still up.
        if let (Some(registering), Some(runtime)) = (self.registration.take(), &self.runtime) {
            registering.stop.cancel();
            let task = registering.task;
            runtime.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
            });
        }
        self.cancel.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// What the user agent's tasks share.
pub(super) struct Agent {
    pub(super) options: SipOptions,
    pub(super) dialogs: Arc<DialogLayer>,
    state_sender: DialogStateSender,
    /// Each call's task receives its dialog's state changes through its route.
    routes: Mutex<HashMap<DialogId, async_mpsc::UnboundedSender<DialogState>>>,
    call_sender: mpsc::Sender<IncomingCall>,
    pub(super) active: Arc<AtomicU32>,
    /// Calls the caller gave up on while they rang.
    missed: AtomicU64,
}

impl Agent {
    pub(super) fn contact(&self) -> rsipstack::sip::Uri {
        let text = format!(
            "sip:{}@{}{}",
            self.options.user,
            self.options.listen,
            self.transport_param()
        );
        rsipstack::sip::Uri::try_from(text.as_str()).unwrap_or_default()
    }

    /// The Contact to register: the listening address, unless it is a wildcard (then rsipstack
    /// takes the address the REGISTER leaves from).
    fn registered_contact(&self) -> Option<rsipstack::sip::Uri> {
        (!self.options.listen.ip().is_unspecified()).then(|| self.contact())
    }

    /// The URI parameter that sends requests over the configured transport.
    pub(super) fn transport_param(&self) -> &'static str {
        transport_param(self.options.transport)
    }

    /// Where a number or URI is reached: [`transfer_uri`], over the box's transport.
    pub(super) fn uri_of(&self, target: &str) -> String {
        let uri = transfer_uri(target, &self.domain());
        if uri.contains(";transport=") {
            uri
        } else {
            format!("{uri}{}", self.transport_param())
        }
    }

    pub(super) fn media_ip(&self) -> IpAddr {
        self.options.listen.ip()
    }

    /// Where numbers go: the PBX, else the registrar, else the box's own address.
    pub(super) fn domain(&self) -> String {
        self.options
            .pbx
            .clone()
            .or_else(|| {
                self.options
                    .registration
                    .as_ref()
                    .and_then(|r| r.domain().ok())
            })
            .unwrap_or_else(|| self.options.listen.ip().to_string())
    }
}

fn dialog_id(state: &DialogState) -> &DialogId {
    match state {
        DialogState::Calling(id)
        | DialogState::Trying(id)
        | DialogState::Early(id, _)
        | DialogState::WaitAck(id, _)
        | DialogState::Confirmed(id, _)
        | DialogState::Updated(id, _, _)
        | DialogState::Publish(id, _, _)
        | DialogState::Notify(id, _, _)
        | DialogState::Refer(id, _, _)
        | DialogState::Message(id, _, _)
        | DialogState::Info(id, _, _)
        | DialogState::Options(id, _, _)
        | DialogState::Terminated(id, _) => id,
    }
}

async fn route_states(agent: Arc<Agent>, mut states: DialogStateReceiver) {
    while let Some(state) = states.recv().await {
        let id = dialog_id(&state).clone();
        let terminated = matches!(state, DialogState::Terminated(..));
        let route = agent
            .routes
            .lock()
            .ok()
            .and_then(|routes| routes.get(&id).cloned());
        if let Some(route) = route {
            let _ = route.send(state);
        }
        if terminated {
            agent.dialogs.remove_dialog(&id);
            if let Ok(mut routes) = agent.routes.lock() {
                routes.remove(&id);
            }
        }
    }
}

async fn accept_requests(
    agent: Arc<Agent>,
    mut incoming: rsipstack::transaction::TransactionReceiver,
) {
    while let Some(mut tx) = incoming.recv().await {
        let in_dialog = tx
            .original
            .to_header()
            .ok()
            .and_then(|to| to.tag().ok().flatten())
            .is_some();
        if in_dialog {
            match agent.dialogs.match_dialog(&tx) {
                Some(mut dialog) => {
                    tokio::spawn(async move {
                        if let Err(e) = dialog.handle(&mut tx).await {
                            tracing::debug!(error = %e, "in-dialog request failed");
                        }
                    });
                }
                None => {
                    let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
                }
            }
            continue;
        }
        match tx.original.method {
            Method::Invite => {
                let agent = agent.clone();
                tokio::spawn(async move { answer(agent, tx).await });
            }
            Method::Options => {
                let _ = tx.reply(StatusCode::OK).await;
            }
            Method::Ack => {}
            _ => {
                let _ = tx.reply(StatusCode::MethodNotAllowed).await;
            }
        }
    }
}

fn sdp_headers() -> Vec<Header> {
    vec![Header::ContentType("application/sdp".into())]
}

/// The caller's number: the user part of the From URI.
fn caller_of(tx: &Transaction) -> String {
    tx.original
        .from_header()
        .ok()
        .and_then(|from| from.uri().ok())
        .and_then(|uri| uri.auth.map(|auth| auth.user))
        .unwrap_or_default()
}

/// The box's answer to an SDP offer, or the status to refuse it with.
fn answer_offer(
    agent: &Agent,
    body: &[u8],
    port: u16,
    session_id: u64,
    version: u64,
) -> Result<(Negotiated, String), (StatusCode, String)> {
    let text = std::str::from_utf8(body)
        .map_err(|_| (StatusCode::BadRequest, "the SDP is not UTF-8".to_string()))?;
    if text.trim().is_empty() {
        return Err((
            StatusCode::NotAcceptableHere,
            "the INVITE has no SDP offer".to_string(),
        ));
    }
    let offer = sdp::parse(text).map_err(|e| (StatusCode::BadRequest, e.to_string()))?;
    let agreed = offer
        .negotiate(&agent.options.codecs)
        .map_err(|e| match e {
            SdpError::Malformed { .. } | SdpError::TooLarge(_) => {
                (StatusCode::BadRequest, e.to_string())
            }
            _ => (StatusCode::NotAcceptableHere, e.to_string()),
        })?;
    let answer = sdp::write_answer(session_id, version, agent.media_ip(), port, &agreed);
    Ok((agreed, answer))
}

async fn refuse(tx: &mut Transaction, status: StatusCode, reason: &str) {
    tracing::info!(%status, reason, "INVITE refused");
    let warning = Header::Warning(format!("399 callbox \"{}\"", reason.replace('"', "'")).into());
    let _ = tx.reply_with(status, vec![warning], None).await;
}

/// Answers one INVITE and runs its call's signalling until the dialog ends.
async fn answer(agent: Arc<Agent>, mut tx: Transaction) {
    if agent.active.load(Ordering::SeqCst) >= agent.options.max_calls {
        refuse(&mut tx, StatusCode::BusyHere, "all lines busy").await;
        return;
    }
    let sockets = match MediaSockets::bind(agent.media_ip()) {
        Ok(sockets) => sockets,
        Err(e) => {
            tracing::error!(error = %e, "cannot open an RTP port");
            refuse(&mut tx, StatusCode::ServiceUnavailable, "no RTP port").await;
            return;
        }
    };
    let port = sockets.rtp_port();
    let session_id: u64 = rand::random::<u32>().into();
    let (agreed, answer_sdp) = match answer_offer(&agent, tx.original.body(), port, session_id, 1) {
        Ok(answer) => answer,
        Err((status, reason)) => {
            refuse(&mut tx, status, &reason).await;
            return;
        }
    };
    let dialog = match agent.dialogs.get_or_create_server_invite(
        &tx,
        agent.state_sender.clone(),
        None,
        Some(agent.contact()),
    ) {
        Ok(dialog) => dialog,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create the dialog");
            let _ = tx.reply(StatusCode::ServerInternalError).await;
            return;
        }
    };
    let (route, mut states) = async_mpsc::unbounded_channel();
    if let Ok(mut routes) = agent.routes.lock() {
        routes.insert(dialog.id(), route);
    }
    let caller = caller_of(&tx);
    let call_id = dialog.id().call_id.clone();
    let mut transaction_dialog = dialog.clone();
    tokio::spawn(async move {
        if let Err(e) = transaction_dialog.handle(&mut tx).await {
            tracing::debug!(error = %e, "INVITE transaction ended with an error");
        }
    });

    agent.active.fetch_add(1, Ordering::SeqCst);
    let _active = ActiveCall(agent.active.clone());
    for _ in 0..agent.options.answer_after_rings {
        if dialog.ringing(None, None).is_err() {
            return;
        }
        let ring = tokio::time::sleep(agent.options.ring);
        tokio::pin!(ring);
        loop {
            tokio::select! {
                _ = &mut ring => break,
                state = states.recv() => match state {
                    None | Some(DialogState::Terminated(..)) => {
                        tracing::info!("the caller hung up while it rang");
                        agent.missed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let media = match MediaHandle::start(sockets, agreed) {
        Ok(media) => media,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the media loop");
            let _ = dialog.reject(Some(StatusCode::ServiceUnavailable), None);
            return;
        }
    };
    if let Err(e) = dialog.accept(Some(sdp_headers()), Some(answer_sdp.into_bytes())) {
        tracing::warn!(error = %e, "cannot answer the call");
        return;
    }
    tracing::info!(codec = agreed.codec.encoding(), "call answered");
    let (line, call) = CallSignalling::pair(dialog.clone(), media, session_id, port, agent.clone());
    let offered = agent.call_sender.send(IncomingCall {
        line,
        caller,
        call_id,
    });
    if let Err(unanswered) = offered {
        // Nobody takes calls any more (the box is shutting down).
        drop(unanswered);
        let _ = dialog.bye().await;
        return;
    }
    call.run(states).await;
}

/// The address to listen on with TCP (and UDP) too: a port of 0 becomes one that is free for
/// both, since rsipstack's TCP listener binds only once the endpoint serves.
fn tcp_port_for(listen: SocketAddr) -> Result<SocketAddr, SipError> {
    let failed = |e: std::io::Error| SipError::Listen {
        addr: listen,
        reason: e.to_string(),
    };
    if listen.port() != 0 {
        std::net::TcpListener::bind(listen).map_err(failed)?;
        return Ok(listen);
    }
    let mut last = None;
    for _ in 0..20 {
        let tcp = std::net::TcpListener::bind(listen).map_err(failed)?;
        let addr = tcp.local_addr().map_err(failed)?;
        match std::net::UdpSocket::bind(addr) {
            Ok(_) => return Ok(addr),
            Err(e) => last = Some(e),
        }
    }
    Err(failed(last.unwrap_or_else(|| {
        std::io::Error::other("no port free for both TCP and UDP")
    })))
}

/// The URI parameter that sends requests over `transport` (none for UDP, the default).
fn transport_param(transport: SipTransport) -> &'static str {
    match transport {
        SipTransport::Udp => "",
        SipTransport::Tcp => ";transport=tcp",
        SipTransport::Tls => ";transport=tls",
    }
}

/// Counts a call as active until dropped.
pub(super) struct ActiveCall(pub(super) Arc<AtomicU32>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One answered call's signalling.
pub(super) struct CallSignalling {
    dialog: InviteDialog,
    control: MediaControl,
    commands: async_mpsc::UnboundedReceiver<CallCommand>,
    session_id: u64,
    version: u64,
    port: u16,
    agent: Arc<Agent>,
}

/// A transfer waiting for the NOTIFY that tells how it went.
struct PendingTransfer {
    done: mpsc::Sender<TransferOutcome>,
    deadline: tokio::time::Instant,
}

impl CallSignalling {
    /// An answered call: the line the application gets, and the signalling that serves it.
    pub(super) fn pair(
        dialog: InviteDialog,
        media: MediaHandle,
        session_id: u64,
        port: u16,
        agent: Arc<Agent>,
    ) -> (SipLine, CallSignalling) {
        let control = media.control();
        let (sender, commands) = async_mpsc::unbounded_channel();
        let call = CallSignalling {
            dialog,
            control,
            commands,
            session_id,
            version: 1,
            port,
            agent,
        };
        (SipLine::new(media, sender), call)
    }

    pub(super) async fn run(mut self, mut states: async_mpsc::UnboundedReceiver<DialogState>) {
        let mut transfer: Option<PendingTransfer> = None;
        loop {
            let transfer_deadline = transfer
                .as_ref()
                .map(|t| t.deadline)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                state = states.recv() => {
                    let Some(state) = state else { break };
                    match state {
                        DialogState::Terminated(_, reason) => {
                            tracing::info!(reason = ?reason, "call ended");
                            if let Some(t) = transfer.take() {
                                // The transferee left after the transfer: it went through.
                                let _ = t.done.send(match reason {
                                    TerminatedReason::UacBye => TransferOutcome::Connected,
                                    _ => TransferOutcome::Failed,
                                });
                            }
                            self.control.peer_hung_up();
                            break;
                        }
                        DialogState::Updated(_, request, handle) => self.reinvite(&request, handle).await,
                        DialogState::Info(_, request, handle) => {
                            if let Some(key) = info_key(request.body()) {
                                self.control.press(key);
                            }
                            let _ = handle.reply(StatusCode::OK).await;
                        }
                        DialogState::Options(_, _, handle) => {
                            let _ = handle.reply(StatusCode::OK).await;
                        }
                        DialogState::Notify(_, request, handle) => {
                            let _ = handle.reply(StatusCode::OK).await;
                            if let Some(status) = sipfrag_status(request.body()) {
                                if status >= 200 {
                                    if let Some(t) = transfer.take() {
                                        let connected = (200..300).contains(&status);
                                        let _ = t.done.send(if connected { TransferOutcome::Connected } else { TransferOutcome::Failed });
                                        if connected {
                                            let _ = self.dialog.bye().await;
                                            self.control.peer_hung_up();
                                            break;
                                        }
                                    }
                                }
                            }
                        }
                        DialogState::Refer(_, _, handle) | DialogState::Message(_, _, handle) | DialogState::Publish(_, _, handle) => {
                            let _ = handle.reply(StatusCode::NotImplemented).await;
                        }
                        _ => {}
                    }
                }
                command = self.commands.recv() => {
                    match command {
                        None => {
                            // The line is gone without a word: end the call.
                            let _ = self.dialog.bye().await;
                            break;
                        }
                        Some(CallCommand::HangUp { done }) => {
                            if let Err(e) = self.dialog.bye().await {
                                tracing::warn!(error = %e, "BYE failed");
                            }
                            let _ = done.send(());
                            break;
                        }
                        Some(CallCommand::Dial { target, options, done }) => {
                            // The second call runs on its own; this call's signalling goes on
                            // (the caller may hang up while the human's phone rings).
                            let agent = self.agent.clone();
                            tokio::spawn(async move {
                                let _ = done.send(outbound::dial(agent, &target, options).await);
                            });
                        }
                        Some(CallCommand::Transfer { target, done }) => {
                            match self.refer(&target).await {
                                Ok(()) => transfer = Some(PendingTransfer {
                                    done,
                                    deadline: tokio::time::Instant::now() + Duration::from_secs(40),
                                }),
                                Err(reason) => {
                                    tracing::info!(reason, "transfer refused");
                                    let _ = done.send(TransferOutcome::Failed);
                                }
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(transfer_deadline), if transfer.is_some() => {
                    if let Some(t) = transfer.take() {
                        tracing::info!("no answer from the transfer target in time");
                        let _ = t.done.send(TransferOutcome::Failed);
                    }
                }
            }
        }
        self.agent.dialogs.remove_dialog(&self.dialog.id());
    }

    /// A re-INVITE: hold, resume, or a new codec or address.
    async fn reinvite(
        &mut self,
        request: &rsipstack::sip::Request,
        handle: rsipstack::dialog::dialog::TransactionHandle,
    ) {
        self.version += 1;
        match answer_offer(
            &self.agent,
            request.body(),
            self.port,
            self.session_id,
            self.version,
        ) {
            Ok((agreed, answer)) => {
                tracing::info!(direction = ?agreed.direction, codec = agreed.codec.encoding(), "session changed");
                self.control.update(agreed);
                let _ = handle
                    .respond(
                        StatusCode::OK,
                        Some(sdp_headers()),
                        Some(answer.into_bytes()),
                    )
                    .await;
            }
            Err((status, reason)) => {
                tracing::info!(%status, reason, "re-INVITE refused");
                let _ = handle.reply(status).await;
            }
        }
    }

    /// Sends REFER; Ok when the peer accepted to try it.
    async fn refer(&self, target: &str) -> Result<(), String> {
        let uri = self.agent.uri_of(target);
        let uri = rsipstack::sip::Uri::try_from(uri.as_str())
            .map_err(|e| format!("bad transfer target: {e}"))?;
        match self.dialog.refer(uri, None, None).await {
            Ok(Some(response))
                if response.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful =>
            {
                Ok(())
            }
            Ok(Some(response)) => Err(format!("REFER answered {}", response.status_code)),
            Ok(None) => Err("no answer to REFER".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A transfer target as a SIP URI: a URI stays as it is; a number goes to `domain` (the PBX).
pub(super) fn transfer_uri(target: &str, domain: &str) -> String {
    if target.starts_with("sip:") || target.starts_with("sips:") {
        return target.to_string();
    }
    let number: String = target
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '+' || *c == '*' || *c == '#')
        .collect();
    // A named extension ("frontdesk") is dialled by its name; a number loses its punctuation.
    let user = if number.chars().any(|c| c.is_ascii_digit()) {
        number
    } else {
        target.trim().to_string()
    };
    format!("sip:{user}@{domain}")
}

/// The key of a SIP INFO DTMF body (`application/dtmf-relay`: "Signal=5\r\nDuration=160").
fn info_key(body: &[u8]) -> Option<char> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("signal") {
            return None;
        }
        let key = value.trim().chars().next()?.to_ascii_uppercase();
        matches!(key, '0'..='9' | '*' | '#' | 'A'..='D').then_some(key)
    })
}

/// The status code of a `message/sipfrag` body ("SIP/2.0 200 OK").
fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SipConfig;

    fn sip_config(dir: &std::path::Path) -> SipConfig {
        let password_file = dir.join("sip-password");
        std::fs::write(&password_file, "s3cret\n").unwrap();
        SipConfig {
            listen: "127.0.0.1:5070".parse().unwrap(),
            transport: SipTransport::Udp,
            max_calls: 2,
            answer_after_rings: 3,
            registrar: Some("pbx.local:5060".into()),
            user: Some("201".into()),
            password_file: Some(password_file),
            tls_ca: None,
        }
    }

    #[test]
    fn the_sip_section_becomes_the_user_agents_options() {
        let dir = tempfile::tempdir().unwrap();
        let options = SipOptions::from_config(&sip_config(dir.path())).unwrap();
        assert_eq!(options.user, "201");
        assert_eq!((options.max_calls, options.answer_after_rings), (2, 3));
        let registration = options.registration.expect("a registrar was configured");
        assert_eq!(registration.registrar, "pbx.local:5060");
        assert_eq!(registration.user, "201");
        assert_eq!(
            registration.password, "s3cret",
            "the newline is not part of it"
        );
    }

    #[test]
    fn a_bad_sip_section_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = sip_config(dir.path());
        config.password_file = Some(dir.path().join("missing"));
        let error = SipOptions::from_config(&config).err().unwrap().to_string();
        assert!(error.contains("missing"), "{error}");
        let mut config = sip_config(dir.path());
        config.registrar = Some("sip:201@pbx".into());
        assert!(matches!(
            SipOptions::from_config(&config),
            Err(SipError::Registration(RegistrationError::BadRegistrar(_)))
        ));
        let mut config = sip_config(dir.path());
        config.transport = SipTransport::Tls;
        config.tls_ca = Some(dir.path().join("no-ca.pem"));
        let error = SipOptions::from_config(&config).err().unwrap().to_string();
        assert!(
            error.contains("CA file") && error.contains("no-ca.pem"),
            "{error}"
        );
        config.tls_ca = None;
        config.transport = SipTransport::Tcp;
        let options = SipOptions::from_config(&config).expect("tcp is supported");
        assert_eq!(options.transport, SipTransport::Tcp);
    }

    #[test]
    fn info_bodies_give_their_key() {
        assert_eq!(info_key(b"Signal=5\r\nDuration=160\r\n"), Some('5'));
        assert_eq!(info_key(b"signal = #\r\n"), Some('#'));
        assert_eq!(info_key(b"Signal=x\r\n"), None);
        assert_eq!(info_key(b"Duration=160"), None);
        assert_eq!(info_key(&[0xFF, 0xFE]), None);
    }

    #[test]
    fn sipfrag_status_lines_are_read() {
        assert_eq!(sipfrag_status(b"SIP/2.0 200 OK\r\n"), Some(200));
        assert_eq!(sipfrag_status(b"SIP/2.0 486 Busy Here"), Some(486));
        assert_eq!(sipfrag_status(b"garbage"), None);
    }

    #[test]
    fn transfer_targets_become_sip_uris() {
        assert_eq!(
            transfer_uri("sip:frontdesk@pbx.local", "10.0.0.5"),
            "sip:frontdesk@pbx.local"
        );
        assert_eq!(
            transfer_uri("+1 (555) 010-2000", "10.0.0.5:5080"),
            "sip:+15550102000@10.0.0.5:5080"
        );
        assert_eq!(
            transfer_uri("frontdesk", "10.0.0.5"),
            "sip:frontdesk@10.0.0.5"
        );
    }
}
