//! The retained desired script manifest (`cfg/callbox/<tenant>/<unit>`) through a real Mosquitto
//! broker: one published while the unit is offline is applied when it connects, a bad one is
//! reported rejected and changes nothing, and `…/reported` (retained) says what the unit runs.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use callbox::config::Config;
use callbox::fleet::manifest::{self, Manifest};
use callbox::store::{OpenMode, Store};
use ed25519_dalek::SigningKey;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

mod sync_support;
use sync_support::*;

const DESIRED: &str = "cfg/callbox/acme/box-7";
const REPORTED: &str = "cfg/callbox/acme/box-7/reported";

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

fn clinic_version(version: &str) -> String {
    callbox::agent::script::CLINIC.replacen(
        "version = \"1.0.0\"",
        &format!("version = \"{version}\""),
        1,
    )
}

/// A desired manifest for clinic `version`, signed by `key`.
fn desired(version: &str, key: &SigningKey) -> Vec<u8> {
    let body = clinic_version(version);
    let m = serde_json::to_vec(&Manifest {
        script: "clinic".into(),
        version: version.into(),
        sha256: manifest::script_sha256(body.as_bytes()),
        expires_at: chrono::Utc::now() + chrono::Duration::days(1),
        key_id: "fleet-a".into(),
    })
    .unwrap();
    json!({
        "manifest": base64::engine::general_purpose::STANDARD.encode(&m),
        "signature": manifest::sign(key, &m),
        "script": body,
    })
    .to_string()
    .into_bytes()
}

/// The fleet's side: publishes retained desired manifests and collects `…/reported`.
struct Fleet {
    client: Client,
    reported: Arc<Mutex<Vec<Value>>>,
    puback: Arc<Mutex<u32>>,
}

impl Fleet {
    fn start(port: u16) -> Fleet {
        let mut options = MqttOptions::new("fleet-desired-test", "127.0.0.1", port);
        options.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut connection) = Client::new(options, 64);
        client.subscribe(REPORTED, QoS::AtLeastOnce).unwrap();
        let reported = Arc::new(Mutex::new(Vec::new()));
        let puback = Arc::new(Mutex::new(0));
        let subscribed = Arc::new(Mutex::new(false));
        {
            let (reported, puback, subscribed) =
                (reported.clone(), puback.clone(), subscribed.clone());
            std::thread::spawn(move || {
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            *subscribed.lock().unwrap() = true
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => *puback.lock().unwrap() += 1,
                        Ok(Event::Incoming(Packet::Publish(p))) => reported
                            .lock()
                            .unwrap()
                            .push(serde_json::from_slice(&p.payload).unwrap()),
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            });
        }
        wait_until("the reported subscription", Duration::from_secs(10), || {
            *subscribed.lock().unwrap()
        });
        Fleet {
            client,
            reported,
            puback,
        }
    }

    /// Retains `payload` as the unit's desired manifest, once the broker has it.
    fn set_desired(&self, payload: Vec<u8>) {
        let before = *self.puback.lock().unwrap();
        self.client
            .publish(DESIRED, QoS::AtLeastOnce, true, payload)
            .unwrap();
        wait_until(
            "the broker to take the manifest",
            Duration::from_secs(10),
            || *self.puback.lock().unwrap() > before,
        );
    }

    /// Waits for a reported message whose desired outcome is `status` for `version`.
    fn reported(&self, version: &str, status: &str) -> Value {
        let matches =
            |r: &Value| r["desired"]["version"] == version && r["desired"]["status"] == status;
        wait_until(
            &format!("reported {status} for {version}"),
            Duration::from_secs(30),
            || self.reported.lock().unwrap().iter().any(matches),
        );
        let all = self.reported.lock().unwrap();
        all.iter().rev().find(|r| matches(r)).unwrap().clone()
    }
}

fn store_of(config: &Path) -> Store {
    let config = Config::from_file(config).unwrap();
    Store::open(&config.store.database_path(), None, OpenMode::Existing).unwrap()
}

fn active_version(config: &Path) -> Option<String> {
    store_of(config).active_script().unwrap().map(|s| s.version)
}

fn stop(mut sync: std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &sync.id().to_string()])
        .status();
    assert!(sync.wait().unwrap().success());
}

