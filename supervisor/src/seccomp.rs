//! The seccomp filter of everything after the pivot (Bazel and every build action).
//!
//! The container itself runs `Unconfined`: the container runtime's RuntimeDefault profile
//! refuses unshare(2) and mount(2) even with CAP_SYS_ADMIN (`unshare -m` fails under it in a
//! pod of the local cluster), and the pivot needs both. So the supervisor confines what it starts instead, after the
//! pivot, with this tailored filter on top of the dropped capabilities and no_new_privs:
//! the syscalls a build never needs and an escape always does fail with EPERM:
//! - new namespaces and mounts: `unshare`, `setns`, `clone` with any `CLONE_NEW*` flag
//!   (`clone3`, whose flags a filter cannot read, answers ENOSYS so libc falls back to
//!   `clone`), `mount`, `umount2`, `pivot_root`, `chroot`, and the new mount API;
//! - the kernel's own surface: modules, kexec, bpf, perf events, keyrings, userfaultfd,
//!   file handles (`open_by_handle_at`), swap, reboot, clock and syslog changes, ioperm.
//!
//! Bazel's linux-sandbox needs user namespaces; refused them, Bazel uses its
//! processwrapper-sandbox (as it does on any machine without them).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("this architecture has no seccomp filter here")]
    Arch,
}

/// The syscalls refused outright (EPERM).
pub const DENIED: &[(&str, libc::c_long)] = &[
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", 442),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("syslog", libc::SYS_syslog),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("quotactl", libc::SYS_quotactl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
];

/// The `clone` flags that make a namespace.
const CLONE_NAMESPACES: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::Arch)
    }
}

/// The compiled filters, in the order they are installed (each is a separate program:
/// EPERM for [`DENIED`] and namespace clones, ENOSYS for `clone3`). Built before the fork,
/// so that the child only installs them.
pub fn programs() -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let clone_rules = CLONE_NAMESPACES
        .iter()
        .map(|flag| {
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*flag),
                *flag,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(SeccompError::Build)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let eperm = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(SeccompError::Build)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(SeccompError::Build)?;
    Ok(vec![
        eperm.try_into().map_err(SeccompError::Build)?,
        clone3.try_into().map_err(SeccompError::Build)?,
    ])
}

/// Installs `programs` on the calling thread (after no_new_privs; async-signal-safe: no
/// allocation, two syscalls each). For a `pre_exec` hook.
pub fn install(programs: &[BpfProgram]) -> std::io::Result<()> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| match e {
            seccompiler::Error::Seccomp(errno) => errno,
            _ => std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
    }
    Ok(())
}

/// One program as bytes (`struct sock_filter` in native order), for bwrap's
/// `--add-seccomp-fd FD` (bwrap installs each after its own namespace work, before exec).
pub fn bytes(program: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for f in program {
        out.extend_from_slice(&f.code.to_ne_bytes());
        out.push(f.jt);
        out.push(f.jf);
        out.extend_from_slice(&f.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_build() {
        let p = programs().expect("filters");
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|p| !p.is_empty()));
        assert_eq!(bytes(&p[1]).len(), p[1].len() * 8);
    }

    /// In a forked child: once installed, unshare, mount and a namespace clone fail with
    /// EPERM; an ordinary fork still works.
    #[test]
    fn installed_filters_refuse_namespaces_and_mounts() {
        let progs = programs().expect("filters");
        // SAFETY: the child only makes syscalls and exits.
        match unsafe { libc::fork() } {
            0 => {
                let code = (|| {
                    // SAFETY: plain prctl.
                    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                        return 10;
                    }
                    if install(&progs).is_err() {
                        return 11;
                    }
                    let errno = || std::io::Error::last_os_error().raw_os_error();
                    // SAFETY: plain syscalls.
                    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0
                        || errno() != Some(libc::EPERM)
                    {
                        return 12;
                    }
                    let none = c"none";
                    let tmp = c"/tmp";
                    let tmpfs = c"tmpfs";
                    // SAFETY: valid C strings.
                    if unsafe {
                        libc::mount(
                            none.as_ptr(),
                            tmp.as_ptr(),
                            tmpfs.as_ptr(),
                            0,
                            std::ptr::null(),
                        )
                    } == 0
                        || errno() != Some(libc::EPERM)
                    {
                        return 13;
                    }
                    // SAFETY: fork in a single-threaded child; the grandchild exits at once.
                    match unsafe { libc::fork() } {
                        0 => unsafe { libc::_exit(0) },
                        pid if pid > 0 => {
                            let mut st = 0;
                            // SAFETY: waiting for our own child.
                            unsafe { libc::waitpid(pid, &mut st, 0) };
                        }
                        _ => return 14,
                    }
                    0
                })();
                // SAFETY: leave the forked test child without running the harness.
                unsafe { libc::_exit(code) }
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status), "child died: {status}");
                assert_eq!(libc::WEXITSTATUS(status), 0, "step that failed (10-14)");
            }
            _ => panic!("fork failed"),
        }
    }
}
