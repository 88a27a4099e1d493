//! The sync task against a real Mosquitto broker started by the test on a free port: summaries
//! written while the broker is down all arrive once it is up, a broker restart and a SIGKILLed
//! box mid-drain lose nothing (duplicates are counted), and TLS with client certificates works
//! while a wrong certificate is refused with a clear error.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callbox::config::Config;
use callbox::store::{OpenMode, Store};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

mod sync_support;
use sync_support::*;

/// The CRM's side: a persistent-session subscriber counting every summary id it receives.
struct Subscriber {
    received: Arc<Mutex<HashMap<String, u32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    fn start(port: u16) -> Subscriber {
        let received = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicBool::new(false));
        let mut options = MqttOptions::new("crm-test", "127.0.0.1", port);
        options.set_clean_session(false);
        options.set_max_packet_size(4 << 20, 4 << 20);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(options, 64);
        client
            .subscribe("dt/callbox/+/+/summary", QoS::AtLeastOnce)
            .unwrap();
        let thread = {
            let received = received.clone();
            let stop = stop.clone();
            let subscribed = subscribed.clone();
            std::thread::spawn(move || {
                for event in connection.iter() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match event {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subscribed.store(true, Ordering::SeqCst)
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let record: serde_json::Value =
                                serde_json::from_slice(&p.payload).expect("summary is JSON");
                            let id = record["id"]
                                .as_str()
                                .expect("summary has an id")
                                .to_string();
                            *received.lock().unwrap().entry(id).or_insert(0) += 1;
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
        };
        wait_until("the subscription", Duration::from_secs(10), || {
            subscribed.load(Ordering::SeqCst)
        });
        Subscriber {
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> HashMap<String, u32> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The thread ends at its next event (keep-alive pings arrive every few seconds).
        drop(self.thread.take());
    }
}

fn resends(config_path: &Path) -> i64 {
    let config = Config::from_file(config_path).unwrap();
    let store = Store::open(&config.store.database_path(), None, OpenMode::Existing).unwrap();
    store
        .recent_outbox(100_000)
        .unwrap()
        .iter()
        .map(|r| (r.attempts - 1).max(0))
        .sum()
}

fn assert_all_arrived(ids: &[String], counts: &HashMap<String, u32>) -> u32 {
    let missing: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} summaries never reached the subscriber, e.g. {:?}",
        missing.len(),
        ids.len(),
        missing.first()
    );
    counts.values().map(|n| n - 1).sum()
}

#[test]
fn summaries_written_while_the_broker_is_down_all_arrive_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), "");
    // The CRM's persistent subscription exists before the outage, as it would in the field.
    broker.start();
    let subscriber = Subscriber::start(broker.port);
    broker.stop();

    let config = write_config(dir.path(), &format!("mqtt://127.0.0.1:{}", broker.port), "");
    let mut sync = start_box(&config, &[]);
    let ids = record_calls(&config, 500);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        sync.try_wait().unwrap().is_none(),
        "the box keeps running while the broker is down:\n{}",
        box_log(&config)
    );
    assert_eq!(
        pending_summaries(&config),
        500,
        "nothing is delivered without a broker"
    );
    assert!(
        box_log(&config).contains("MQTT connection failed"),
        "the outage is logged:\n{}",
        box_log(&config)
    );

    broker.start();
    wait_until("the outbox to drain", Duration::from_secs(120), || {
        pending(&config) == 0
    });
    wait_until(
        "every summary at the subscriber",
        Duration::from_secs(60),
        || ids.iter().all(|id| subscriber.counts().contains_key(id)),
    );
    let duplicates = assert_all_arrived(&ids, &subscriber.counts());
    eprintln!(
        "500 summaries delivered after the outage; duplicates at the subscriber: {duplicates}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &sync.id().to_string()])
        .status();
    let status = sync.wait().unwrap();
    assert!(status.success(), "SIGTERM stops the box cleanly: {status}");
    assert_eq!(pending(&config), 0);
}

