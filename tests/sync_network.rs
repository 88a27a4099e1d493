//! NetworkManager connectivity over D-Bus: on a private `dbus-daemon` started by the test, the
//! test serves a NetworkManager object (zbus) and shows that its `StateChanged(70)` makes
//! `callbox sync` retry the broker at once instead of waiting out a 30 s backoff, while another
//! state does not. Without NetworkManager, sync works as before and says so once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod sync_support;
use sync_support::*;

const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

/// A private message bus; its address goes to the box as DBUS_SYSTEM_BUS_ADDRESS.
struct Bus {
    child: Child,
    address: String,
}

impl Bus {
    fn start(dir: &Path) -> Bus {
        assert!(
            Path::new(DBUS_DAEMON).exists(),
            "{DBUS_DAEMON} is missing: .ci/setup installs the dbus package"
        );
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={}/bus.socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                dir.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(DBUS_DAEMON)
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut address = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        assert!(address.starts_with("unix:"), "dbus-daemon said {address:?}");
        Bus {
            child,
            address: address.trim().to_string(),
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in for NetworkManager on the bus: the well-known name, the object, its state.
struct NetworkManager {
    state: u32,
}

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl NetworkManager {
    #[zbus(property)]
    fn state(&self) -> u32 {
        self.state
    }

    #[zbus(signal, name = "StateChanged")]
    async fn signal_state(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        state: u32,
    ) -> zbus::Result<()>;
}

const NM_PATH: &str = "/org/freedesktop/NetworkManager";

/// Serves NetworkManager on `address`; each state sent is emitted as a StateChanged signal.
fn serve_network_manager(address: &str) -> tokio::sync::mpsc::UnboundedSender<u32> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let address = address.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let connection = zbus::connection::Builder::address(address.as_str())
                .unwrap()
                .name("org.freedesktop.NetworkManager")
                .unwrap()
                .serve_at(NM_PATH, NetworkManager { state: 20 })
                .unwrap()
                .build()
                .await
                .unwrap();
            let iface = connection
                .object_server()
                .interface::<_, NetworkManager>(NM_PATH)
                .await
                .unwrap();
            ready_tx.send(()).unwrap();
            while let Some(state) = rx.recv().await {
                iface.get_mut().await.state = state;
                NetworkManager::signal_state(iface.signal_emitter(), state)
                    .await
                    .unwrap();
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("NetworkManager on the bus");
    tx
}

fn start_box_on_bus(config: &Path, bus: &str, extra: &[&str]) -> Child {
    start_box_with_env(config, extra, &[("DBUS_SYSTEM_BUS_ADDRESS", bus)])
}

#[test]
fn network_manager_connected_cuts_the_backoff_short() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(dir.path());
    let network = serve_network_manager(&bus.address);
    let mut broker = Broker::new(dir.path(), "");
    let config = write_config(dir.path(), &format!("mqtt://127.0.0.1:{}", broker.port), "");
    record_calls(&config, 1);

    // The broker is down: the first attempt fails and the box waits 30 s before the next.
    let mut sync = start_box_on_bus(
        &config,
        &bus.address,
        &["--backoff-min-ms", "30000", "--backoff-max-ms", "30000"],
    );
    wait_until(
        "the box to watch NetworkManager and fail once",
        Duration::from_secs(20),
        || {
            let log = box_log(&config);
            log.contains("watching NetworkManager") && log.contains("MQTT connection failed")
        },
    );
    broker.start();

    // A state other than connected changes nothing.
    network.send(40).unwrap(); // NM_STATE_CONNECTING
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !box_log(&config).contains("connected to the MQTT broker"),
        "only a connected state cuts the backoff short:\n{}",
        box_log(&config)
    );

    let signalled = Instant::now();
    network.send(70).unwrap(); // NM_STATE_CONNECTED_GLOBAL
    wait_until("the box to connect", Duration::from_secs(10), || {
        box_log(&config).contains("connected to the MQTT broker")
    });
    let took = signalled.elapsed();
    eprintln!("connected {took:?} after NetworkManager said connected (backoff was 30 s)");
    assert!(took < Duration::from_secs(10));
    wait_until("the outbox to drain", Duration::from_secs(20), || {
        pending(&config) == 0
    });
    let _ = Command::new("kill")
        .args(["-TERM", &sync.id().to_string()])
        .status();
    assert!(sync.wait().unwrap().success());
    assert!(box_log(&config).contains("retrying now"));
}

#[test]
fn without_network_manager_sync_works_as_before_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start(dir.path());
    let mut broker = Broker::new(dir.path(), "");
    broker.start();
    let config = write_config(dir.path(), &format!("mqtt://127.0.0.1:{}", broker.port), "");
    record_calls(&config, 2);

    // A system bus without NetworkManager, then no system bus at all.
    let missing = format!("unix:path={}/no-such-bus", dir.path().display());
    for (address, why) in [
        (
            bus.address.as_str(),
            "NetworkManager is not on the system bus",
        ),
        (missing.as_str(), "no D-Bus system bus"),
    ] {
        let mut sync = start_box_on_bus(&config, address, &["--exit-when-drained"]);
        let status = sync.wait().unwrap();
        let log = box_log(&config);
        assert!(status.success(), "{log}");
        assert_eq!(
            log.matches("not watching NetworkManager").count(),
            1,
            "said once: {log}"
        );
        assert!(log.contains(why), "{log}");
        assert_eq!(pending(&config), 0);
        record_calls(&config, 1);
    }
}
