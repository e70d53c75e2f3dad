//! Who Bazel and every build action run as: the owner (uid and gid) of the user's repository
//! tree `R/<user>/<hash>`, as on a real NFS filestore, where files a build creates belong to
//! the user. [`decide`] is the pure decision (printed by `--dry-run`); [`OwnerFs::enter`]
//! makes the supervisor's own file operations run with the owner's filesystem ids, so
//! everything it creates or writes in the user's `out/` (the lock, `jbazel/*`, the abrupt-exit
//! code, Bazel's home) belongs to the owner and no link a build planted there can make root
//! write elsewhere.
//!
//! The supervisor's own capabilities, each with why, are [`proto::pod::CAPABILITIES`] (the
//! orchestrator grants exactly those; `--dry-run` prints them). Measured by running the pivot
//! tests and the real-Bazel tests of a tree owned by uid 54321, in direct and bwrap mode, with
//! the supervisor under `setpriv --bounding-set=-all,+...` and one capability taken away at a
//! time: each one listed made a test fail without it. Not needed (all tests passed without
//! them): SYS_CHROOT (Debian's bwrap 0.8 as root does without), CHOWN, FOWNER, DAC_OVERRIDE
//! (the supervisor writes out/ as the owner). Bazel and every build action get none of them.
//!
//! Architecture invariant: the switch of the command itself happens in the child before exec
//! (`drop_privileges` in [`crate::pivot`]): supplementary groups set to the gid alone, then
//! setresgid, setresuid, then every capability gone (bounding set included) and
//! no_new_privs. In bwrap mode the same function runs inside bwrap's view, as the supervisor
//! binary's hidden `drop-privileges` subcommand (bwrap's own `--uid` only maps ids in a user
//! namespace; the kernel uid would stay 0).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The owner of the repository tree `R/<user>/<hash>`, read at validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub fn is_root(self) -> bool {
        self.uid == 0 && self.gid == 0
    }
}

/// Who the command (Bazel, or `run`'s CMD) runs as, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunAs {
    /// The kernel uid the command runs as (outside any user namespace).
    pub uid: u32,
    pub gid: u32,
    /// The child switches to (uid, gid) before exec, and the supervisor writes the user's
    /// out/ with these filesystem ids.
    pub switch: bool,
    pub reason: String,
}

/// The tree belongs to someone else, and this supervisor cannot become them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the repository tree {tree:?} belongs to uid {uid} gid {gid}, and the supervisor cannot \
     run Bazel as them: {reason} (refusing to run the build as root)"
)]
pub struct CannotSwitch {
    pub tree: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub reason: String,
}

/// What [`decide`] needs to know about the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supervisor {
    pub euid: u32,
    pub egid: u32,
    /// CAP_SETUID and CAP_SETGID are in the effective set.
    pub can_switch: bool,
    /// Direct mode inside a new user namespace (only the supervisor's own uid is mapped).
    pub user_namespace: bool,
}

/// Picks who the command runs as. Pure.
///
/// - A supervisor in a user namespace, or not root: its own uid (it cannot be anyone else,
///   and is no more privileged than that uid).
/// - Root, tree owned by root (0:0): uid 0, with no capability (as before).
/// - Root, tree owned by someone else: that uid and gid; refused without CAP_SETUID and
///   CAP_SETGID rather than letting an attacker's BUILD file run as root.
pub fn decide(owner: Owner, tree: &Path, sup: Supervisor) -> Result<RunAs, CannotSwitch> {
    let own = |reason: String| RunAs {
        uid: sup.euid,
        gid: sup.egid,
        switch: false,
        reason,
    };
    if sup.user_namespace {
        return Ok(own(format!(
            "user namespace: the command runs as the supervisor's own uid {} (0 inside); \
             the tree belongs to uid {}",
            sup.euid, owner.uid
        )));
    }
    if sup.euid != 0 {
        return Ok(own(format!(
            "the supervisor is not root: the command runs as its uid {}; the tree belongs to uid {}",
            sup.euid, owner.uid
        )));
    }
    if owner.is_root() {
        return Ok(RunAs {
            uid: 0,
            gid: 0,
            switch: false,
            reason: format!("{} belongs to root: uid 0, no capability", tree.display()),
        });
    }
    if !sup.can_switch {
        return Err(CannotSwitch {
            tree: tree.to_owned(),
            uid: owner.uid,
            gid: owner.gid,
            reason: "CAP_SETUID or CAP_SETGID is not in the effective set".into(),
        });
    }
    Ok(RunAs {
        uid: owner.uid,
        gid: owner.gid,
        switch: true,
        reason: format!("the owner of {}", tree.display()),
    })
}