#[test]
fn a_broker_restart_and_a_killed_box_mid_drain_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), "");
    broker.start();
    let subscriber = Subscriber::start(broker.port);
    let config = write_config(dir.path(), &format!("mqtt://127.0.0.1:{}", broker.port), "");
    let ids = record_calls(&config, 500);

    // A window of one message makes the drain slow enough to interrupt it twice.
    let mut sync = start_box(&config, &["--window", "1"]);
    wait_until("a third of the drain", Duration::from_secs(60), || {
        pending_summaries(&config) < 350
    });
    broker.stop();
    let during_outage = pending(&config);
    assert!(during_outage > 0, "the broker went down mid-drain");
    std::thread::sleep(Duration::from_millis(800));
    broker.start();

    wait_until("two thirds of the drain", Duration::from_secs(60), || {
        pending_summaries(&config) < 200
    });
    sync.kill().unwrap(); // SIGKILL
    sync.wait().unwrap();
    let after_kill = pending(&config);
    assert!(after_kill > 0, "the box was killed mid-drain");

    let mut sync = start_box(&config, &["--window", "1", "--exit-when-drained"]);
    let status = sync.wait().unwrap();
    assert!(
        status.success(),
        "the restarted box drains and stops: {status}\n{}",
        box_log(&config)
    );
    assert_eq!(pending(&config), 0, "the outbox ends empty");
    wait_until(
        "every summary at the subscriber",
        Duration::from_secs(60),
        || ids.iter().all(|id| subscriber.counts().contains_key(id)),
    );
    let duplicates = assert_all_arrived(&ids, &subscriber.counts());
    let resent = resends(&config);
    eprintln!(
        "broker restarted with {during_outage} pending, box killed with {after_kill} pending: \
         all 500 delivered; duplicates at the subscriber: {duplicates}; resends by the box: {resent}"
    );
}

