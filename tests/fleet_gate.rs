//! The activation gate across processes: a call run by the call pipeline in this process holds
//! the store directory's lock, so a signed update received meanwhile by the `callbox sync`
//! process (through a real Mosquitto broker) is accepted but becomes active only after the call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use callbox::call::{run_text_call, TextCall, Utterance};
use callbox::config::Config;
use callbox::fleet::manifest::{self, Manifest};
use callbox::fleet::ActivationGate;
use callbox::store::{OpenMode, Store};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

mod sync_support;
use sync_support::*;

const REQ: &str = "cmd/callbox/acme/box-7/req";
const RES: &str = "cmd/callbox/acme/box-7/res";

fn active_version(config: &Config) -> Option<String> {
    let store = Store::open(&config.store.database_path(), None, OpenMode::Existing).unwrap();
    store.active_script().unwrap().map(|s| s.version)
}

#[test]
fn an_update_received_by_the_sync_process_waits_for_a_call_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), "");
    broker.start();
    let key = manifest::generate_key().unwrap();
    let config_path = write_config(
        dir.path(),
        &format!("mqtt://127.0.0.1:{}", broker.port),
        &format!(
            "\n[fleet.keys]\nfleet-a = \"{}\"\n",
            hex::encode(key.verifying_key().to_bytes())
        ),
    );
    record_calls(&config_path, 1); // creates the store
    let config = Config::from_file(&config_path).unwrap();

    // The fleet's side: sends the update, collects its acks.
    let mut options = MqttOptions::new("fleet", "127.0.0.1", broker.port);
    options.set_max_packet_size(4 << 20, 4 << 20);
    let (fleet, mut connection) = Client::new(options, 16);
    fleet.subscribe(RES, QoS::AtLeastOnce).unwrap();
    // The unit publishes …/reported after subscribing to its commands: seeing it means the
    // unit listens.
    fleet
        .subscribe("cfg/callbox/acme/box-7/reported", QoS::AtLeastOnce)
        .unwrap();
    let acks: Arc<Mutex<Vec<Value>>> = Arc::default();
    let subscribed = Arc::new(Mutex::new(0));
    {
        let (acks, subscribed) = (acks.clone(), subscribed.clone());
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => *subscribed.lock().unwrap() += 1,
                    Ok(Event::Incoming(Packet::Publish(p))) => acks
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&p.payload).unwrap()),
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
    }
    wait_until("the ack subscription", Duration::from_secs(10), || {
        *subscribed.lock().unwrap() == 2
    });
    let mut sync = start_box(&config_path, &[]);
    wait_until("the unit listening", Duration::from_secs(20), || {
        acks.lock()
            .unwrap()
            .iter()
            .any(|m| m["schema"] == "callbox.reported/1")
    });

    let body =
        callbox::agent::script::CLINIC.replacen("version = \"1.0.0\"", "version = \"2.0.0\"", 1);
    let m = serde_json::to_vec(&Manifest {
        script: "clinic".into(),
        version: "2.0.0".into(),
        sha256: manifest::script_sha256(body.as_bytes()),
        expires_at: chrono::Utc::now() + chrono::Duration::days(1),
        key_id: "fleet-a".into(),
    })
    .unwrap();
    let update = json!({
        "id": "mid-call", "type": "script.update",
        "manifest": base64::engine::general_purpose::STANDARD.encode(&m),
        "signature": manifest::sign(&key, &m),
        "script": body,
    });
    let status_of = |acks: &[Value]| -> Vec<String> {
        acks.iter()
            .filter(|a| a["command_id"] == "mid-call")
            .map(|a| a["status"].as_str().unwrap().to_string())
            .collect()
    };

    // A real call in this process; while the agent speaks its greeting, the update arrives at
    // the sync process, which must accept it and wait.
    let mut store = Store::open(&config.store.database_path(), None, OpenMode::Existing).unwrap();
    let script = Arc::new(callbox::agent::Script::load("clinic").unwrap());
    let mut during_call = None;
    let mut sent = false;
    run_text_call(
        &config,
        script,
        TextCall {
            started_at: chrono::Utc::now(),
            remote_number: None,
        },
        &["I need a refill".to_string()],
        &mut store,
        &mut |u| {
            if sent || !matches!(u, Utterance::Agent(_)) {
                return;
            }
            sent = true;
            assert!(
                ActivationGate::in_dir(&config.store.dir)
                    .hold_idle()
                    .unwrap()
                    .is_none(),
                "the call holds the gate"
            );
            fleet
                .publish(REQ, QoS::AtLeastOnce, false, update.to_string())
                .unwrap();
            let asked = Instant::now();
            while status_of(&acks.lock().unwrap()) != ["accepted"] {
                assert!(
                    asked.elapsed() < Duration::from_secs(20),
                    "the update was not accepted: {:?}\n{}",
                    acks.lock().unwrap(),
                    box_log(&config_path)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // The sync process polls every half second; give it several chances.
            std::thread::sleep(Duration::from_millis(2000));
            during_call = Some((status_of(&acks.lock().unwrap()), active_version(&config)));
        },
    )
    .unwrap();
    let ended = Instant::now();
    assert_eq!(
        during_call,
        Some((vec!["accepted".to_string()], None)),
        "the call kept its script while it lasted"
    );

    wait_until(
        "the update active after the call",
        Duration::from_secs(20),
        || status_of(&acks.lock().unwrap()) == ["accepted", "succeeded"],
    );
    eprintln!("activated {:?} after the call ended", ended.elapsed());
    assert_eq!(active_version(&config).as_deref(), Some("2.0.0"));

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &sync.id().to_string()])
        .status();
    assert!(sync.wait().unwrap().success());
}
