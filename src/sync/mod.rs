//! The sync task: carries the outbox to the MQTT broker, at least once and in order, and keeps
//! the unit's retained health message current. The outbox, not the MQTT client, is the source
//! of truth: a row is marked delivered only on the PUBACK of the very publish that carried it,
//! and every connection starts a fresh client, so whatever was unacknowledged when a connection
//! broke is simply published again from the outbox on the next one (each message keeps its id,
//! so the CRM drops duplicates).
//!
//! One task on a current-thread tokio runtime owns the store; the rumqttc event loop runs in a
//! second task that forwards its events over a channel, so the owner can wait on events, timers
//! and the shutdown signal at once.

pub mod backoff;
pub mod bench;
pub mod connectivity;
pub mod events;
pub mod health;
pub mod tls;
pub mod topics;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{Config, MqttConfig};
use crate::fleet::{ActivationGate, Fleet, FleetError};
use crate::store::{Store, StoreError};

pub const REPORTED_SCHEMA: &str = "callbox.reported/1";

pub use backoff::Backoff;
pub use topics::Topics;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no MQTT broker is configured (set mqtt.broker in the config); summaries stay in the outbox")]
    NoBroker,
    #[error("cannot read mqtt.password_file {}: {source}", path.display())]
    PasswordFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("gave up after {attempts} failed connection attempts; last error: {last}")]
    GaveUp { attempts: u32, last: String },
}

/// How the sync task behaves; the defaults suit the box.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Outbox messages published and not yet acknowledged, at most.
    pub window: usize,
    /// An unacknowledged publish older than this drops the connection; its row is sent again.
    pub ack_timeout: Duration,
    /// How often the retained health message is refreshed.
    pub health_interval: Duration,
    /// How often the outbox is looked at for new rows when nothing else happens.
    pub poll_interval: Duration,
    /// Reconnection backoff bounds (full jitter between zero and the current bound).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Stop (cleanly, health set to offline) once the outbox is empty; for installers and tests.
    pub exit_when_drained: bool,
    /// Stop with an error after this many connection failures in a row.
    pub give_up_after: Option<u32>,
    /// Delivered rows older than this are purged (the config's retention period).
    pub retention: chrono::Duration,
}

impl SyncOptions {
    pub fn from_config(config: &Config) -> SyncOptions {
        SyncOptions {
            window: 32,
            ack_timeout: Duration::from_secs(30),
            health_interval: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            exit_when_drained: false,
            give_up_after: None,
            retention: chrono::Duration::days(i64::from(config.store.retention_days)),
        }
    }
}

/// What a sync run did, reported when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Outbox publishes sent (first sends and resends).
    pub published: u64,
    /// Resends of rows that had been published before (each may reach the CRM twice).
    pub republished: u64,
    /// Rows marked delivered on their PUBACK.
    pub delivered: u64,
    /// Connections established.
    pub connections: u32,
    /// Connection attempts or connections that failed.
    pub connection_failures: u32,
    /// Calls (with their transcripts) purged by retention.
    pub purged_calls: u64,
    /// Delivered rows purged by retention.
    pub purged: u64,
    /// Fleet commands received.
    pub commands: u64,
}

/// A publish handed to the client, in the order the client will send it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Outbox(String),
    Other,
}