#[test]
fn a_desired_manifest_is_applied_on_connect_and_a_bad_one_is_reported_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut broker = Broker::new(d, "");
    broker.start();
    let key = manifest::generate_key().unwrap();
    let rogue = manifest::generate_key().unwrap();
    let config = write_config(
        d,
        &format!("mqtt://127.0.0.1:{}", broker.port),
        &format!(
            "\n[fleet.keys]\nfleet-a = \"{}\"\n",
            hex::encode(key.verifying_key().to_bytes())
        ),
    );
    record_calls(&config, 1); // creates the store
    let fleet = Fleet::start(broker.port);
    let (reported_schema, desired_schema) = (
        schema("reported.schema.json"),
        schema("desired.schema.json"),
    );

    // Published while the unit is offline: applied when it connects.
    let v110 = desired("1.1.0", &key);
    assert!(desired_schema.is_valid(&serde_json::from_slice(&v110).unwrap()));
    fleet.set_desired(v110);
    assert_eq!(active_version(&config), None);
    let sync = start_box(&config, &[]);
    let r = fleet.reported("1.1.0", "applied");
    assert_eq!(r["active_script"]["version"], "1.1.0", "{r}");
    assert_eq!(active_version(&config).as_deref(), Some("1.1.0"));
    assert!(reported_schema.is_valid(&r), "{r}");

    // A bad one (signed by a key the box does not trust) is reported and changes nothing.
    fleet.set_desired(desired("1.2.0", &rogue));
    let r = fleet.reported("1.2.0", "rejected");
    assert_eq!(r["desired"]["reason"], "bad_signature", "{r}");
    assert_eq!(r["active_script"]["version"], "1.1.0", "{r}");
    assert!(reported_schema.is_valid(&r), "{r}");
    assert_eq!(active_version(&config).as_deref(), Some("1.1.0"));

    // Not JSON at all: rejected as malformed, still nothing changes.
    fleet.set_desired(b"{nope".to_vec());
    wait_until(
        "the malformed manifest reported",
        Duration::from_secs(20),
        || {
            fleet
                .reported
                .lock()
                .unwrap()
                .iter()
                .any(|r| r["desired"]["reason"] == "malformed")
        },
    );
    stop(sync);
    assert_eq!(active_version(&config).as_deref(), Some("1.1.0"));

    // A newer one while the unit is offline: it catches up on its next connection.
    fleet.set_desired(desired("1.3.0", &key));
    let sync = start_box(&config, &[]);
    let r = fleet.reported("1.3.0", "applied");
    assert_eq!(r["active_script"]["version"], "1.3.0", "{r}");
    assert_eq!(active_version(&config).as_deref(), Some("1.3.0"));
    stop(sync);

    // Reconnecting with the same retained manifest finds it applied; nothing is rejected again.
    let before = fleet.reported.lock().unwrap().len();
    let sync = start_box(&config, &[]);
    wait_until("a fresh report", Duration::from_secs(20), || {
        fleet.reported.lock().unwrap()[before..]
            .iter()
            .any(|r| r["desired"]["status"] == "applied" && r["desired"]["version"] == "1.3.0")
    });
    stop(sync);

    // Verified while a call (held here, another process) keeps the gate; the unit stops before
    // the call ends. On its next connection the stored script becomes active, not "not newer".
    let gate =
        callbox::fleet::ActivationGate::in_dir(&Config::from_file(&config).unwrap().store.dir);
    let call = gate.call_started().unwrap();
    fleet.set_desired(desired("1.4.0", &key));
    let sync = start_box(&config, &[]);
    fleet.reported("1.4.0", "pending");
    stop(sync);
    drop(call);
    assert_eq!(active_version(&config).as_deref(), Some("1.3.0"));
    let sync = start_box(&config, &[]);
    let r = fleet.reported("1.4.0", "applied");
    assert!(reported_schema.is_valid(&r), "{r}");
    stop(sync);
    assert_eq!(active_version(&config).as_deref(), Some("1.4.0"));

    let rejects: Vec<String> = store_of(&config)
        .recent_audit(100)
        .unwrap()
        .into_iter()
        .filter(|(action, _)| action == "script.reject")
        .map(|(_, detail)| detail)
        .collect();
    assert_eq!(
        rejects.len(),
        2,
        "the forged and the malformed one: {rejects:?}"
    );
    assert!(
        !box_log(&config).contains("panicked"),
        "{}",
        box_log(&config)
    );
}
