//! Call events through a real Mosquitto broker: a text call run by the call pipeline while the
//! broker is down queues its events in the outbox; once `callbox sync` runs they reach a
//! subscriber on `dt/callbox/<tenant>/<unit>/event` in order, follow `docs/event.schema.json`,
//! and carry no transcript text, phone number, name or slot value.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callbox::call::{run_text_call, TextCall};
use callbox::config::Config;
use callbox::store::{OpenMode, Store};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

mod sync_support;
use sync_support::*;

fn event_schema() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/event.schema.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("event.schema.json does not compile: {e}"))
}

/// A persistent-session subscriber to every unit's events, so nothing published while it is
/// connected is missed.
fn subscribe(port: u16) -> Arc<Mutex<Vec<(String, Value)>>> {
    let mut options = MqttOptions::new("events-test", "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut connection) = Client::new(options, 64);
    client
        .subscribe("dt/callbox/+/+/event", QoS::AtLeastOnce)
        .unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let subscribed = Arc::new(Mutex::new(false));
    {
        let (received, subscribed) = (received.clone(), subscribed.clone());
        std::thread::spawn(move || {
            let _client = client;
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => *subscribed.lock().unwrap() = true,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let text = String::from_utf8(p.payload.to_vec()).unwrap();
                        let value = serde_json::from_str(&text).expect("an event is JSON");
                        received.lock().unwrap().push((text, value));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
    }
    wait_until("the event subscription", Duration::from_secs(10), || {
        *subscribed.lock().unwrap()
    });
    received
}

#[test]
fn a_call_s_events_reach_a_subscriber_in_order_without_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), "");
    broker.start();
    let received = subscribe(broker.port);
    broker.stop();

    let config_path = write_config(dir.path(), &format!("mqtt://127.0.0.1:{}", broker.port), "");
    let config = Config::from_file(&config_path).unwrap();
    let mut store = Store::open(
        &config.store.database_path(),
        None,
        OpenMode::CreateAndMigrate,
    )
    .unwrap();
    let script = Arc::new(callbox::agent::Script::load("clinic").unwrap());
    // A Wednesday at 10:00 in the unit's time zone (New York): the nurse line takes handoffs.
    let started_at = "2026-11-18T15:00:00Z".parse().unwrap();
    let lines: Vec<String> = [
        "Hi, this is Margarita Villanueva, my number is 555 867 5309",
        "I would like to speak to a nurse about my prescription",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let summary = run_text_call(
        &config,
        script,
        TextCall {
            started_at,
            remote_number: Some("12125550147".into()),
        },
        &lines,
        &mut store,
        &mut |_| {},
    )
    .unwrap();
    drop(store);
    assert!(summary.handoff.is_some(), "the call was handed off");
    assert!(
        pending(&config_path) >= 4,
        "started, handoff, ended and the summary wait in the outbox while the broker is down"
    );

    broker.start();
    let status = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config_path)
        .args(["sync", "--exit-when-drained"])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(pending(&config_path), 0);
    wait_until("the call's events", Duration::from_secs(20), || {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|(_, v)| v["type"] == "call.ended")
    });

    let events = received.lock().unwrap().clone();
    let types: Vec<&str> = events
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["call.started", "call.handoff", "call.ended"]);
    let schema = event_schema();
    for (_, v) in &events {
        let errors: Vec<String> = schema.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{v} breaks the contract: {errors:?}");
        assert_eq!(v["call_id"], summary.call.id.as_str());
        assert_eq!(v["unit"], "box-7");
    }
    let (started, handoff, ended) = (&events[0].1, &events[1].1, &events[2].1);
    assert_eq!(started["at"], "2026-11-18T15:00:00.000Z");
    assert_eq!(started["script"]["name"], "clinic");
    assert_eq!(started["line"], "text");
    assert_eq!(handoff["target"], "nurse_line");
    assert_eq!(handoff["success"], true);
    assert_eq!(ended["outcome"], "transferred");
    assert_eq!(ended["ended_by"], "transfer");
    assert_eq!(ended["turns"], summary.transcript.len());
    assert_eq!(ended["duration_s"], summary.call.duration_s);
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "each event has its own id");

    // No personal data: not the caller's number (in any spelling), name, words or slot values.
    let mut secrets: Vec<String> = vec![
        "2125550147".into(),
        "5550147".into(),
        "8675309".into(),
        "867 5309".into(),
        "Margarita".into(),
        "Villanueva".into(),
        "prescription".into(),
    ];
    secrets.extend(summary.transcript.iter().map(|t| t.text.clone()));
    secrets.extend(
        summary
            .slots
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .filter(|s| s.len() > 3),
    );
    for (text, _) in &events {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "an event carries personal data ({secret:?}): {text}"
            );
        }
    }
}
