//! The gateway's part in standby caches (`crate::standby`): a standby for each volume it
//! serves, the logs it keeps for the primaries of other volumes, and the log a takeover
//! applies before the volume is served.

use std::sync::Arc;

use cleave_nbd::BlockDevice;
use cleave_volume::{Durability, Volume};
use tracing::{info, warn};

use crate::appliance::blocking;
use crate::events::EventKind;
use crate::gateway::Gateway;
use crate::standby::log::{is_session, Logs};
use crate::standby::{self, Standby};

/// An unnamed log written within this time may have a record newer than the one read.
const LOG_QUIET: std::time::Duration = std::time::Duration::from_secs(60);

impl standby::Host for Gateway {
    fn serves(&self, volume: &str, epoch: u64) -> bool {
        self.get(volume).is_some_and(|v| v.epoch() == epoch)
    }
    fn reaches(&self, gateway: &str) -> bool {
        self.peers.reaches(gateway)
    }
    fn event(&self, happened: standby::Happened, message: String) {
        let kind = match happened {
            standby::Happened::Ready => EventKind::StandbyReady,
            standby::Happened::Lost => EventKind::StandbyLost,
        };
        self.record(kind, message)
    }
}

impl Gateway {
    /// Keeps standby logs in `DIR/standby`, and standbys for the volumes served here.
    pub(crate) fn start_standbys(self: &Arc<Self>) -> std::io::Result<()> {
        let logs = Logs::new(self.data.root.join("standby"))?;
        let _ = self.standbys.logs.set(logs);
        let me: Arc<dyn standby::Host> = self.clone();
        let _ = self.standbys.host.set(Arc::downgrade(&me));
        Ok(())
    }

    /// The standby of `v`, served here (started when first asked for).
    pub(crate) fn standby_for(&self, v: &Volume) -> Option<Arc<Standby>> {
        // A `dispersed` FLUSH reaches the targets anyway: a standby would add nothing.
        if v.config().durability == Durability::Dispersed {
            return None;
        }
        let a = self.appliance.as_ref()?;
        let tls = self.forwarding.get()?.tls();
        let host = self.standbys.host.get()?.clone();
        let name = v.config().name.clone();
        let mut of_volume = self.standbys.of_volume.lock().expect("not poisoned");
        if let Some(s) = of_volume.get(&name).filter(|s| s.epoch() == v.epoch()) {
            return Some(s.clone());
        }
        let s = Standby::start(v.clone(), a.clone(), tls, host);
        of_volume.insert(name, s.clone());
        Some(s)
    }

    /// Starts the standbys of the volumes served here, forgets those of volumes that left,
    /// and removes the logs no primary names any more (called every second; `collect` says
    /// whether to collect logs this time).
    pub(crate) async fn keep_standbys(&self, collect: bool) {
        for v in self.served_volumes() {
            self.standby_for(&v);
        }
        self.standbys.of_volume.lock().expect("not poisoned").retain(|name, s| {
            // A standby whose volume left stops by itself.
            self.get(name).is_some_and(|v| v.epoch() == s.epoch())
        });
        let (Some(a), Some(logs)) = (&self.appliance, self.standbys.logs.get()) else { return };
        if collect {
            let a = a.clone();
            match blocking(move || a.standby_sessions()).await {
                Ok(named) => logs.collect(&named, LOG_QUIET),
                Err(e) => warn!(error = %e, "cannot read which standby logs are named; kept them all"),
            }
        }
    }

    /// The standby of `v` if it has one already.
    pub(crate) fn standby_of(&self, v: &Volume) -> Option<Arc<Standby>> {
        let of_volume = self.standbys.of_volume.lock().expect("not poisoned");
        of_volume.get(&v.config().name).filter(|s| s.epoch() == v.epoch()).cloned()
    }

    /// The log a primary writes here, for the export `SESSION/EPOCH/VOLUME`.
    pub(crate) fn standby_log(&self, export: &str) -> Option<Arc<dyn BlockDevice>> {
        let logs = self.standbys.logs.get()?;
        let mut parts = export.splitn(3, '/');
        let (session, epoch, volume) = (parts.next()?, parts.next()?, parts.next()?);
        if !is_session(session) || epoch.parse::<u64>().is_err() {
            return None;
        }
        let size = self.config_of(volume, |c| c.size)?;
        match logs.create(session, size) {
            Ok(d) => {
                info!(volume, session, "keeping a standby log for the volume's primary");
                Some(Arc::new(d))
            }
            Err(e) => {
                warn!(volume, session, error = %e, "cannot make a standby log");
                None
            }
        }
    }

    /// A volume taken over here: the changes its last primary acknowledged, kept in a log
    /// here, go in before anything else.
    pub(crate) async fn apply_standby_log(&self, v: &Volume) {
        let (Some(a), Some(logs)) = (&self.appliance, self.standbys.logs.get()) else { return };
        let name = &v.config().name;
        match standby::apply_log(a, logs, v).await {
            Ok(Some(n)) => {
                info!(volume = %name, changes = n, "the standby log of the last primary applied");
                self.record(
                    EventKind::StandbyApplied,
                    format!("{name}: {n} changes its last primary acknowledged, kept on this gateway, applied"),
                );
            }
            Ok(None) => {}
            Err(e) => {
                warn!(volume = %name, error = %e, "the standby log of the last primary could not be applied");
                self.record(EventKind::StandbyLost, format!("{name}: its standby log could not be applied: {e}"));
            }
        }
    }
}
