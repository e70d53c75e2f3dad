//! A server process a fixture starts: its own process group, killed (group and all) when
//! the handle drops, or left running when detached (the demo's emulator and orchestrator).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child leading its own process group.
pub struct GroupChild {
    child: Child,
    detached: bool,
}

impl GroupChild {
    /// Spawns `cmd` as the leader of a new process group. Unless `outlive_parent`, the
    /// kernel also kills it when this process dies without running Drop (PDEATHSIG).
    pub fn spawn(cmd: &mut Command, outlive_parent: bool) -> io::Result<Self> {
        cmd.process_group(0);
        if !outlive_parent {
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(GroupChild {
            child: cmd.spawn()?,
            detached: false,
        })
    }

    /// Process group id (= the leader's pid): what a tear-down kills.
    pub fn pgid(&self) -> u32 {
        self.child.id()
    }

    /// Leaves the process running when this handle drops.
    pub fn detach(&mut self) {
        self.detached = true;
    }

    /// Waits until `addr` accepts TCP connections; `Err` says why not (the process exited,
    /// or the deadline passed).
    pub fn wait_listening(&mut self, addr: SocketAddr, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("not listening on {addr} after {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl GroupChild {
    /// SIGKILLs the whole group and reaps the leader.
    pub fn kill(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.kill();
    }
}
