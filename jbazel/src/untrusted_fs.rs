//! Files jbazel reads in trees that something else writes: the mirror of the pod's output
//! base (`R/U/H/out`, written by the build in the pod) and the workspace (which the pod may
//! write too). Nothing there may make the desktop read, wait on, or fill memory with
//! anything else.
//!
//! So such a file is opened relative to a root directory the desktop chose (the root itself
//! may be reached through links: the user's filestore path is theirs), and then:
//! - never through a symbolic link: not the last component, not a directory on the way, and
//!   never out of the root (`..`);
//! - without blocking (`O_NONBLOCK`: a FIFO does not hang the command);
//! - checked as a regular file on the open handle (`fstat`: no check-then-open race);
//! - read up to a size cap, or streamed by the caller with its own cap.
//!
//! On Linux the kernel resolves the path (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`, Linux 5.6); where that call is missing or refused (older kernels,
//! seccomp filters), the path is walked one component at a time with
//! `O_NOFOLLOW | O_DIRECTORY`. Directories jbazel makes there are made the same way
//! ([`create_dir_beneath`]).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A file below a root that could not be opened or read the safe way. Every variant names
/// the file (root and relative path joined).
#[derive(Debug, thiserror::Error)]
pub enum UntrustedFileError {
    /// The path goes through a symbolic link, or out of the root (`..`, an absolute path).
    #[error("{} is reached through a symbolic link or leaves {}: not followed", path.display(), root.display())]
    Link { path: PathBuf, root: PathBuf },
    /// The file is a FIFO, a device, a directory, ...
    #[error("{} is not a regular file", path.display())]
    NotRegular { path: PathBuf },
    /// The file is larger than the caller accepts.
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    /// The file (or a directory on the way) cannot be opened, or made.
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The open file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl UntrustedFileError {
    /// Whether the file (or a directory on the way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, UntrustedFileError::Open { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            UntrustedFileError::Link { path, .. }
            | UntrustedFileError::NotRegular { path }
            | UntrustedFileError::TooLarge { path, .. }
            | UntrustedFileError::Open { path, .. }
            | UntrustedFileError::Read { path, .. } => path,
        }
    }
}

/// The normal components of `rel`, or None when it is absolute, empty or climbs (`..`).
fn components(rel: &Path) -> Option<Vec<CString>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(name) => out.push(CString::new(name.as_bytes()).ok()?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

fn cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn last_error<T>() -> std::io::Result<T> {
    Err(std::io::Error::last_os_error())
}

/// `open(2)` of a directory the caller trusts (links followed).
fn open_root(root: &Path) -> std::io::Result<OwnedFd> {
    let c = cstring(root)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return last_error();
    }
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(2)` of one name in `dir`, never following a link there.
fn openat_nofollow(dir: RawFd, name: &CString, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is an open descriptor.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return last_error();
    }
    // SAFETY: `fd` was just returned by openat(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY;

/// Opens the directory `name` in `dir`, never following a link: a link there is `ELOOP`
/// (Linux answers `ENOTDIR` to `O_DIRECTORY | O_NOFOLLOW` on a link; the caller must be able
/// to tell a link from a file).
fn open_dir_nofollow(dir: RawFd, name: &CString) -> std::io::Result<OwnedFd> {
    openat_nofollow(dir, name, DIR_FLAGS).map_err(|e| {
        if e.raw_os_error() != Some(libc::ENOTDIR) {
            return e;
        }
        // SAFETY: an all-zero `stat` is a valid value for fstatat(2) to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `name` is NUL-terminated and `st` writable, both outlive the call.
        let r = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if r == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFLNK {
            std::io::Error::from_raw_os_error(libc::ELOOP)
        } else {
            e
        }
    })
}
const FILE_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;

/// `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; None when the kernel or a
/// sandbox does not offer it (then the caller walks).
#[cfg(target_os = "linux")]
fn openat2_beneath(dir: RawFd, rel: &Path, flags: libc::c_int) -> Option<std::io::Result<OwnedFd>> {
    /// `struct open_how` (linux/openat2.h); libc's is not constructible outside libc.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let c = match cstring(rel) {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let how = OpenHow {
        flags: (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: `c` and `how` outlive the call, and the size passed is `how`'s.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        // Missing (Linux < 5.6), or refused by a seccomp filter that does not know it.
        return match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EPERM) => None,
            _ => Some(Err(e)),
        };
    }
    // SAFETY: `fd` was just returned by openat2(2) and is owned by nobody else.
    Some(Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

#[cfg(not(target_os = "linux"))]
fn openat2_beneath(_: RawFd, _: &Path, _: libc::c_int) -> Option<std::io::Result<OwnedFd>> {
    None
}

/// Opens `rel` below the open directory `dir` with `flags` for the last component: by
/// `openat2`, else by [`walk`].
fn open_below(
    dir: &OwnedFd,
    rel: &Path,
    names: &[CString],
    flags: libc::c_int,
) -> std::io::Result<OwnedFd> {
    match openat2_beneath(dir.as_raw_fd(), rel, flags) {
        // `O_DIRECTORY | O_NOFOLLOW` on a link is ENOTDIR: the walk tells a link apart.
        Some(Err(e))
            if e.raw_os_error() == Some(libc::ENOTDIR) && flags & libc::O_DIRECTORY != 0 =>
        {
            walk(dir, names, flags)
        }
        Some(result) => result,
        None => walk(dir, names, flags),
    }
}

/// Opens `names` below `dir` one component at a time, each directory with
/// `O_NOFOLLOW | O_DIRECTORY`, the last with `flags | O_NOFOLLOW`.
fn walk(dir: &OwnedFd, names: &[CString], flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let Some((last, dirs)) = names.split_last() else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    let mut here: Option<OwnedFd> = None;
    for name in dirs {
        let at = here.as_ref().unwrap_or(dir).as_raw_fd();
        here = Some(open_dir_nofollow(at, name)?);
    }
    let at = here.as_ref().unwrap_or(dir).as_raw_fd();
    if flags & libc::O_DIRECTORY != 0 {
        open_dir_nofollow(at, last)
    } else {
        openat_nofollow(at, last, flags)
    }
}

/// The error for a failed open: a link (or a way out of the root) is named as such.
fn open_error(root: &Path, rel: &Path, e: std::io::Error) -> UntrustedFileError {
    let path = root.join(rel);
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => UntrustedFileError::Link {
            path,
            root: root.to_path_buf(),
        },
        _ => UntrustedFileError::Open { path, source: e },
    }
}

