//! Carrying out the [`MountPlan`]: the direct pivot (unshare + mount in this process), its
//! verification from `/proc/self/mountinfo`, and the commands that run in the view (as they
//! are in direct mode, under bwrap in bwrap mode).
//!
//! Architecture invariant: [`enter_direct`] runs while the process has ONE thread (before the
//! tokio runtime exists). A mount namespace made by `unshare` belongs to the calling thread,
//! and `CLONE_NEWUSER` refuses multi-threaded callers; threads and children created later
//! inherit the view.

use std::io::Read as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode as FileMode;

use crate::plan::{Mode, MountPlan, WORK, WORK_OUT, WORK_SRC};

/// Why the pivot failed. Each names the path or the step.
#[derive(Debug, thiserror::Error)]
pub enum PivotError {
    /// A source dir could not be opened.
    #[error("cannot open {path:?}")]
    Open { path: PathBuf, source: nix::Error },
    /// A source dir changed (e.g. became a symlink) between validation and the mount.
    #[error("{path:?} now resolves to {now:?}: refused (changed since validation)")]
    Moved { path: PathBuf, now: PathBuf },
    /// Threads exist already: the namespace would not cover them.
    #[error("the pivot must run single-threaded, but the process has {0} threads")]
    Threads(u64),
    /// unshare(2) failed.
    #[error("unshare({flags}) failed (needs CAP_SYS_ADMIN or user namespaces)")]
    Unshare {
        flags: &'static str,
        source: nix::Error,
    },
    /// Writing a user-namespace map failed.
    #[error("cannot write {file}")]
    IdMap {
        file: &'static str,
        source: std::io::Error,
    },
    /// A mount step failed.
    #[error("mount step {step} on {target:?} failed")]
    Mount {
        step: &'static str,
        target: PathBuf,
        source: nix::Error,
    },
    /// A mount point could not be made.
    #[error("cannot create mount point {path:?}")]
    Mkdir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// /proc/self/mountinfo does not show the planned view.
    #[error("mount verification failed: {0}")]
    Verify(String),
    /// chdir into the view failed.
    #[error("cannot chdir to {path:?}")]
    Chdir { path: PathBuf, source: nix::Error },
}

/// What the verification saw (logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PivotReport {
    pub work_fs: String,
    pub src_majmin: String,
    pub out_majmin: String,
    pub mounts_in_namespace: usize,
    /// Mounts of the view found read-only as planned (the read-only binds and their
    /// submounts).
    pub read_only_mounts: usize,
}

/// One mountinfo line, the parts the pivot needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub majmin: String,
    pub shared: bool,
    /// The per-mount options (`ro`/`rw`, `nosuid`, `nodev`, `noexec`, `relatime`, ...).
    pub options: Vec<String>,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// What `/work`, `/work/src` and `/work/out` must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub src_majmin: String,
    pub out_majmin: String,
    /// Paths whose mount, and every mount under it, must be read-only.
    pub read_only: Vec<PathBuf>,
}

/// The mounts at or under `path` (a bind's submounts come with it). Pure.
fn mounts_under<'a>(
    entries: &'a [MountEntry],
    path: &'a Path,
) -> impl Iterator<Item = &'a MountEntry> {
    entries
        .iter()
        .filter(move |e| e.mount_point.starts_with(path))
}

/// The flags that remount a bind read-only and keep the rest of its per-mount flags as
/// mountinfo shows them: a bind remount sets all of them at once, so leaving one out would
/// clear it (and in a user namespace, clearing a flag the parent namespace set is refused).
/// Pure.
pub fn read_only_remount_flags(options: &[String]) -> MsFlags {
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for o in options {
        flags |= match o.as_str() {
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        };
    }
    flags
}

