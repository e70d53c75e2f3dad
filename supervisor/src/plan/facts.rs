//! What the plan is made from, read from this host: its capabilities, user namespaces,
//! bwrap and secret dirs ([`HostFacts`]), and the image's files ([`ImageFacts`]). Reads only;
//! the rest of [`crate::plan`] is pure.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// What the host allows; gathered once by [`HostFacts::detect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    /// Effective uid (mapped to 0 in a user namespace).
    pub euid: u32,
    /// Effective gid.
    pub egid: u32,
    /// CAP_SYS_ADMIN is in the effective set: `unshare(CLONE_NEWNS)` + `mount` work.
    pub cap_sys_admin: bool,
    /// The kernel lets this process create a user namespace.
    pub user_namespaces: bool,
    /// Where bwrap was found on PATH, if it was.
    pub bwrap: Option<PathBuf>,
    /// CAP_SETUID and CAP_SETGID are in the effective set: Bazel can run as the tree's owner.
    pub cap_setuid_setgid: bool,
    /// This supervisor binary (bwrap mode runs it in the view to drop privileges).
    pub exe: Option<PathBuf>,
    /// The pod's secret dirs that exist here ([`SECRET_DIRS`]): hidden from the command.
    pub secret_dirs: Vec<PathBuf>,
}

/// Where a pod keeps credentials (the bound token for ReportReady is under the first):
/// only the supervisor reads them; the command's view covers them like R.
pub const SECRET_DIRS: &[&str] = &["/var/run/secrets", "/run/secrets"];

impl HostFacts {
    /// Reads capabilities (caps crate), the user-namespace sysctls and PATH. Reads only.
    pub fn detect(bwrap: &Path) -> HostFacts {
        let cap_sys_admin = caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_ADMIN,
        )
        .unwrap_or(false);
        let read_num = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let user_namespaces = read_num("/proc/sys/user/max_user_namespaces").unwrap_or(0) > 0
            // Debian's knob; absent on kernels without the patch.
            && read_num("/proc/sys/kernel/unprivileged_userns_clone").unwrap_or(1) != 0;
        let has = |c| caps::has_cap(None, caps::CapSet::Effective, c).unwrap_or(false);
        HostFacts {
            euid: nix::unistd::geteuid().as_raw(),
            egid: nix::unistd::getegid().as_raw(),
            cap_sys_admin,
            user_namespaces,
            bwrap: find_executable(bwrap),
            cap_setuid_setgid: has(caps::Capability::CAP_SETUID)
                && has(caps::Capability::CAP_SETGID),
            exe: std::env::current_exe().ok(),
            secret_dirs: {
                // /var/run is often a link to /run: one canonical path each.
                let mut dirs: Vec<PathBuf> = SECRET_DIRS
                    .iter()
                    .filter_map(|p| std::fs::canonicalize(p).ok())
                    .filter(|p| p.is_dir())
                    .collect();
                dirs.sort();
                dirs.dedup();
                dirs
            },
        }
    }
}

fn find_executable(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.components().count() > 1 {
        return is_exec(name).then(|| name.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
}

/// Facts about the files the pod's image provides, read on this host (reads only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageFacts {
    /// The system bazelrc, and why it cannot be used here (None: it can).
    pub system_bazelrc: PathBuf,
    pub system_bazelrc_problem: Option<String>,
    /// The Bazel client, and whether it resolves to an executable here.
    pub bazel: PathBuf,
    pub bazel_found: bool,
}

impl ImageFacts {
    /// Checks the system bazelrc and the Bazel client (`PATH` lookup for a bare name).
    pub fn detect(system_bazelrc: &Path, bazel: &Path) -> ImageFacts {
        ImageFacts {
            system_bazelrc: system_bazelrc.to_path_buf(),
            system_bazelrc_problem: match crate::config::read_system_rc(system_bazelrc) {
                Ok(_) => None,
                Err(crate::config::ConfigError::SystemRc { reason, .. }) => Some(reason),
                Err(e) => Some(proto::error_chain::ErrorChain(&e).to_string()),
            },
            bazel: bazel.to_path_buf(),
            bazel_found: find_executable(bazel).is_some(),
        }
    }
}