/// What every operation below `root` starts with: the full path (for errors), the
/// components of `rel` (none may be `..` or absolute), and `root` opened.
fn start(root: &Path, rel: &Path) -> Result<(PathBuf, Vec<CString>, OwnedFd), UntrustedFileError> {
    let path = root.join(rel);
    let names = components(rel).ok_or_else(|| UntrustedFileError::Link {
        path: path.clone(),
        root: root.to_path_buf(),
    })?;
    let dir = open_root(root).map_err(|source| UntrustedFileError::Open {
        path: path.clone(),
        source,
    })?;
    Ok((path, names, dir))
}

/// Opens the regular file `rel` below `root` for reading, the safe way (see the module
/// doc). The handle is non-blocking, which changes nothing for a regular file.
pub fn open_beneath(root: &Path, rel: &Path) -> Result<File, UntrustedFileError> {
    let (path, names, dir) = start(root, rel)?;
    let fd = open_below(&dir, rel, &names, FILE_FLAGS).map_err(|e| open_error(root, rel, e))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|source| UntrustedFileError::Read {
        path: path.clone(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(UntrustedFileError::NotRegular { path });
    }
    Ok(file)
}

/// The whole regular file `rel` below `root`, opened as [`open_beneath`] does; a file over
/// `limit` bytes is an error, found from its size before anything is read (and again while
/// reading, should it grow).
pub fn read_beneath(root: &Path, rel: &Path, limit: u64) -> Result<Vec<u8>, UntrustedFileError> {
    let file = open_beneath(root, rel)?;
    let path = || root.join(rel);
    let size = file
        .metadata()
        .map_err(|source| UntrustedFileError::Read {
            path: path(),
            source,
        })?
        .len();
    if size > limit {
        return Err(UntrustedFileError::TooLarge {
            path: path(),
            limit,
        });
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| UntrustedFileError::Read {
            path: path(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(UntrustedFileError::TooLarge {
            path: path(),
            limit,
        });
    }
    Ok(buf)
}

/// [`read_beneath`] as text (invalid UTF-8 replaced).
pub fn read_beneath_to_string(
    root: &Path,
    rel: &Path,
    limit: u64,
) -> Result<String, UntrustedFileError> {
    read_beneath(root, rel, limit).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Makes the directory `rel` below `root` and any missing parents (`mkdirat`, mode 0777
/// less the umask), never through a link: an existing link where a directory should be is
/// an error, not followed. Returns the directory, open (e.g. for `fchown`).
pub fn create_dir_beneath(root: &Path, rel: &Path) -> Result<File, UntrustedFileError> {
    let (_, names, mut here) = start(root, rel)?;
    let mut done = PathBuf::new();
    for name in &names {
        done.push(std::ffi::OsStr::from_bytes(name.as_bytes()));
        // SAFETY: `name` is NUL-terminated and outlives the call; `here` is open.
        let made = unsafe { libc::mkdirat(here.as_raw_fd(), name.as_ptr(), 0o777) };
        if made != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(UntrustedFileError::Open {
                    path: root.join(&done),
                    source: e,
                });
            }
        }
        here = open_dir_nofollow(here.as_raw_fd(), name).map_err(|e| open_error(root, &done, e))?;
    }
    Ok(File::from(here))
}

/// Opens the existing directory `rel` below `root`, never through a link.
pub fn open_dir_beneath(root: &Path, rel: &Path) -> Result<File, UntrustedFileError> {
    let (_, names, dir) = start(root, rel)?;
    open_below(&dir, rel, &names, DIR_FLAGS)
        .map(File::from)
        .map_err(|e| open_error(root, rel, e))
}

/// Removes the file `rel` below `root` (`unlinkat` in its directory, opened as
/// [`open_dir_beneath`] does): a link on the way is an error, never followed; a link as the
/// last component is removed itself, not its target.
pub fn remove_file_beneath(root: &Path, rel: &Path) -> Result<(), UntrustedFileError> {
    let path = root.join(rel);
    let names = components(rel).ok_or_else(|| UntrustedFileError::Link {
        path: path.clone(),
        root: root.to_path_buf(),
    })?;
    let Some((name, dirs)) = names.split_last() else {
        return Err(UntrustedFileError::Link {
            path,
            root: root.to_path_buf(),
        });
    };
    let dir = if dirs.is_empty() {
        File::from(open_root(root).map_err(|source| UntrustedFileError::Open {
            path: path.clone(),
            source,
        })?)
    } else {
        let parent = rel.parent().unwrap_or(Path::new(""));
        open_dir_beneath(root, parent)?
    };
    // SAFETY: `name` is NUL-terminated and outlives the call; `dir` is open.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(UntrustedFileError::Open {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `f` on a thread and fails the test if it does not return within `limit`: what
/// reads the pod's files must not block, and a blocking open or read would hang the test
/// run instead of failing it. For this crate's tests.
#[cfg(test)]
pub(crate) fn within<T: Send + 'static>(
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("returned in time, without blocking")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, FileTypeExt};
    use std::time::{Duration, Instant};

    use super::within;

    /// [`walk`] from `root` (the fallback without openat2).
    fn walked(root: &Path, rel: &str, flags: libc::c_int) -> std::io::Result<OwnedFd> {
        let dir = open_root(root).expect("root");
        walk(&dir, &components(Path::new(rel)).expect("names"), flags)
    }

    #[test]
    fn the_walk_refuses_what_openat2_refuses() {
        let t = tempfile::tempdir().expect("tempdir");
        let secret = tempfile::tempdir().expect("tempdir");
        let canary = canary(secret.path());
        std::fs::create_dir_all(t.path().join("a/b")).expect("mkdir");
        std::fs::write(t.path().join("a/b/f"), "ok").expect("write");
        symlink(&canary, t.path().join("a/b/link")).expect("symlink");
        symlink(secret.path(), t.path().join("a/d")).expect("symlink");
        symlink("b", t.path().join("a/inside")).expect("symlink");
        let f = walked(t.path(), "a/b/f", FILE_FLAGS).expect("a file");
        let mut text = String::new();
        File::from(f).read_to_string(&mut text).expect("read");
        assert_eq!(text, "ok");
        for rel in ["a/b/link", "a/d/canary", "a/inside/f"] {
            let e = walked(t.path(), rel, FILE_FLAGS).expect_err(rel);
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{rel}: {e}");
        }
        assert!(walked(t.path(), "a/b", DIR_FLAGS).is_ok());
        let e = walked(t.path(), "a/d", DIR_FLAGS).expect_err("linked dir");
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let e = walked(t.path(), "a/b/f/x", FILE_FLAGS).expect_err("a file as a dir");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        // A FIFO opens without blocking (then fstat refuses it).
        nix::unistd::mkfifo(
            &t.path().join("a/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let root = t.path().to_path_buf();
        let fifo = within(Duration::from_secs(10), move || {
            walked(&root, "a/fifo", FILE_FLAGS).map(File::from)
        })
        .expect("opened");
        assert!(fifo.metadata().expect("stat").file_type().is_fifo());
    }

    fn canary(dir: &Path) -> PathBuf {
        let p = dir.join("canary");
        std::fs::write(&p, "CANARY-SECRET").expect("write canary");
        p
    }

    fn assert_no_canary(r: &Result<Vec<u8>, UntrustedFileError>) {
        if let Ok(bytes) = r {
            assert!(
                !String::from_utf8_lossy(bytes).contains("CANARY"),
                "canary leaked"
            );
        }
    }

    #[test]
    fn reads_a_regular_file_below_the_root() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(t.path().join("server")).expect("mkdir");
        std::fs::write(t.path().join("server/request_cookie"), "abc").expect("write");
        let got = read_beneath(t.path(), Path::new("server/request_cookie"), 64).expect("read");
        assert_eq!(got, b"abc");
        // The root itself may be reached through a link (the user's filestore path).
        let alias = t.path().with_extension("alias");
        symlink(t.path(), &alias).expect("symlink");
        let got = read_beneath(&alias, Path::new("server/request_cookie"), 64);
        std::fs::remove_file(&alias).expect("rm alias");
        assert_eq!(got.expect("read through the root's link"), b"abc");
        let err = read_beneath(t.path(), Path::new("server/none"), 64).expect_err("missing");
        assert!(err.is_not_found(), "{err}");
        assert_eq!(err.path(), t.path().join("server/none"));
    }

    #[test]
    fn a_linked_file_is_refused_and_its_target_never_read() {
        let t = tempfile::tempdir().expect("tempdir");
        let secret = tempfile::tempdir().expect("tempdir");
        let canary = canary(secret.path());
        std::fs::create_dir(t.path().join("server")).expect("mkdir");
        symlink(&canary, t.path().join("server/request_cookie")).expect("symlink");
        let r = read_beneath(t.path(), Path::new("server/request_cookie"), 4096);
        assert_no_canary(&r);
        let err = r.expect_err("refused");
        assert!(matches!(err, UntrustedFileError::Link { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_linked_directory_on_the_way_is_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let secret = tempfile::tempdir().expect("tempdir");
        std::fs::write(secret.path().join("request_cookie"), "CANARY-SECRET").expect("write");
        symlink(secret.path(), t.path().join("server")).expect("symlink");
        let r = read_beneath(t.path(), Path::new("server/request_cookie"), 4096);
        assert_no_canary(&r);
        assert!(matches!(r, Err(UntrustedFileError::Link { .. })), "{r:?}");
        // And by the walk the fallback takes (no openat2).
        let walked = walked(t.path(), "server/request_cookie", FILE_FLAGS);
        assert_eq!(
            walked.expect_err("refused").raw_os_error(),
            Some(libc::ELOOP)
        );
        // A link inside the root to another file inside is refused as well: no link at all.
        std::fs::create_dir(t.path().join("real")).expect("mkdir");
        std::fs::write(t.path().join("real/f"), "x").expect("write");
        symlink("real", t.path().join("alias")).expect("symlink");
        assert!(read_beneath(t.path(), Path::new("alias/f"), 64).is_err());
    }

    #[test]
    fn paths_out_of_the_root_are_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join("in")).expect("mkdir");
        canary(t.path());
        for rel in ["../canary", "in/../../canary", "/etc/passwd", ""] {
            let r = read_beneath(&t.path().join("in"), Path::new(rel), 4096);
            assert_no_canary(&r);
            assert!(
                matches!(r, Err(UntrustedFileError::Link { .. })),
                "{rel}: {r:?}"
            );
        }
    }

    #[test]
    fn a_fifo_is_refused_promptly() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join("server")).expect("mkdir");
        let fifo = t.path().join("server/request_cookie");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let root = t.path().to_path_buf();
        let start = Instant::now();
        let r = within(Duration::from_secs(10), move || {
            read_beneath(&root, Path::new("server/request_cookie"), 4096)
        });
        assert!(
            matches!(r, Err(UntrustedFileError::NotRegular { .. })),
            "{r:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_link_to_dev_zero_neither_hangs_nor_fills_memory() {
        let t = tempfile::tempdir().expect("tempdir");
        symlink("/dev/zero", t.path().join("client-env")).expect("symlink");
        let root = t.path().to_path_buf();
        let r = within(Duration::from_secs(10), move || {
            read_beneath(&root, Path::new("client-env"), 4096)
        });
        assert!(matches!(r, Err(UntrustedFileError::Link { .. })), "{r:?}");
        // Nor a directory, read as a file.
        std::fs::create_dir(t.path().join("d")).expect("mkdir");
        let r = read_beneath(t.path(), Path::new("d"), 4096);
        assert!(
            matches!(r, Err(UntrustedFileError::NotRegular { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn an_oversize_file_is_an_error_found_from_its_size() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::write(t.path().join("f"), vec![b'x'; 65]).expect("write");
        let err = read_beneath(t.path(), Path::new("f"), 64).expect_err("too large");
        assert!(
            matches!(err, UntrustedFileError::TooLarge { limit: 64, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("larger than 64 bytes"), "{err}");
        assert_eq!(
            read_beneath(t.path(), Path::new("f"), 65)
                .expect("fits")
                .len(),
            65
        );
        // A sparse file of 1 TiB costs nothing to read this way.
        let sparse = File::create(t.path().join("sparse")).expect("create");
        sparse.set_len(1 << 40).expect("set_len");
        let root = t.path().to_path_buf();
        let r = within(Duration::from_secs(10), move || {
            read_beneath(&root, Path::new("sparse"), 1 << 20)
        });
        assert!(
            matches!(r, Err(UntrustedFileError::TooLarge { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn directories_are_made_without_following_links() {
        let t = tempfile::tempdir().expect("tempdir");
        let made = create_dir_beneath(t.path(), Path::new("jbazel/files")).expect("mkdir");
        assert!(made.metadata().expect("stat").is_dir());
        assert!(t.path().join("jbazel/files").is_dir());
        // Again: it is there, fine.
        create_dir_beneath(t.path(), Path::new("jbazel/files")).expect("again");
        open_dir_beneath(t.path(), Path::new("jbazel/files")).expect("open");
        // A link planted where a directory goes is not followed: nothing is made at its
        // target.
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let t2 = tempfile::tempdir().expect("tempdir");
        symlink(elsewhere.path(), t2.path().join("jbazel")).expect("symlink");
        let err = create_dir_beneath(t2.path(), Path::new("jbazel/files")).expect_err("link");
        assert!(matches!(err, UntrustedFileError::Link { .. }), "{err}");
        assert!(
            !elsewhere.path().join("files").exists(),
            "nothing made through the link"
        );
        let err = open_dir_beneath(t2.path(), Path::new("jbazel")).expect_err("link");
        assert!(matches!(err, UntrustedFileError::Link { .. }), "{err}");
        // A link as the last component too.
        std::fs::create_dir(t2.path().join("j2")).expect("mkdir");
        symlink(elsewhere.path(), t2.path().join("j2/files")).expect("symlink");
        assert!(create_dir_beneath(t2.path(), Path::new("j2/files")).is_err());
        assert!(create_dir_beneath(t2.path(), Path::new("../x")).is_err());
    }

    #[test]
    fn removal_goes_through_no_link() {
        let t = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let victim = elsewhere.path().join("f");
        std::fs::write(&victim, "keep").expect("write");
        symlink(elsewhere.path(), t.path().join("files")).expect("symlink");
        assert!(remove_file_beneath(t.path(), Path::new("files/f")).is_err());
        assert!(victim.exists(), "not removed through the linked directory");
        // A link as the last component: the link goes, its target stays.
        symlink(&victim, t.path().join("l")).expect("symlink");
        remove_file_beneath(t.path(), Path::new("l")).expect("rm link");
        assert!(victim.exists() && t.path().join("l").symlink_metadata().is_err());
        std::fs::create_dir(t.path().join("d")).expect("mkdir");
        std::fs::write(t.path().join("d/f"), "x").expect("write");
        remove_file_beneath(t.path(), Path::new("d/f")).expect("rm");
        assert!(!t.path().join("d/f").exists());
    }
}
