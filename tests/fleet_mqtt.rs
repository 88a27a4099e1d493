//! Fleet commands through a real Mosquitto broker to a running `callbox sync`: a signed script
//! update becomes active; tampered, unsigned, wrongly signed, unknown-key, older, equal,
//! expired and invalid updates are rejected with their reason and change nothing; do-not-call,
//! lead, health and rollback commands work; malformed and unknown commands are rejected. And an
//! update arriving mid-call becomes active only after the call.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use callbox::config::Config;
use callbox::fleet::manifest::{self, Manifest};
use callbox::fleet::{ActivationGate, Fleet, Status};
use callbox::store::{OpenMode, Store};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

mod sync_support;
use sync_support::*;

/// A validator for one of the contract's schemas in `docs/`.
fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    let schema: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
}

fn assert_valid(validator: &jsonschema::Validator, value: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{value} breaks the contract: {errors:?}");
}

const RES: &str = "cmd/callbox/acme/box-7/res";
const REQ: &str = "cmd/callbox/acme/box-7/req";
const REQ_ALL: &str = "cmd/callbox/acme/all/req";
const HEALTH: &str = "dt/callbox/acme/box-7/health";

fn clinic_version(version: &str) -> String {
    callbox::agent::script::CLINIC.replacen(
        "version = \"1.0.0\"",
        &format!("version = \"{version}\""),
        1,
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn manifest_bytes(
    script: &str,
    version: &str,
    body: &str,
    key_id: &str,
    expires_in: chrono::Duration,
) -> Vec<u8> {
    serde_json::to_vec(&Manifest {
        script: script.into(),
        version: version.into(),
        sha256: manifest::script_sha256(body.as_bytes()),
        expires_at: chrono::Utc::now() + expires_in,
        key_id: key_id.into(),
    })
    .unwrap()
}

fn update(id: &str, manifest: &[u8], signature: Option<&str>, body: &str) -> Vec<u8> {
    let mut cmd =
        json!({"id": id, "type": "script.update", "manifest": b64(manifest), "script": body});
    if let Some(sig) = signature {
        cmd["signature"] = json!(sig);
    }
    cmd.to_string().into_bytes()
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "callbox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The fleet's side: publishes commands and collects acks (by command id) and health messages.
struct FleetClient {
    client: Client,
    acks: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    health: Arc<Mutex<Vec<Value>>>,
}

impl FleetClient {
    fn start(port: u16) -> FleetClient {
        let mut options = MqttOptions::new("fleet-test", "127.0.0.1", port);
        options.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut connection) = Client::new(options, 64);
        client.subscribe(RES, QoS::AtLeastOnce).unwrap();
        client.subscribe(HEALTH, QoS::AtLeastOnce).unwrap();
        let acks: Arc<Mutex<HashMap<String, Vec<Value>>>> = Arc::new(Mutex::new(HashMap::new()));
        let health = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(0));
        {
            let (acks, health, subscribed) = (acks.clone(), health.clone(), subscribed.clone());
            std::thread::spawn(move || {
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::SubAck(_))) => *subscribed.lock().unwrap() += 1,
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let v: Value = serde_json::from_slice(&p.payload).unwrap();
                            if p.topic == RES {
                                let id = v["command_id"].as_str().unwrap_or("").to_string();
                                acks.lock().unwrap().entry(id).or_default().push(v);
                            } else {
                                health.lock().unwrap().push(v);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            });
        }
        wait_until("the fleet subscriptions", Duration::from_secs(10), || {
            *subscribed.lock().unwrap() == 2
        });
        FleetClient {
            client,
            acks,
            health,
        }
    }

    fn send(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .unwrap();
    }

    /// Waits for the ack of `id` with a final status (anything but accepted) and returns all of
    /// that command's acks in order.
    fn outcome(&self, id: &str) -> Vec<Value> {
        wait_until(
            &format!("the outcome of {id}"),
            Duration::from_secs(20),
            || {
                self.acks
                    .lock()
                    .unwrap()
                    .get(id)
                    .is_some_and(|a| a.iter().any(|v| v["status"] != "accepted"))
            },
        );
        self.acks.lock().unwrap()[id].clone()
    }

    fn rejected_with(&self, id: &str, reason: &str) {
        let acks = self.outcome(id);
        let last = acks.last().unwrap();
        assert_eq!(last["status"], "rejected", "{id}: {acks:?}");
        assert_eq!(last["reason"], reason, "{id}: {acks:?}");
        assert_eq!(
            acks.len(),
            1,
            "a rejected command is never accepted first: {acks:?}"
        );
    }
}