/// Checks a mount table against the plan. Pure. The last entry for a mount point is the
/// visible one (mounts stack).
pub fn verify_mounts(entries: &[MountEntry], want: &Expected) -> Result<PivotReport, String> {
    let top = |p: &str| entries.iter().rev().find(|e| e.mount_point == Path::new(p));
    let work = top(WORK).ok_or("no mount on /work")?;
    if work.fs_type != "tmpfs" {
        return Err(format!("/work is {}, not tmpfs", work.fs_type));
    }
    let src = top(WORK_SRC).ok_or("no mount on /work/src")?;
    let out = top(WORK_OUT).ok_or("no mount on /work/out")?;
    if src.majmin != want.src_majmin {
        return Err(format!(
            "/work/src is device {}, the source is {}",
            src.majmin, want.src_majmin
        ));
    }
    if out.majmin != want.out_majmin {
        return Err(format!(
            "/work/out is device {}, the source is {}",
            out.majmin, want.out_majmin
        ));
    }
    if let Some(e) = entries.iter().find(|e| e.shared) {
        return Err(format!(
            "{} still has shared propagation: mounts would leak to the host",
            e.mount_point.display()
        ));
    }
    let mut read_only_mounts = 0;
    for path in &want.read_only {
        if !entries.iter().any(|e| e.mount_point == *path) {
            return Err(format!("no mount on {} to be read-only", path.display()));
        }
        for e in mounts_under(entries, path) {
            if !e.read_only() {
                return Err(format!(
                    "{} is writable ({}): it must be read-only",
                    e.mount_point.display(),
                    e.options.join(",")
                ));
            }
            read_only_mounts += 1;
        }
    }
    Ok(PivotReport {
        work_fs: work.fs_type.clone(),
        src_majmin: src.majmin.clone(),
        out_majmin: out.majmin.clone(),
        mounts_in_namespace: entries.len(),
        read_only_mounts,
    })
}

fn read_mountinfo() -> Result<Vec<MountEntry>, PivotError> {
    let me = procfs::process::Process::myself()
        .map_err(|e| PivotError::Verify(format!("procfs: {e}")))?;
    let infos = me
        .mountinfo()
        .map_err(|e| PivotError::Verify(format!("reading /proc/self/mountinfo: {e}")))?;
    Ok(infos
        .into_iter()
        .map(|m| MountEntry {
            shared: m
                .opt_fields
                .iter()
                .any(|f| matches!(f, procfs::process::MountOptFields::Shared(_))),
            options: {
                let mut o: Vec<String> = m.mount_options.into_keys().collect();
                o.sort();
                o
            },
            mount_point: m.mount_point,
            fs_type: m.fs_type,
            majmin: m.majmin,
        })
        .collect())
}

