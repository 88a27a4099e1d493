//! The activation gate between calls and script changes, across processes: an advisory lock
//! (`flock`) on `activation.lock` in the store directory. Each call holds it shared for its
//! duration; activating a script takes it exclusively without waiting, and tries again later
//! while any call — in this process or another — is in progress. So a call always finishes on
//! the script it started with, whichever process runs it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("cannot open the activation lock {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock the activation lock {}: {errno}", path.display())]
    Lock { path: PathBuf, errno: Errno },
}

/// The lock file's name in the store directory.
pub const LOCK_FILE: &str = "activation.lock";

#[derive(Debug, Clone)]
pub struct ActivationGate {
    path: PathBuf,
}

/// Held for the duration of one call (a shared lock on its own open file).
#[derive(Debug)]
pub struct CallInProgress {
    _lock: Flock<File>,
}

/// While held, no call can start: the activation happens between calls.
#[derive(Debug)]
pub struct IdleLine {
    _lock: Flock<File>,
}

impl ActivationGate {
    /// The gate of the store in `dir` (the config's `store.dir`).
    pub fn in_dir(dir: &Path) -> ActivationGate {
        ActivationGate {
            path: dir.join(LOCK_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<File, GateError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.path)
            .map_err(|source| GateError::Open {
                path: self.path.clone(),
                source,
            })
    }

    fn lock(&self, how: FlockArg) -> Result<Option<Flock<File>>, GateError> {
        let mut file = self.open()?;
        loop {
            match Flock::lock(file, how) {
                Ok(lock) => return Ok(Some(lock)),
                Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => {
                    return Err(GateError::Lock {
                        path: self.path.clone(),
                        errno,
                    })
                }
            }
        }
    }

    /// Marks a call as started; waits while a script is being activated at this instant.
    pub fn call_started(&self) -> Result<CallInProgress, GateError> {
        match self.lock(FlockArg::LockShared)? {
            Some(lock) => Ok(CallInProgress { _lock: lock }),
            None => Err(GateError::Lock {
                path: self.path.clone(),
                errno: Errno::EWOULDBLOCK,
            }),
        }
    }

    /// The line held idle, or `None` while a call is in progress.
    pub fn hold_idle(&self) -> Result<Option<IdleLine>, GateError> {
        Ok(self
            .lock(FlockArg::LockExclusiveNonblock)?
            .map(|lock| IdleLine { _lock: lock }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_idle_only_when_no_call_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let gate = ActivationGate::in_dir(dir.path());
        assert!(gate.hold_idle().unwrap().is_some());
        let a = gate.call_started().unwrap();
        let b = gate.clone().call_started().unwrap();
        assert!(gate.hold_idle().unwrap().is_none());
        drop(a);
        assert!(gate.hold_idle().unwrap().is_none());
        drop(b);
        let idle = gate.hold_idle().unwrap();
        assert!(idle.is_some());
        // While the line is held idle no second activation can hold it too.
        assert!(gate.hold_idle().unwrap().is_none());
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let gate = ActivationGate::in_dir(Path::new("/nonexistent/callbox-state"));
        let e = gate.call_started().unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/callbox-state/activation.lock"),
            "{e}"
        );
    }
}
