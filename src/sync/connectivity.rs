//! Connectivity changes from NetworkManager over the D-Bus system bus (zbus): when NetworkManager
//! says the box is connected (`StateChanged` to `NM_STATE_CONNECTED_GLOBAL`), the sync task stops
//! waiting out its backoff and retries at once. Without a system bus or NetworkManager the sync
//! task works as before, and says once that it is not watching. The bus is the one
//! `DBUS_SYSTEM_BUS_ADDRESS` names, else the standard system bus socket.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tracing::{debug, info};

/// NetworkManager's state for "connected, with global connectivity".
pub const NM_STATE_CONNECTED_GLOBAL: u32 = 70;

const NM_NAME: &str = "org.freedesktop.NetworkManager";

#[zbus::proxy(
    interface = "org.freedesktop.NetworkManager",
    default_service = "org.freedesktop.NetworkManager",
    default_path = "/org/freedesktop/NetworkManager"
)]
trait NetworkManager {
    #[zbus(signal)]
    fn state_changed(&self, state: u32) -> zbus::Result<()>;
}

/// Wakes whoever waits on [`Connectivity::connected`] when NetworkManager reports the box online.
#[derive(Debug, Clone, Default)]
pub struct Connectivity {
    online: Arc<Notify>,
}

impl Connectivity {
    /// Starts watching NetworkManager in a task of the current tokio runtime.
    pub fn watch() -> Connectivity {
        let connectivity = Connectivity::default();
        let online = connectivity.online.clone();
        tokio::spawn(async move {
            if let Err(why) = watch_state(&online).await {
                info!("not watching NetworkManager for connectivity changes: {why}");
            }
        });
        connectivity
    }

    /// Completes when NetworkManager next reports the box connected (or already did since the
    /// last call).
    pub async fn connected(&self) {
        self.online.notified().await
    }
}

/// Follows NetworkManager's `StateChanged` signals until the bus goes away; why it cannot.
async fn watch_state(online: &Notify) -> Result<(), String> {
    let bus = zbus::Connection::system()
        .await
        .map_err(|e| format!("no D-Bus system bus ({e})"))?;
    let dbus = zbus::fdo::DBusProxy::new(&bus)
        .await
        .map_err(|e| format!("the system bus does not answer ({e})"))?;
    let name = zbus::names::BusName::try_from(NM_NAME).map_err(|e| e.to_string())?;
    if !dbus.name_has_owner(name).await.unwrap_or(false) {
        return Err("NetworkManager is not on the system bus".into());
    }
    let nm = NetworkManagerProxy::new(&bus)
        .await
        .map_err(|e| format!("cannot reach NetworkManager ({e})"))?;
    let mut changes = nm
        .receive_state_changed()
        .await
        .map_err(|e| format!("cannot follow NetworkManager's state ({e})"))?;
    info!("watching NetworkManager: a connection retries the broker at once");
    while let Some(signal) = changes.next().await {
        match signal.args() {
            Ok(args) if args.state == NM_STATE_CONNECTED_GLOBAL => {
                debug!("NetworkManager: connected");
                online.notify_one();
            }
            Ok(args) => debug!(state = args.state, "NetworkManager state changed"),
            Err(e) => debug!("unreadable NetworkManager signal: {e}"),
        }
    }
    Err("the system bus connection ended".into())
}