/// Opens a validated dir as an O_PATH fd and checks it still is what validation resolved.
fn open_checked(path: &Path) -> Result<(OwnedFd, String), PivotError> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        FileMode::empty(),
    )
    .map_err(|source| PivotError::Open {
        path: path.to_owned(),
        source,
    })?;
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let now = std::fs::read_link(&link).map_err(|e| PivotError::Open {
        path: path.to_owned(),
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    if now != path {
        return Err(PivotError::Moved {
            path: path.to_owned(),
            now,
        });
    }
    let meta = std::fs::metadata(&link).map_err(|e| PivotError::Open {
        path: path.to_owned(),
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let dev = meta.dev();
    let majmin = format!("{}:{}", libc::major(dev), libc::minor(dev));
    Ok((fd, majmin))
}

fn thread_count() -> u64 {
    // One entry per thread; cheaper than parsing /proc/self/status.
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count() as u64)
}

fn write_id_maps(plan: &MountPlan) -> Result<(), PivotError> {
    let write = |file: &'static str, text: &str| {
        std::fs::write(file, text).map_err(|source| PivotError::IdMap { file, source })
    };
    write("/proc/self/setgroups", "deny")?;
    if let Some(m) = &plan.uid_map {
        write("/proc/self/uid_map", m)?;
    }
    if let Some(m) = &plan.gid_map {
        write("/proc/self/gid_map", m)?;
    }
    Ok(())
}

fn mount_step(
    step: &'static str,
    source: Option<&Path>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), PivotError> {
    nix::mount::mount(source, target, fstype, flags, data).map_err(|source| PivotError::Mount {
        step,
        target: PathBuf::from(target),
        source,
    })
}

/// The direct pivot: new mount namespace (and user namespace when planned), private
/// propagation, tmpfs on /work, binds, the plan's read-only binds remounted read-only,
/// R hidden, verification, chdir /work/src.
pub fn enter_direct(plan: &MountPlan) -> Result<PivotReport, PivotError> {
    debug_assert_eq!(plan.mode.mode, Mode::Direct);
    let threads = thread_count();
    if threads != 1 {
        return Err(PivotError::Threads(threads));
    }
    let (flags, flag_names) = if plan.mode.user_namespace {
        (
            CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS,
            "CLONE_NEWUSER|CLONE_NEWNS",
        )
    } else {
        (CloneFlags::CLONE_NEWNS, "CLONE_NEWNS")
    };
    nix::sched::unshare(flags).map_err(|source| PivotError::Unshare {
        flags: flag_names,
        source,
    })?;
    if plan.mode.user_namespace {
        write_id_maps(plan)?;
    }
    // From here on nothing reaches the host's mount table.
    mount_step(
        "make-rprivate",
        None,
        "/",
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    // Open the sources before the tmpfs goes on: the fds pin the exact dirs validation
    // resolved, even if the filestore root lies under /work and is about to be hidden. (Opened
    // after unshare: a bind source must be a mount of the caller's namespace.)
    let (src_fd, src_majmin) = open_checked(&plan.src)?;
    let (out_fd, out_majmin) = open_checked(&plan.out)?;
    if !Path::new(WORK).is_dir() {
        // Only on a root without /work (the image provides it); logged for the record.
        tracing::warn!(path = WORK, "mount point missing; creating it");
        std::fs::create_dir(WORK).map_err(|source| PivotError::Mkdir {
            path: PathBuf::from(WORK),
            source,
        })?;
    }
    mount_step(
        "tmpfs",
        Some(Path::new("tmpfs")),
        WORK,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )?;
    for dir in [WORK_SRC, WORK_OUT] {
        std::fs::create_dir(dir).map_err(|source| PivotError::Mkdir {
            path: PathBuf::from(dir),
            source,
        })?;
    }
    for (step, fd, target) in [
        ("bind src", &src_fd, WORK_SRC),
        ("bind out", &out_fd, WORK_OUT),
    ] {
        let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        mount_step(
            step,
            Some(&via),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
    }
    drop((src_fd, out_fd));
    // The checkout read-only: each bind the plan names, and every mount under it (a bind
    // remount changes one mount only).
    for path in &plan.read_only {
        let mounts = read_mountinfo()?;
        for m in mounts_under(&mounts, path) {
            mount_step(
                "remount read-only",
                None,
                &m.mount_point.to_string_lossy(),
                None,
                read_only_remount_flags(&m.options),
                None,
            )?;
        }
    }
    // The rest of the filestore (other users' trees) leaves this namespace: an empty,
    // read-only tmpfs over R. The command runs without CAP_SYS_ADMIN (see
    // `command_in_view`), so it cannot take it off again.
    for hidden in &plan.hidden {
        let target = hidden.to_string_lossy();
        mount_step(
            "hide filestore root",
            Some(Path::new("tmpfs")),
            &target,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0555,size=4k"),
        )?;
    }
    let report = verify_mounts(
        &read_mountinfo()?,
        &Expected {
            src_majmin,
            out_majmin,
            read_only: plan.read_only.clone(),
        },
    )
    .map_err(PivotError::Verify)?;
    nix::unistd::chdir(WORK_SRC).map_err(|source| PivotError::Chdir {
        path: PathBuf::from(WORK_SRC),
        source,
    })?;
    Ok(report)
}

/// A command that runs `argv` in the pivoted view: as is in direct mode (this process already
/// sees the view), under bwrap with the plan's binds in bwrap mode.
pub fn command_in_view(plan: &MountPlan, argv: &[String]) -> Command {
    let full: Vec<String> = match plan.mode.mode {
        Mode::Direct => argv.to_vec(),
        Mode::Bwrap => {
            let prefix_len = plan.bwrap_argv.len() - plan.command.len();
            let mut v = plan.bwrap_argv[..prefix_len].to_vec();
            v.extend(argv.iter().cloned());
            v
        }
    };
    let mut cmd = Command::new(&full[0]);
    cmd.args(&full[1..]);
    cmd.envs(plan.env.iter().map(|(k, v)| (k, v)));
    if plan.mode.mode == Mode::Direct {
        cmd.current_dir(WORK_SRC);
        let last_cap = last_capability();
        let switch = plan
            .run_as
            .switch
            .then_some((plan.run_as.uid, plan.run_as.gid));
        let filters = filters();
        // SAFETY: only async-signal-safe syscalls (prctl, setgroups, setres[ug]id, capset,
        // seccomp) on stack data and the filters built before the fork; no allocation.
        unsafe {
            cmd.pre_exec(move || drop_privileges(switch, last_cap, &filters));
        }
    }
    // bwrap mode: the plan's bwrap argv runs `drop-privileges` ([`exec_dropped`]) in the view.
    cmd
}

/// `supervisor drop-privileges`: inside bwrap's view, drops privileges like the direct
/// mode's pre_exec, then execs `argv` in this same process (bwrap's info-fd pid stays
/// the command's). Returns only on failure, with the exit code to use.
pub fn exec_dropped(switch: Option<(u32, u32)>, argv: &[String]) -> (i32, std::io::Error) {
    if let Err(e) = drop_privileges(switch, last_capability(), &filters()) {
        return (126, e);
    }
    let Some((program, args)) = argv.split_first() else {
        return (127, std::io::Error::other("no command"));
    };
    let e = Command::new(program).args(args).exec();
    let code = if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    (code, e)
}

/// The seccomp filters of everything after the pivot ([`crate::seccomp`]); none (logged)
/// on an architecture without them.
fn filters() -> Vec<seccompiler::BpfProgram> {
    crate::seccomp::programs().unwrap_or_else(|e| {
        tracing::error!(error = %proto::error_chain::ErrorChain(&e), "Bazel runs without the seccomp filter");
        Vec::new()
    })
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
fn last_capability() -> libc::c_int {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// In the child, before exec: no_new_privs, every capability out of the bounding set,
/// the ambient set cleared; with `switch` = (uid, gid): supplementary groups set to the gid
/// alone, setresgid, setresuid (real, effective, saved, and so filesystem ids), checked;
/// then effective, permitted and inheritable emptied. Bazel and every build action it
/// starts run as the tree's owner with no capability at all: no mount, no unshare of the
/// mount namespace that hides the filestore, no ptrace of the supervisor, no file of root's.
/// Last, the seccomp `filters` (after no_new_privs, which lets an unprivileged process
/// install them): no namespace, no mount, none of the kernel's own surface.
fn drop_privileges(
    switch: Option<(u32, u32)>,
    last_cap: libc::c_int,
    filters: &[seccompiler::BpfProgram],
) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain syscalls with integer arguments or pointers to locals.
    unsafe {
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        for cap in 0..=last_cap {
            // EINVAL: a number the kernel does not have. EPERM: no CAP_SETPCAP (not root);
            // then no_new_privs and the empty permitted set below still keep every exec
            // from gaining a capability.
            let r = libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            let errno = std::io::Error::last_os_error().raw_os_error();
            if r == -1 && errno != Some(libc::EINVAL) && errno != Some(libc::EPERM) {
                return Err(std::io::Error::last_os_error());
            }
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ))?;
        if let Some((uid, gid)) = switch {
            // Groups first (they need CAP_SETGID), the uid last (it takes the rest away).
            let groups = [gid];
            check(libc::setgroups(1, groups.as_ptr()))?;
            check(libc::setresgid(gid, gid, gid))?;
            check(libc::setresuid(uid, uid, uid))?;
            let (mut r, mut e, mut s) = (0, 0, 0);
            check(libc::getresuid(&mut r, &mut e, &mut s))?;
            let (mut rg, mut eg, mut sg) = (0, 0, 0);
            check(libc::getresgid(&mut rg, &mut eg, &mut sg))?;
            if [r, e, s] != [uid; 3] || [rg, eg, sg] != [gid; 3] {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)?;
    }
    crate::seccomp::install(filters)
}

/// Fd number bwrap gets for `--info-fd` (it writes `{"child-pid": N}` there).
const INFO_FD: i32 = 3;

/// The pipe bwrap reports the command's pid on. Keep `write` alive until the command is
/// spawned, then drop it and call [`BwrapInfo::child_pid`].
pub struct BwrapInfo {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

/// In bwrap mode, asks bwrap to tell the pid of the command it runs: signals go to that
/// process, not to bwrap (which does not forward them and would just die).
pub fn add_bwrap_info_fd(cmd: &mut Command) -> std::io::Result<BwrapInfo> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    // `--info-fd 3` goes first, before the other options and `--`.
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut new = Command::new(cmd.get_program());
    new.arg("--info-fd").arg(INFO_FD.to_string()).args(args);
    let wfd = write.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        new.pre_exec(move || {
            if wfd == INFO_FD {
                if libc::fcntl(wfd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(wfd, INFO_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    *cmd = new;
    Ok(BwrapInfo { read, write })
}

impl BwrapInfo {
    /// Reads bwrap's `{"child-pid": N}` (None when bwrap failed before writing it).
    pub fn child_pid(self) -> Option<i32> {
        drop(self.write);
        let mut f = std::fs::File::from(self.read);
        let mut buf = Vec::with_capacity(128);
        let mut chunk = [0u8; 128];
        // One small JSON object; stop at its end (the command may inherit the fd).
        while !buf.contains(&b'}') && buf.len() < 4096 {
            match f.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.iter().position(|b| *b == b'}')? + 1;
        let v: serde_json::Value = serde_json::from_slice(&buf[..end]).ok()?;
        v.get("child-pid")?
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(mp: &str, fs: &str, mm: &str, shared: bool) -> MountEntry {
        MountEntry {
            mount_point: PathBuf::from(mp),
            fs_type: fs.into(),
            majmin: mm.into(),
            shared,
            options: vec!["relatime".into(), "rw".into()],
        }
    }

    fn ro(mut m: MountEntry) -> MountEntry {
        m.options = vec!["nosuid".into(), "relatime".into(), "ro".into()];
        m
    }

    #[test]
    fn verify_table() {
        let want = Expected {
            src_majmin: "254:0".into(),
            out_majmin: "254:1".into(),
            read_only: vec![PathBuf::from("/work/src")],
        };
        let good = vec![
            e("/", "ext4", "254:0", false),
            e("/work", "tmpfs", "0:50", false),
            ro(e("/work/src", "ext4", "254:0", false)),
            e("/work/out", "ext4", "254:1", false),
        ];
        let r = verify_mounts(&good, &want).expect("good table");
        assert_eq!((r.mounts_in_namespace, r.read_only_mounts), (4, 1));
        // A read-only submount of the checkout counts too; /work/srcx is not under it.
        let mut more = good.clone();
        more.push(ro(e("/work/src/sub", "nfs", "0:60", false)));
        more.push(e("/work/srcx", "tmpfs", "0:61", false));
        let r = verify_mounts(&more, &want).expect("read-only submount");
        assert_eq!(r.read_only_mounts, 2);

        let cases: Vec<(Vec<MountEntry>, &str)> = vec![
            (good[..1].to_vec(), "no mount on /work"),
            (
                vec![good[0].clone(), e("/work", "ext4", "254:0", false)],
                "not tmpfs",
            ),
            (good[..3].to_vec(), "no mount on /work/out"),
            (
                {
                    let mut v = good.clone();
                    v[2].majmin = "8:1".into();
                    v
                },
                "/work/src is device 8:1",
            ),
            (
                {
                    let mut v = good.clone();
                    v[0].shared = true;
                    v
                },
                "shared propagation",
            ),
            (
                {
                    // A later mount stacked over /work hides the tmpfs.
                    let mut v = good.clone();
                    v.push(e("/work", "ext4", "254:0", false));
                    v
                },
                "not tmpfs",
            ),
            (
                {
                    let mut v = good.clone();
                    v[2] = e("/work/src", "ext4", "254:0", false);
                    v
                },
                "/work/src is writable (relatime,rw): it must be read-only",
            ),
            (
                {
                    // A submount the remount missed.
                    let mut v = good.clone();
                    v.push(e("/work/src/sub", "nfs", "0:60", false));
                    v
                },
                "/work/src/sub is writable",
            ),
        ];
        for (entries, want_err) in cases {
            let err = verify_mounts(&entries, &want).expect_err(want_err);
            assert!(
                err.contains(want_err),
                "{err:?} should contain {want_err:?}"
            );
        }
    }

    #[test]
    fn a_read_only_remount_keeps_the_other_flags() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        assert_eq!(read_only_remount_flags(&opts(&["rw"])), base);
        assert_eq!(
            read_only_remount_flags(&opts(&["rw", "nosuid", "nodev", "noexec", "relatime"])),
            base | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_RELATIME
        );
        assert_eq!(
            read_only_remount_flags(&opts(&["ro", "noatime", "nodiratime"])),
            base | MsFlags::MS_NOATIME | MsFlags::MS_NODIRATIME
        );
        // Options that are not per-mount flags change nothing.
        assert_eq!(
            read_only_remount_flags(&opts(&["rw", "seclabel", "x=1"])),
            base
        );
    }
}