/// The environment the Bazel server's client gets when it runs as the owner: its home
/// (Bazel's output user root lives there), a temp dir, and a user name (Bazel 4.2.3's client
/// dies with "$USER is not set, and unable to look up name of current user" for a uid
/// without a passwd entry). Pure.
pub fn bazel_env(home: &Path, user: &str) -> Vec<(String, String)> {
    vec![
        ("HOME".into(), home.display().to_string()),
        ("TMPDIR".into(), home.join("tmp").display().to_string()),
        ("USER".into(), user.to_owned()),
        ("LOGNAME".into(), user.to_owned()),
    ]
}

/// Bazel's home for a uid under `parent` (e.g. `/tmp/jbazel-home-54321`). Pure.
pub fn bazel_home(parent: &Path, uid: u32) -> PathBuf {
    parent.join(format!("jbazel-home-{uid}"))
}

/// A syscall that changes ids failed.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("setfsgid({0}) did not take effect (no CAP_SETGID?)")]
    FsGid(u32),
    #[error("setfsuid({0}) did not take effect (no CAP_SETUID?)")]
    FsUid(u32),
    #[error("cannot drop the supervisor's supplementary groups")]
    Groups(#[source] nix::Error),
}

/// The supervisor's file operations as the owner: while this lives, the calling thread's
/// filesystem uid and gid are the owner's (threads created meanwhile inherit them). With a
/// filesystem uid other than 0 the kernel also clears the file capabilities
/// (DAC_OVERRIDE, CHOWN, FOWNER, ...) from the effective set, so root's writes in the user's
/// tree are exactly the owner's: new files belong to the owner, and a symlink or hard link a
/// build planted leads only where the owner could write anyway. Dropping it restores 0.
#[derive(Debug)]
pub struct OwnerFs {
    /// The ids were switched (and are switched back on drop).
    active: bool,
}

/// Sets this thread's filesystem id with `set` (setfsuid or setfsgid) and reads it back
/// (`-1` only reads): the calls report no error of their own.
fn set_fs_id(set: unsafe extern "C" fn(u32) -> libc::c_int, id: u32) -> bool {
    // SAFETY: plain syscalls on integers.
    let now = unsafe {
        set(id);
        set(u32::MAX)
    };
    now as u32 == id
}

impl OwnerFs {
    /// Switches this thread's filesystem ids to the owner's when `run_as.switch`; does
    /// nothing otherwise (root's tree, or a supervisor that already is its own user).
    pub fn enter(run_as: &RunAs) -> Result<OwnerFs, IdError> {
        if !run_as.switch {
            return Ok(OwnerFs { active: false });
        }
        if !set_fs_id(libc::setfsgid, run_as.gid) {
            return Err(IdError::FsGid(run_as.gid));
        }
        if !set_fs_id(libc::setfsuid, run_as.uid) {
            set_fs_id(libc::setfsgid, 0);
            return Err(IdError::FsUid(run_as.uid));
        }
        tracing::debug!(
            uid = run_as.uid,
            gid = run_as.gid,
            "the supervisor now touches files as the owner"
        );
        Ok(OwnerFs { active: true })
    }

    /// Runs `f` with this thread's filesystem ids back at root's, then restores them: for
    /// the one file of root's the supervisor reads after it entered the owner's ids (the
    /// pod's bound token, mode 0400). `f` must not await or spawn: the ids are this
    /// thread's.
    pub fn as_root<T>(f: impl FnOnce() -> T) -> T {
        let (uid, gid) = Self::current();
        if uid == 0 && gid == 0 {
            return f();
        }
        set_fs_id(libc::setfsuid, 0);
        set_fs_id(libc::setfsgid, 0);
        let out = f();
        set_fs_id(libc::setfsgid, gid);
        set_fs_id(libc::setfsuid, uid);
        out
    }