mod tls {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };

    struct Authority {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Authority {
        fn new(name: &str) -> Authority {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            Authority { cert, key }
        }

        /// Writes `<stem>.crt` and `<stem>.key` signed by this authority.
        fn issue(&self, dir: &Path, stem: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, stem);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        }

        fn write(&self, path: &Path) {
            std::fs::write(path, self.cert.pem()).unwrap();
        }
    }

    struct TlsSetup {
        dir: tempfile::TempDir,
        broker: Broker,
        tls_port: u16,
    }

    fn tls_broker() -> TlsSetup {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        let ca = Authority::new("callbox test fleet CA");
        ca.write(&pki.join("ca.crt"));
        ca.issue(
            &pki,
            "broker",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        ca.issue(&pki, "box-7", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let rogue = Authority::new("someone else's CA");
        rogue.write(&pki.join("rogue-ca.crt"));
        rogue.issue(&pki, "rogue", &[], ExtendedKeyUsagePurpose::ClientAuth);

        let tls_port = free_port();
        let p = pki.display();
        let extra = format!(
            "\nlistener {tls_port} 127.0.0.1\ncafile {p}/ca.crt\ncertfile {p}/broker.crt\n\
             keyfile {p}/broker.key\nrequire_certificate true\n"
        );
        let mut broker = Broker::new(dir.path(), &extra);
        broker.start();
        wait_until("the TLS listener", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
        });
        TlsSetup {
            dir,
            broker,
            tls_port,
        }
    }

    fn tls_config(setup: &TlsSetup, ca: &str, cert: &str) -> PathBuf {
        let p = setup.dir.path().join("pki");
        write_config(
            setup.dir.path(),
            &format!("mqtts://127.0.0.1:{}", setup.tls_port),
            &format!(
                "ca_file = \"{}/{ca}.crt\"\ncert_file = \"{}/{cert}.crt\"\nkey_file = \"{}/{cert}.key\"\n",
                p.display(),
                p.display(),
                p.display()
            ),
        )
    }

    fn run_once(config: &Path) -> (std::process::ExitStatus, String) {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args([
                "--log",
                "stderr",
                "sync",
                "--exit-when-drained",
                "--give-up-after",
                "2",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{}", stderr.lines().last().unwrap_or_default());
        (out.status, stderr)
    }

    #[test]
    fn client_certificates_signed_by_the_fleet_ca_deliver() {
        let setup = tls_broker();
        let subscriber = Subscriber::start(setup.broker.port);
        let config = tls_config(&setup, "ca", "box-7");
        let ids = record_calls(&config, 5);
        let (status, stderr) = run_once(&config);
        assert!(status.success(), "TLS sync failed: {stderr}");
        assert_eq!(pending(&config), 0);
        wait_until("the summaries over TLS", Duration::from_secs(20), || {
            ids.iter().all(|id| subscriber.counts().contains_key(id))
        });
    }

    #[test]
    fn a_wrong_client_certificate_is_refused_with_a_clear_error_and_nothing_is_lost() {
        let setup = tls_broker();
        let config = tls_config(&setup, "ca", "rogue");
        record_calls(&config, 3);
        let (status, stderr) = run_once(&config);
        assert!(!status.success(), "a rogue certificate must not connect");
        assert!(
            stderr.contains("gave up after 2 failed connection attempts")
                && stderr.contains("client certificate"),
            "the error names the client certificate: {stderr}"
        );
        assert_eq!(
            pending_summaries(&config),
            3,
            "the outbox keeps every message"
        );
    }

    #[test]
    fn a_broker_certificate_from_another_ca_is_refused_with_a_clear_error() {
        let setup = tls_broker();
        let config = tls_config(&setup, "rogue-ca", "box-7");
        record_calls(&config, 2);
        let (status, stderr) = run_once(&config);
        assert!(!status.success());
        assert!(
            stderr.contains("not signed by mqtt.ca_file"),
            "the error says the broker's certificate is not trusted: {stderr}"
        );
        assert_eq!(pending_summaries(&config), 2);
    }
}

fn callbox_cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn outbox_status_list_and_retry_for_installers() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), "");
    let config = write_config(dir.path(), &format!("mqtt://127.0.0.1:{}", broker.port), "");
    let ids = record_calls(&config, 2);
    let (ok, out, err) = callbox_cli(&config, &["outbox", "status"]);
    assert!(ok, "{err}");
    assert_eq!(pending_summaries(&config), 2);
    assert!(
        out.contains(&format!("undelivered  {}", pending(&config))),
        "{out}"
    );
    assert!(out.contains("last delivery  never"), "{out}");
    let (_, out, _) = callbox_cli(&config, &["outbox", "list"]);
    assert!(out.contains(&ids[0]) && out.contains(&ids[1]), "{out}");
    assert!(
        out.contains("pending") && !out.contains("appointment"),
        "ids, never content: {out}"
    );

    broker.start();
    let (ok, _, err) = callbox_cli(&config, &["sync", "--exit-when-drained"]);
    assert!(ok, "{err}");
    let (_, out, _) = callbox_cli(&config, &["outbox", "status"]);
    assert!(out.contains("undelivered  0"), "{out}");
    let (ok, out, err) = callbox_cli(&config, &["outbox", "retry", &ids[1]]);
    assert!(ok, "{err}");
    assert!(out.contains("queued again"), "{out}");
    assert_eq!(pending(&config), 1);
    let (ok, _, err) = callbox_cli(&config, &["outbox", "retry", "no-such-id"]);
    assert!(!ok);
    assert!(
        err.contains("outbox message no-such-id does not exist"),
        "{err}"
    );
}

#[test]
fn doctor_reads_the_tls_files_as_the_sync_task_would() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
    let config = write_config(
        dir.path(),
        "mqtts://127.0.0.1:8883",
        &format!("ca_file = \"{}/ca.pem\"\n", dir.path().display()),
    );
    let (_, out, err) = callbox_cli(&config, &["doctor"]);
    assert!(
        out.contains("holds no PEM certificate") || err.contains("holds no PEM certificate"),
        "{out}{err}"
    );
}

#[test]
fn backoff_bounds_and_give_up_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("mqtt://127.0.0.1:{}", free_port()), "");
    record_calls(&config, 1);
    let started = std::time::Instant::now();
    let (ok, _, err) = callbox_cli(
        &config,
        &[
            "--log",
            "stderr",
            "sync",
            "--give-up-after",
            "4",
            "--backoff-min-ms",
            "200",
            "--backoff-max-ms",
            "200",
        ],
    );
    let took = started.elapsed();
    assert!(!ok);
    assert!(
        err.contains("gave up after 4 failed connection attempts"),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    // Three waits of exactly 200 ms between four attempts.
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert_eq!(pending_summaries(&config), 1, "nothing is lost");
}
