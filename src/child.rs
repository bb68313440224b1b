//! The command `run` holds a lock for.
//!
//! It starts in a process group of its own, so that a signal reaches everything it started
//! (a shell's children, a build's workers), not just the process sentinel spawned; it learns about
//! the lock from its environment; and it is stopped in the conventional way when the lock is lost:
//! SIGTERM to the group, SIGKILL if it has not exited after a grace period. How it ended is
//! reported the way shells do (its exit code, or 128 + the signal that killed it), so `run` can
//! pass it on.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal, kill_process_group};

use sentinel::duration;
use sentinel::error::{Error, Result};
use sentinel::interrupt::StopSignal;

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code, or 128 + the signal that killed it (as a shell reports it).
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl From<std::process::ExitStatus> for Exit {
    fn from(status: std::process::ExitStatus) -> Exit {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit { code, signal: None },
            (None, Some(sig)) => Exit {
                code: 128 + sig,
                signal: Some(sig),
            },
            (None, None) => Exit {
                code: 1,
                signal: None,
            },
        }
    }
}

/// Why the command did not start, with the exit code a shell would give: 127 not found, 126
/// found but not executable.
#[derive(Debug)]
pub struct NotStarted {
    /// 127 when there is no command or the program was not found, 126 when it could not be
    /// executed (permissions, not an executable).
    pub code: i32,
    /// Says which program and why, for the user.
    pub message: String,
}

/// A started command.
pub struct Child {
    process: tokio::process::Child,
    group: Option<Pid>,
    program: String,
}

/// Starts `command` (program and arguments) with `env` added to sentinel's own environment, in a
/// new process group, with stdin, stdout and stderr shared with sentinel.
pub fn spawn(command: &[OsString], env: &[(&str, String)]) -> Result<Child, NotStarted> {
    let Some((program, args)) = command.split_first() else {
        return Err(NotStarted {
            code: 127,
            message: "no command to run: give one after `--`".into(),
        });
    };
    let shown = format!("{:?}", program.to_string_lossy());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        // A command nobody keeps the lock for any more must not run on if sentinel itself is
        // torn down before it has reaped it.
        .kill_on_drop(true);
    match cmd.spawn() {
        Ok(process) => {
            let group = process
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(Pid::from_raw);
            Ok(Child {
                process,
                group,
                program: shown,
            })
        }
        Err(e) => {
            let (code, why) = match e.kind() {
                ErrorKind::NotFound => (127, "command not found".to_string()),
                ErrorKind::PermissionDenied => (126, "permission denied (not executable)".into()),
                _ => (126, e.to_string()),
            };
            Err(NotStarted {
                code,
                message: format!("cannot run {shown}: {why}"),
            })
        }
    }
}

impl Child {
    /// Waits for the command to exit. Cancel-safe.
    pub async fn wait(&mut self) -> Result<Exit> {
        let status = self
            .process
            .wait()
            .await
            .map_err(|e| Error::Unexpected(format!("cannot wait for {}: {e}", self.program)))?;
        Ok(status.into())
    }

    /// Passes a SIGINT or SIGTERM sentinel received on to the command's whole group.
    pub fn forward(&self, signal: StopSignal) {
        let sig = match signal {
            StopSignal::Interrupt => Signal::INT,
            StopSignal::Terminate => Signal::TERM,
        };
        tracing::info!(command = %self.program, signal = signal.name(), "forwarding");
        self.send(sig);
    }

    /// Stops the command: SIGTERM to its group, SIGKILL when it has not exited after `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> Result<Exit> {
        self.send(Signal::TERM);
        if let Ok(exit) = tokio::time::timeout(grace, self.wait()).await {
            return exit;
        }
        tracing::warn!(
            "{} did not exit within {} of SIGTERM; sending SIGKILL",
            self.program,
            duration::display(grace)
        );
        self.send(Signal::KILL);
        self.wait().await
    }

    fn send(&self, sig: Signal) {
        let Some(group) = self.group else {
            return;
        };
        match kill_process_group(group, sig) {
            // The whole group has exited already.
            Ok(()) | Err(Errno::SRCH) => {}
            Err(e) => {
                tracing::warn!(command = %self.program, error = %e, "cannot signal the command")
            }
        }
    }
}