    /// The current thread's filesystem ids (for logs and tests).
    pub fn current() -> (u32, u32) {
        // SAFETY: -1 only reads.
        unsafe {
            (
                libc::setfsuid(u32::MAX) as u32,
                libc::setfsgid(u32::MAX) as u32,
            )
        }
    }
}

impl Drop for OwnerFs {
    fn drop(&mut self) {
        if self.active {
            set_fs_id(libc::setfsuid, 0);
            set_fs_id(libc::setfsgid, 0);
        }
    }
}

/// PID 1's supplementary groups (a container's root often has 0, 1, 2, ...) would still
/// count in access checks made with the owner's filesystem ids: drop them all. Call while
/// single-threaded (before the runtime). Only when switching.
pub fn drop_supplementary_groups(run_as: &RunAs) -> Result<(), IdError> {
    if !run_as.switch {
        return Ok(());
    }
    nix::unistd::setgroups(&[]).map_err(IdError::Groups)
}

/// Why Bazel's home cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot create Bazel's home {path:?}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Bazel's home {path:?} is unusable: {reason}")]
    Unusable { path: PathBuf, reason: String },
}

/// Checks an existing home: a real directory (not a link) of the owner, closed to others. Pure.
pub fn check_home(
    meta_uid: u32,
    mode: u32,
    is_dir: bool,
    is_symlink: bool,
    uid: u32,
) -> Result<(), String> {
    if is_symlink {
        return Err("a symbolic link".into());
    }
    if !is_dir {
        return Err("not a directory".into());
    }
    if meta_uid != uid {
        return Err(format!("owned by uid {meta_uid}, not {uid}"));
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {:o} is open to others (want 0700)",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Creates Bazel's home (`home` and `home/tmp`, mode 0700) with the current filesystem ids,
/// so call it inside [`OwnerFs::enter`]: the dirs then belong to the owner. An existing home
/// must be the owner's own directory (checked without following links).
pub fn prepare_home(home: &Path, uid: u32) -> Result<(), HomeError> {
    for dir in [home.to_owned(), home.join("tmp")] {
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(HomeError::Create { path: dir, source }),
        }
        let meta = std::fs::symlink_metadata(&dir).map_err(|source| HomeError::Create {
            path: dir.clone(),
            source,
        })?;
        check_home(
            meta.uid(),
            meta.permissions().mode(),
            meta.is_dir(),
            meta.file_type().is_symlink(),
            uid,
        )
        .map_err(|reason| HomeError::Unusable {
            path: dir.clone(),
            reason,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup(euid: u32, can_switch: bool, user_namespace: bool) -> Supervisor {
        Supervisor {
            euid,
            egid: euid,
            can_switch,
            user_namespace,
        }
    }

    #[test]
    fn decision_table() {
        let tree = Path::new("/fs/alice/h");
        let user = Owner {
            uid: 54321,
            gid: 54322,
        };
        let root = Owner { uid: 0, gid: 0 };
        // (owner, supervisor) -> Ok((uid, gid, switch)) or Err(fragment)
        type Case<'a> = (Owner, Supervisor, Result<(u32, u32, bool), &'a str>);
        let cases: &[Case] = &[
            (user, sup(0, true, false), Ok((54321, 54322, true))),
            (root, sup(0, true, false), Ok((0, 0, false))),
            (root, sup(0, false, false), Ok((0, 0, false))),
            (user, sup(0, false, false), Err("CAP_SETUID or CAP_SETGID")),
            (user, sup(65534, false, true), Ok((65534, 65534, false))),
            (user, sup(0, true, true), Ok((0, 0, false))),
            (user, sup(1000, false, false), Ok((1000, 1000, false))),
            // Root's uid with another group is still someone else's tree.
            (
                Owner { uid: 0, gid: 5 },
                sup(0, true, false),
                Ok((0, 5, true)),
            ),
        ];
        for (i, (owner, s, want)) in cases.iter().enumerate() {
            match (decide(*owner, tree, *s), want) {
                (Ok(r), Ok((u, g, sw))) => {
                    assert_eq!((r.uid, r.gid, r.switch), (*u, *g, *sw), "case {i}");
                    assert!(!r.reason.is_empty(), "case {i}");
                }
                (Err(e), Err(frag)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(frag), "case {i}: {msg}");
                    assert!(
                        msg.contains("/fs/alice/h") && msg.contains("54321"),
                        "{msg}"
                    );
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn env_and_home_paths() {
        let home = bazel_home(Path::new("/tmp"), 54321);
        assert_eq!(home, PathBuf::from("/tmp/jbazel-home-54321"));
        let env = bazel_env(&home, "alice");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HOME"), Some("/tmp/jbazel-home-54321"));
        assert_eq!(get("TMPDIR"), Some("/tmp/jbazel-home-54321/tmp"));
        assert_eq!(get("USER"), Some("alice"));
        assert_eq!(get("LOGNAME"), Some("alice"));
    }

    #[test]
    fn home_checks() {
        assert!(check_home(7, 0o40700, true, false, 7).is_ok());
        let cases = [
            (7, 0o40700, true, true, "symbolic link"),
            (7, 0o100600, false, false, "not a directory"),
            (0, 0o40700, true, false, "owned by uid 0, not 7"),
            (7, 0o40755, true, false, "open to others"),
            (7, 0o41777, true, false, "open to others"),
        ];
        for (uid, mode, dir, link, want) in cases {
            let err = check_home(uid, mode, dir, link, 7).expect_err(want);
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn prepare_home_creates_private_dirs_and_refuses_foreign_ones() {
        let t = tempfile::tempdir().expect("tempdir");
        let me = nix::unistd::geteuid().as_raw();
        let home = t.path().join("h");
        prepare_home(&home, me).expect("fresh home");
        for d in [home.clone(), home.join("tmp")] {
            let m = std::fs::symlink_metadata(&d).expect("made");
            assert_eq!(m.permissions().mode() & 0o7777, 0o700, "{d:?}");
        }
        prepare_home(&home, me).expect("again: the same home");
        let err = prepare_home(&home, me.wrapping_add(1)).expect_err("someone else's");
        assert!(err.to_string().contains("owned by uid"), "{err}");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&home, &link).expect("symlink");
        let err = prepare_home(&link, me).expect_err("a planted link");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn owner_fs_without_switch_changes_nothing() {
        let before = OwnerFs::current();
        let g = OwnerFs::enter(&RunAs {
            uid: 0,
            gid: 0,
            switch: false,
            reason: String::new(),
        })
        .expect("no-op");
        assert_eq!(OwnerFs::current(), before);
        drop(g);
        assert_eq!(OwnerFs::current(), before);
    }

    #[test]
    fn the_capability_list_names_each_reason() {
        let names: Vec<&str> = proto::pod::capability_names().collect();
        for need in [
            "SYS_ADMIN",
            "SETUID",
            "SETGID",
            "SETPCAP",
            "KILL",
            "DAC_READ_SEARCH",
        ] {
            assert!(names.contains(&need), "{need} missing from {names:?}");
        }
        assert!(
            !names.contains(&"SYS_CHROOT"),
            "measured: bwrap does without"
        );
    }

    #[test]
    fn as_root_restores_the_owners_ids() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // On a thread of its own: the ids are per thread.
        std::thread::spawn(|| {
            let run_as = RunAs {
                uid: 54321,
                gid: 54321,
                switch: true,
                reason: "test".into(),
            };
            let _fs = OwnerFs::enter(&run_as).expect("enter");
            assert_eq!(OwnerFs::current(), (54321, 54321));
            assert_eq!(OwnerFs::as_root(OwnerFs::current), (0, 0));
            assert_eq!(OwnerFs::current(), (54321, 54321));
        })
        .join()
        .expect("thread");
    }
}