/// One MQTT connection and what was sent on it. Dropped whole when the connection breaks.
struct Session {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    driver: tokio::task::JoinHandle<()>,
    /// Publishes handed to the client whose packet id is not yet known (FIFO, as the client sends).
    unsent: VecDeque<Sent>,
    /// Packet id -> what that publish carried, until its PUBACK.
    by_pkid: HashMap<u16, Sent>,
    /// Outbox message id -> when it was handed to the client.
    in_flight: HashMap<String, Instant>,
    connected: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Why the session loop stopped.
enum SessionEnd {
    Broken(String),
    Shutdown,
    Drained,
}

/// The sync task and its state across connections.
pub struct Sync {
    store: Store,
    mqtt: MqttConfig,
    topics: Topics,
    options: SyncOptions,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    password: Option<String>,
    health: health::HealthReporter,
    report: SyncReport,
    /// Acknowledged ids not yet written to the store (written in batches).
    acked: Vec<String>,
    /// Ids acknowledged on this process's watch, so a resend is not counted as a first send.
    acked_ids: HashSet<String>,
    last_sync: Option<String>,
    fleet: Fleet,
}

impl Sync {
    pub fn new(config: &Config, store: Store, options: SyncOptions) -> Result<Sync, SyncError> {
        let mqtt = config.mqtt.clone().ok_or(SyncError::NoBroker)?;
        let tls = if mqtt.tls {
            Some(tls::client_config(&mqtt)?)
        } else {
            None
        };
        let password = match &mqtt.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| SyncError::PasswordFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => None,
        };
        let gate = ActivationGate::in_dir(store.path().parent().unwrap_or(&config.store.dir));
        Ok(Sync {
            store,
            topics: Topics::new(&config.unit.tenant, &config.unit.id),
            health: health::HealthReporter::new(config),
            mqtt,
            options,
            tls,
            password,
            report: SyncReport::default(),
            acked: Vec::new(),
            acked_ids: HashSet::new(),
            last_sync: None,
            fleet: Fleet::new(config, gate),
        })
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    fn mqtt_options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(&self.mqtt.client_id, &self.mqtt.host, self.mqtt.port);
        o.set_keep_alive(Duration::from_secs(u64::from(self.mqtt.keepalive_s)));
        o.set_clean_session(true);
        o.set_max_packet_size(4 << 20, 4 << 20);
        o.set_inflight((self.options.window + 8).min(u16::MAX as usize) as u16);
        o.set_request_channel_capacity(self.options.window + 64);
        o.set_last_will(LastWill::new(
            &self.topics.health,
            self.health.offline_payload(),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(user) = &self.mqtt.username {
            o.set_credentials(user, self.password.clone().unwrap_or_default());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        o
    }

    fn start_session(&self) -> Session {
        let (client, eventloop) = AsyncClient::new(self.mqtt_options(), self.options.window + 64);
        let (tx, events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(eventloop, tx));
        Session {
            client,
            events,
            driver,
            unsent: VecDeque::new(),
            by_pkid: HashMap::new(),
            in_flight: HashMap::new(),
            connected: false,
        }
    }

    /// Runs until `shutdown` completes, the outbox is drained (with `exit_when_drained`), or the
    /// connection failed `give_up_after` times in a row.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<SyncReport, SyncError> {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(self.options.backoff_min, self.options.backoff_max);
        let mut failures_in_a_row = 0u32;
        self.purge()?;
        let network = connectivity::Connectivity::watch();

        loop {
            let mut session = self.start_session();
            let end = self.run_session(&mut session, &mut shutdown).await?;
            let was_connected = session.connected;
            drop(session);
            self.flush_acks()?;
            match end {
                SessionEnd::Shutdown | SessionEnd::Drained => return Ok(self.report),
                SessionEnd::Broken(reason) => {
                    self.report.connection_failures += 1;
                    if was_connected {
                        backoff.reset();
                        failures_in_a_row = 0;
                    }
                    failures_in_a_row += 1;
                    let delay = backoff.next_delay();
                    warn!(
                        broker = %format!("{}:{}", self.mqtt.host, self.mqtt.port),
                        retry_in_ms = delay.as_millis() as u64,
                        "MQTT connection failed: {reason}"
                    );
                    if let Some(limit) = self.options.give_up_after {
                        if failures_in_a_row >= limit {
                            return Err(SyncError::GaveUp {
                                attempts: failures_in_a_row,
                                last: reason,
                            });
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = network.connected() => {
                            info!("the network is connected (NetworkManager): retrying now");
                            backoff.reset();
                        }
                        _ = &mut shutdown => return Ok(self.report),
                    }
                }
            }
        }
    }

    async fn run_session(
        &mut self,
        s: &mut Session,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<SessionEnd, SyncError> {
        let mut tick = tokio::time::interval(self.options.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_health = Instant::now();
        loop {
            tokio::select! {
                event = s.events.recv() => match event {
                    Some(Ok(event)) => {
                        if let Some(end) = self.on_event(s, event)? {
                            return Ok(end);
                        }
                    }
                    Some(Err(e)) => return Ok(SessionEnd::Broken(describe(&e, &self.mqtt))),
                    None => return Ok(SessionEnd::Broken("the MQTT client stopped".into())),
                },
                _ = tick.tick() => {
                    if s.connected {
                        if let Some((id, _)) = s
                            .in_flight
                            .iter()
                            .find(|(_, at)| at.elapsed() > self.options.ack_timeout)
                        {
                            debug!(message = %id, "no PUBACK in time");
                            return Ok(SessionEnd::Broken(format!(
                                "no PUBACK within {} s; reconnecting to send unacknowledged messages again",
                                self.options.ack_timeout.as_secs()
                            )));
                        }
                        self.flush_acks()?;
                        self.refill(s)?;
                        if let Some(ack) = self.fleet.poll_activation(&mut self.store)? {
                            self.publish_ack(s, &ack);
                            self.publish_health(s)?;
                            self.publish_reported(s)?;
                        }
                        if last_health.elapsed() >= self.options.health_interval {
                            last_health = Instant::now();
                            self.publish_health(s)?;
                        }
                        if self.options.exit_when_drained
                            && !self.fleet.has_staged()
                            && s.in_flight.is_empty()
                            && s.unsent.is_empty()
                            && s.by_pkid.is_empty()
                            && self.store.pending_outbox(1)?.is_empty()
                        {
                            self.stop_cleanly(s).await;
                            return Ok(SessionEnd::Drained);
                        }
                    }
                }
                _ = shutdown.as_mut() => {
                    if s.connected {
                        self.stop_cleanly(s).await;
                    }
                    return Ok(SessionEnd::Shutdown);
                }
            }
        }
    }

    fn on_event(&mut self, s: &mut Session, event: Event) -> Result<Option<SessionEnd>, SyncError> {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    return Ok(Some(SessionEnd::Broken(format!(
                        "the broker refused the connection: {:?}",
                        ack.code
                    ))));
                }
                s.connected = true;
                self.report.connections += 1;
                info!(
                    broker = %format!("{}:{}", self.mqtt.host, self.mqtt.port),
                    pending = self.store.outbox_status()?.pending,
                    "connected to the MQTT broker"
                );
                for topic in [
                    &self.topics.request,
                    &self.topics.request_all,
                    &self.topics.desired,
                ] {
                    if s.client
                        .try_subscribe(topic.as_str(), QoS::AtLeastOnce)
                        .is_err()
                    {
                        return Ok(Some(SessionEnd::Broken("the MQTT client stopped".into())));
                    }
                }
                self.publish_health(s)?;
                self.publish_reported(s)?;
                self.refill(s)?;
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == self.topics.desired => {
                let acks = self.fleet.apply_desired(&mut self.store, &p.payload)?;
                for ack in &acks {
                    self.publish_ack(s, ack);
                }
                self.publish_reported(s)?;
                self.publish_health(s)?;
            }
            Event::Incoming(Packet::Publish(p))
                if p.topic == self.topics.request || p.topic == self.topics.request_all =>
            {
                self.report.commands += 1;
                let handled = self.fleet.handle(&mut self.store, &p.payload)?;
                for ack in &handled.acks {
                    self.publish_ack(s, ack);
                }
                if handled.publish_health {
                    self.publish_health(s)?;
                }
                let scripts = |a: &crate::fleet::Ack| {
                    a.kind.as_deref().is_some_and(|k| k.starts_with("script."))
                };
                if handled.acks.iter().any(scripts) {
                    self.publish_reported(s)?;
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let sent = s.unsent.pop_front().unwrap_or(Sent::Other);
                if pkid != 0 {
                    s.by_pkid.insert(pkid, sent);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Sent::Outbox(id)) = s.by_pkid.remove(&ack.pkid) {
                    s.in_flight.remove(&id);
                    self.report.delivered += 1;
                    self.acked_ids.insert(id.clone());
                    self.acked.push(id);
                    if s.in_flight.len() <= self.options.window / 2 {
                        self.flush_acks()?;
                        self.refill(s)?;
                    }
                }
            }
            _ => {}
        }
        Ok(None)
    }

    /// Hands the next undelivered rows to the client, oldest first, up to the window.
    fn refill(&mut self, s: &mut Session) -> Result<(), SyncError> {
        let room = self.options.window.saturating_sub(s.in_flight.len());
        if room == 0 {
            return Ok(());
        }
        let rows = self
            .store
            .pending_outbox(self.options.window + s.in_flight.len())?;
        let fresh: Vec<_> = rows
            .into_iter()
            .filter(|r| !s.in_flight.contains_key(&r.message.message_id))
            .take(room)
            .collect();
        let mut sent_ids = Vec::new();
        for row in fresh {
            let id = row.message.message_id;
            if s.client
                .try_publish(
                    &row.message.topic,
                    QoS::AtLeastOnce,
                    false,
                    row.message.payload,
                )
                .is_err()
            {
                break; // The client's queue is full or closed; the next refill tries again.
            }
            if row.attempts > 0 || self.acked_ids.contains(&id) {
                self.report.republished += 1;
            }
            self.report.published += 1;
            s.unsent.push_back(Sent::Outbox(id.clone()));
            s.in_flight.insert(id.clone(), Instant::now());
            sent_ids.push(id);
        }
        if !sent_ids.is_empty() {
            self.store.note_attempts(&sent_ids)?;
        }
        Ok(())
    }

    fn flush_acks(&mut self) -> Result<(), SyncError> {
        if self.acked.is_empty() {
            return Ok(());
        }
        self.store.mark_delivered_many(&self.acked)?;
        self.acked.clear();
        self.last_sync = Some(crate::store::now_rfc3339());
        Ok(())
    }

    fn publish_health(&mut self, s: &mut Session) -> Result<(), SyncError> {
        let status = self.store.outbox_status()?;
        let active = self.store.active_script()?;
        let payload =
            self.health
                .online_payload(&status, active.as_ref(), self.last_sync.as_deref());
        if s.client
            .try_publish(&self.topics.health, QoS::AtLeastOnce, true, payload)
            .is_ok()
        {
            s.unsent.push_back(Sent::Other);
        }
        Ok(())
    }

    /// Retained on `…/reported`: the active script and what became of the desired manifest.
    fn publish_reported(&mut self, s: &mut Session) -> Result<(), SyncError> {
        let active = self.store.active_script()?;
        let payload = serde_json::json!({
            "schema": REPORTED_SCHEMA,
            "unit": self.fleet.unit(),
            "at": crate::store::now_rfc3339(),
            "active_script": active.map(|a| serde_json::json!({
                "name": a.name,
                "version": a.version,
                "sha256": a.sha256,
            })),
            "desired": self.fleet.desired_outcome(),
        })
        .to_string()
        .into_bytes();
        if s.client
            .try_publish(&self.topics.reported, QoS::AtLeastOnce, true, payload)
            .is_ok()
        {
            s.unsent.push_back(Sent::Other);
        }
        Ok(())
    }

    fn publish_ack(&mut self, s: &mut Session, ack: &crate::fleet::Ack) {
        if crate::fleet::is_desired(ack) {
            return; // The desired manifest's outcome is on …/reported.
        }
        let payload = ack.to_json(self.fleet.unit());
        if s.client
            .try_publish(&self.topics.response, QoS::AtLeastOnce, false, payload)
            .is_ok()
        {
            s.unsent.push_back(Sent::Other);
        } else {
            warn!(command = ?ack.command_id, "the ack could not be queued; the fleet will resend the command");
        }
    }

    /// Says offline on the health topic (the last will only fires on an unclean end) and
    /// disconnects, waiting briefly for the broker to take both.
    async fn stop_cleanly(&mut self, s: &mut Session) {
        let offline = self.health.offline_payload();
        if s.client
            .try_publish(&self.topics.health, QoS::AtLeastOnce, true, offline)
            .is_ok()
        {
            s.unsent.push_back(Sent::Other);
        }
        let _ = s.client.try_disconnect();
        let deadline = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = s.events.recv() => match event {
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                _ = &mut deadline => break,
            }
        }
    }

    fn purge(&mut self) -> Result<(), SyncError> {
        let before = (chrono::Utc::now() - self.options.retention)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let n = self.store.purge_delivered_outbox(&before)?;
        if n > 0 {
            info!(
                rows = n,
                "purged delivered outbox rows past the retention period"
            );
        }
        self.report.purged += n as u64;
        let calls = self.store.purge_calls(&before)?;
        if calls > 0 {
            info!(
                calls,
                "purged calls past the retention period (their summaries were delivered)"
            );
        }
        self.report.purged_calls += calls as u64;
        Ok(())
    }
}

/// Forwards the event loop's events until its connection fails (a new session starts afresh).
async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Result<Event, ConnectionError>>,
) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if tx.send(event).is_err() || failed {
            return;
        }
    }
}

/// A connection error in words an installer can act on.
fn describe(e: &ConnectionError, mqtt: &MqttConfig) -> String {
    let scheme = if mqtt.tls { "mqtts" } else { "mqtt" };
    let target = format!("{scheme}://{}:{}", mqtt.host, mqtt.port);
    let text = e.to_string();
    let hint = if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        " (the broker's certificate is not signed by mqtt.ca_file)"
    } else if text.contains("alert") || text.contains("certificate") {
        " (the broker refused this unit's client certificate: check mqtt.cert_file and mqtt.key_file)"
    } else if matches!(e, ConnectionError::ConnectionRefused(_)) {
        " (check mqtt.username and mqtt.password_file)"
    } else {
        ""
    };
    format!("cannot reach {target}: {text}{hint}")
}