fn active_version(config: &Path) -> Option<String> {
    let config = Config::from_file(config).unwrap();
    let store = Store::open(&config.store.database_path(), None, OpenMode::Existing).unwrap();
    store.active_script().unwrap().map(|s| s.version)
}

#[test]
fn signed_updates_activate_and_every_bad_command_is_rejected_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut broker = Broker::new(d, "");
    broker.start();

    // The fleet manager's keys, made with the real commands.
    let key_path = d.join("fleet-a.key");
    let config_lines = cli(&[
        "fleet",
        "keygen",
        "--id",
        "fleet-a",
        "--out",
        key_path.to_str().unwrap(),
    ]);
    assert!(
        config_lines.starts_with("[fleet.keys]\nfleet-a = \""),
        "{config_lines}"
    );
    let config = write_config(
        d,
        &format!("mqtt://127.0.0.1:{}", broker.port),
        &format!("\n{config_lines}"),
    );
    let key = manifest::read_secret_key(&key_path).unwrap();
    let rogue = manifest::generate_key().unwrap();
    record_calls(&config, 1); // creates the store

    let fleet = FleetClient::start(broker.port);
    let mut sync = start_box(&config, &[]);
    wait_until("the box online", Duration::from_secs(20), || {
        fleet
            .health
            .lock()
            .unwrap()
            .iter()
            .any(|h| h["status"] == "online")
    });

    // A signed update made with `fleet manifest` and `fleet sign` becomes active.
    let v110 = clinic_version("1.1.0");
    let script_path = d.join("clinic-1.1.0.toml");
    std::fs::write(&script_path, &v110).unwrap();
    let m = cli(&[
        "fleet",
        "manifest",
        script_path.to_str().unwrap(),
        "--key-id",
        "fleet-a",
    ]);
    let manifest_path = d.join("manifest.json");
    std::fs::write(&manifest_path, m.trim_end()).unwrap();
    let sig = cli(&[
        "fleet",
        "sign",
        "--key",
        key_path.to_str().unwrap(),
        manifest_path.to_str().unwrap(),
    ]);
    let good_manifest = std::fs::read(&manifest_path).unwrap();
    fleet.send(REQ, update("u1", &good_manifest, Some(sig.trim()), &v110));
    let acks = fleet.outcome("u1");
    let statuses: Vec<&str> = acks.iter().map(|a| a["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "succeeded"], "{acks:?}");
    assert_eq!(active_version(&config).as_deref(), Some("1.1.0"));

    let sign = |k: &ed25519_dalek::SigningKey, m: &[u8]| manifest::sign(k, m);
    let day = chrono::Duration::days(1);

    // Tampered script: the manifest's hash no longer matches.
    let tampered = v110.replace("Family clinic", "Family  clinic");
    let m120 = manifest_bytes("clinic", "1.2.0", &clinic_version("1.2.0"), "fleet-a", day);
    fleet.send(
        REQ,
        update(
            "tampered-script",
            &m120,
            Some(&sign(&key, &m120)),
            &tampered.replace("1.1.0", "1.2.0"),
        ),
    );
    fleet.rejected_with("tampered-script", "hash_mismatch");

    // Tampered manifest: the signature covered other bytes.
    let mut m_changed = m120.clone();
    let pos = m_changed.windows(5).position(|w| w == b"1.2.0").unwrap();
    m_changed[pos + 2] = b'9';
    fleet.send(
        REQ,
        update(
            "tampered-manifest",
            &m_changed,
            Some(&sign(&key, &m120)),
            &clinic_version("1.9.0"),
        ),
    );
    fleet.rejected_with("tampered-manifest", "bad_signature");

    fleet.send(
        REQ,
        update("unsigned", &m120, None, &clinic_version("1.2.0")),
    );
    fleet.rejected_with("unsigned", "unsigned");

    fleet.send(
        REQ,
        update(
            "wrong-key",
            &m120,
            Some(&sign(&rogue, &m120)),
            &clinic_version("1.2.0"),
        ),
    );
    fleet.rejected_with("wrong-key", "bad_signature");

    let m_unknown = manifest_bytes("clinic", "1.2.0", &clinic_version("1.2.0"), "fleet-z", day);
    fleet.send(
        REQ,
        update(
            "unknown-key",
            &m_unknown,
            Some(&sign(&rogue, &m_unknown)),
            &clinic_version("1.2.0"),
        ),
    );
    fleet.rejected_with("unknown-key", "unknown_key");

    for (id, version) in [("older", "1.0.5"), ("equal", "1.1.0")] {
        let body = clinic_version(version);
        let m = manifest_bytes("clinic", version, &body, "fleet-a", day);
        fleet.send(REQ, update(id, &m, Some(&sign(&key, &m)), &body));
        fleet.rejected_with(id, "not_newer");
    }

    let m_expired = manifest_bytes(
        "clinic",
        "1.2.0",
        &clinic_version("1.2.0"),
        "fleet-a",
        -chrono::Duration::minutes(1),
    );
    fleet.send(
        REQ,
        update(
            "expired",
            &m_expired,
            Some(&sign(&key, &m_expired)),
            &clinic_version("1.2.0"),
        ),
    );
    fleet.rejected_with("expired", "expired");

    let broken = clinic_version("1.2.0").replacen("[business]", "[business]\nno_such_key = 1", 1);
    let m_broken = manifest_bytes("clinic", "1.2.0", &broken, "fleet-a", day);
    fleet.send(
        REQ,
        update(
            "invalid-script",
            &m_broken,
            Some(&sign(&key, &m_broken)),
            &broken,
        ),
    );
    fleet.rejected_with("invalid-script", "invalid_script");

    assert_eq!(
        active_version(&config).as_deref(),
        Some("1.1.0"),
        "no bad update replaced the script"
    );

    fleet.send(REQ, b"{not json".to_vec());
    fleet.rejected_with("", "malformed");
    fleet.send(REQ_ALL, br#"{"id":"x1","type":"reboot.now"}"#.to_vec());
    fleet.rejected_with("x1", "unknown_command");
    fleet.send(REQ, br#"{"id":"x2","type":"dnc.add"}"#.to_vec());
    fleet.rejected_with("x2", "malformed");

    // Do-not-call, leads, health.
    fleet.send(
        REQ_ALL,
        json!({"id":"d1","type":"dnc.add","phone":"+1 555 010 9999"})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(fleet.outcome("d1")[0]["status"], "succeeded");
    fleet.send(
        REQ,
        json!({"id":"l1","type":"lead.push","lead":{"id":"lead-1","phone":"+1 555 010 9999"}})
            .to_string()
            .into_bytes(),
    );
    fleet.rejected_with("l1", "do_not_call");
    fleet.send(
        REQ,
        json!({"id":"d2","type":"dnc.remove","phone":"+1 (555) 010-9999"})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(fleet.outcome("d2")[0]["status"], "succeeded");
    fleet.send(REQ, json!({"id":"l2","type":"lead.push","lead":{"id":"lead-1","phone":"+1 555 010 9999","name":"Ana","reason":"recall"}}).to_string().into_bytes());
    let l2 = fleet.outcome("l2");
    assert_eq!(l2[0]["status"], "succeeded", "{l2:?}");
    fleet.send(
        REQ,
        json!({"id":"d3","type":"dnc.add","phone":"call me maybe"})
            .to_string()
            .into_bytes(),
    );
    fleet.rejected_with("d3", "bad_phone");
    let before = fleet.health.lock().unwrap().len();
    fleet.send(
        REQ,
        json!({"id":"h1","type":"health.request"})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(fleet.outcome("h1")[0]["status"], "succeeded");
    wait_until("a fresh health message", Duration::from_secs(10), || {
        fleet.health.lock().unwrap().len() > before
    });
    let health = fleet.health.lock().unwrap().last().unwrap().clone();
    assert_eq!(health["status"], "online");
    assert_eq!(health["active_script"]["version"], "1.1.0");

    // A second update, then a rollback to the first.
    let v120 = clinic_version("1.2.0");
    let m = manifest_bytes("clinic", "1.2.0", &v120, "fleet-a", day);
    fleet.send(REQ, update("u2", &m, Some(&sign(&key, &m)), &v120));
    assert_eq!(fleet.outcome("u2").last().unwrap()["status"], "succeeded");
    assert_eq!(active_version(&config).as_deref(), Some("1.2.0"));
    fleet.send(
        REQ,
        json!({"id":"r1","type":"script.rollback"})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(fleet.outcome("r1").last().unwrap()["status"], "succeeded");
    assert_eq!(active_version(&config).as_deref(), Some("1.1.0"));

    let _ = Command::new("kill")
        .args(["-TERM", &sync.id().to_string()])
        .status();
    assert!(sync.wait().unwrap().success());

    // Every ack and health message the box sent, and the manifest, follow docs/mqtt.md.
    let (ack_schema, health_schema) = (schema("ack.schema.json"), schema("health.schema.json"));
    for acks in fleet.acks.lock().unwrap().values() {
        for ack in acks {
            assert_valid(&ack_schema, ack);
        }
    }
    wait_until(
        "the offline health message",
        Duration::from_secs(10),
        || {
            fleet
                .health
                .lock()
                .unwrap()
                .last()
                .is_some_and(|h| h["status"] == "offline")
        },
    );
    for health in fleet.health.lock().unwrap().iter() {
        assert_valid(&health_schema, health);
    }
    let manifest: Value = serde_json::from_slice(&good_manifest).unwrap();
    assert_valid(&schema("manifest.schema.json"), &manifest);
    let commands = schema("command.schema.json");
    let u1: Value =
        serde_json::from_slice(&update("u1", &good_manifest, Some(sig.trim()), &v110)).unwrap();
    for command in [
        u1,
        json!({"id":"d1","type":"dnc.add","phone":"+1 555 010 9999"}),
        json!({"id":"l2","type":"lead.push","lead":{"id":"lead-1","phone":"+1 555 010 9999","name":"Ana","reason":"recall"}}),
        json!({"id":"r1","type":"script.rollback"}),
    ] {
        assert_valid(&commands, &command);
    }
    assert!(!commands.is_valid(&json!({"id":"x1","type":"reboot.now"})));

    // What the box stored: the lead, the audit trail.
    let cfg = Config::from_file(&config).unwrap();
    let store = Store::open(&cfg.store.database_path(), None, OpenMode::Existing).unwrap();
    let leads = store.leads_to_dial().unwrap();
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].phone, "15550109999");
    assert!(leads[0].detail.contains("recall"));
    assert!(!store.is_do_not_call("15550109999").unwrap());
    let audit: Vec<String> = store
        .recent_audit(100)
        .unwrap()
        .into_iter()
        .map(|(a, d)| format!("{a} {d}"))
        .collect();
    assert!(
        audit
            .iter()
            .any(|a| a.starts_with("script.activate clinic 1.2.0")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a.starts_with("script.reject expired")),
        "{audit:?}"
    );
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.starts_with("script.reject"))
            .count(),
        9,
        "{audit:?}"
    );
}

#[test]
fn an_update_arriving_mid_call_activates_after_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let key = manifest::generate_key().unwrap();
    let config_path = write_config(
        dir.path(),
        "mqtt://127.0.0.1:1",
        &format!(
            "\n[fleet.keys]\nfleet-a = \"{}\"\n",
            hex::encode(key.verifying_key().to_bytes())
        ),
    );
    let config = Config::from_file(&config_path).unwrap();
    let mut store = Store::open(
        &config.store.database_path(),
        None,
        OpenMode::CreateAndMigrate,
    )
    .unwrap();
    let gate = ActivationGate::in_dir(&config.store.dir);
    let mut fleet = Fleet::new(&config, gate.clone());

    let call = gate.call_started().unwrap();
    let body = clinic_version("2.0.0");
    let m = manifest_bytes(
        "clinic",
        "2.0.0",
        &body,
        "fleet-a",
        chrono::Duration::days(1),
    );
    let handled = fleet
        .handle(
            &mut store,
            &update("mid", &m, Some(&manifest::sign(&key, &m)), &body),
        )
        .unwrap();
    let statuses: Vec<Status> = handled.acks.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [Status::Accepted],
        "only accepted while the call runs"
    );
    assert_eq!(
        store.active_script().unwrap(),
        None,
        "the call keeps its script"
    );
    assert_eq!(fleet.poll_activation(&mut store).unwrap(), None);

    drop(call);
    let ack = fleet
        .poll_activation(&mut store)
        .unwrap()
        .expect("activated after the call");
    assert_eq!(ack.status, Status::Succeeded);
    assert_eq!(ack.command_id.as_deref(), Some("mid"));
    assert_eq!(store.active_script().unwrap().unwrap().version, "2.0.0");
}
