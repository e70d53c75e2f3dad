//! `jbazel run` on the desktop with the binary's runfiles.
//!
//! The pod's runfiles tree `<bin>/<pkg>/<name>.runfiles/` is made of absolute symlinks to
//! `/work/out/...` and `/work/src/...`, which dangle on the desktop, and the output base is
//! the pod's (jbazel never writes there). So before exec, jbazel builds a *view* of the tree
//! in a private directory `D` of its own:
//!
//! ```text
//! D/<name>                     -> the desktop path of the binary (links resolved)
//! D/<name>.runfiles/<path>     -> the desktop path of each manifest entry (links resolved)
//! D/<name>.runfiles/MANIFEST   the manifest with those desktop paths
//! D/<name>.runfiles_manifest   the same manifest
//! ```
//!
//! and execs, without a shell, the program [`crate::exec_policy`] admitted, with `D/<name>`
//! in place of the binary's pod path (so `$0.runfiles` and
//! `argv[0].runfiles` are the view), the working directory `<name>.runfiles/__main__` moved
//! into the view, and `RUNFILES_DIR`, `RUNFILES_MANIFEST_FILE` and `JAVA_RUNFILES` naming it.
//!
//! The entries come from the pod's manifest (`<name>.runfiles/MANIFEST`, else
//! `<name>.runfiles_manifest`): one line `<runfiles path> <absolute target>` each, an empty
//! target for an empty file. Each target is translated (`/work/src` -> the workspace root,
//! `/work/out` -> the mirror) and then resolved link by link on the desktop, each link's pod
//! target translated the same way, because the output base holds more pod links on the way
//! (`execroot/__main__/<pkg>` -> `/work/src/<pkg>`, a `sh_binary` -> its source).
//!
//! The output base is written by the pod, so it is untrusted: resolution never leaves the
//! workspace root and the mirror (a link elsewhere, or `..` above them, stops it). Such an
//! entry is left out of the view (and named in a warning); a binary that resolves outside
//! is refused, never executed.
//!
//! `D` is `$XDG_RUNTIME_DIR/jbazel-run/<key>-<content>` (else `$TMPDIR/jbazel-run-<uid>/...`),
//! the base being a 0700 directory owned by the user; `key` hashes the mirror and the
//! binary's pod path, `content` the whole view. A view is built in a temporary directory and
//! renamed into place, so it appears complete or not at all; an identical view is reused
//! (no writes), so concurrent runs of one build share it; older views of the same binary
//! are removed, as a rebuild replaces Bazel's own tree.
//!
//! The module along its pure/I-O seam:
//! - `resolve` (pure, links read through [`crate::paths::ReadLink`]): [`desktop_path`],
//!   [`Resolver`], [`Escape`];
//! - `manifest` (pure): [`parse_manifest`];
//! - `plan` (pure): [`locate`], [`plan_tree`], [`plan_view`], [`view_key`];
//! - `desktop_request` (pure): [`view_request`], [`plain_request`];
//! - `materialize` (I/O): [`default_base`], [`materialize`], [`sweep`];
//! - here (I/O): [`prepare`], which reads the manifest, plans, materializes, rewrites the
//!   request and checks the binary on disk ([`check_binary`]).

mod desktop_request;
#[cfg(test)]
mod fixtures;
mod manifest;
mod materialize;
mod plan;
mod resolve;

pub use desktop_request::{plain_request, view_request, Desktop, RUNFILES_VARS};
pub use manifest::{parse_manifest, Entry};
use materialize::private_dir;
pub use materialize::{default_base, materialize, sweep};
pub use plan::{
    locate, plan_tree, plan_view, view_key, Located, Node, SkipReason, Skipped, TreePlan, View,
};
pub use resolve::{desktop_path, Escape, Resolver};

use crate::exec_policy::{self, Program, Refusal};
use crate::paths::{self, PathMap};
use proto::command_server::ExecRequest;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Why `jbazel run` cannot exec; each names its path.
#[derive(Debug, thiserror::Error)]
pub enum RunfilesError {
    /// The binary resolves outside the workspace and the output base.
    #[error("refusing to run {}: {why}", executable.display())]
    ExecutableOutside { executable: PathBuf, why: Escape },
    /// The working directory resolves outside the workspace and the output base.
    #[error("refusing to run in {}: {why}", dir.display())]
    WorkingDirectoryOutside { dir: PathBuf, why: Escape },
    /// The manifest is a build output: read as anything the pod writes (no FIFO, no
    /// device, a size cap), the source names it.
    #[error("cannot read the runfiles manifest")]
    ReadManifest(#[source] crate::untrusted_fs::UntrustedFileError),
    #[error("cannot create the directory for desktop runfiles {}", path.display())]
    Base {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not a private directory of this user (owner uid {uid}, mode {mode:o}); remove \
         it, or set XDG_RUNTIME_DIR or TMPDIR elsewhere",
        path.display()
    )]
    NotPrivate { path: PathBuf, uid: u32, mode: u32 },
    #[error("cannot create {} for the desktop runfiles", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The exec request breaks [`exec_policy`]'s rules.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl RunfilesError {
    /// Whether jbazel refused the server's request (as opposed to a local I/O failure).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            RunfilesError::ExecutableOutside { .. }
                | RunfilesError::WorkingDirectoryOutside { .. }
                | RunfilesError::Refused(_)
        )
    }
}

fn os(b: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(b.to_vec()))
}

fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// `root/rest` without the trailing `/` that `join("")` would add.
fn join(root: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rest)
    }
}

/// What [`prepare`] made.
#[derive(Debug)]
pub struct Prepared {
    /// The request to exec, with desktop paths.
    pub request: ExecRequest,
    /// `D`, when the binary has runfiles.
    pub view: Option<PathBuf>,
    /// Whether an identical view was already there.
    pub reused: bool,
    /// The binary's pod path (for messages).
    pub executable: Option<PathBuf>,
    /// Entries left out of the view.
    pub skipped: Vec<Skipped>,
}

impl Prepared {
    /// One line about the entries left out, if any.
    pub fn warning(&self) -> Option<String> {
        let first = self.skipped.first()?;
        let mut s = format!(
            "{} runfile(s) of {} left out of the desktop runfiles {}: {} ({})",
            self.skipped.len(),
            self.executable
                .as_deref()
                .unwrap_or(Path::new("the binary"))
                .display(),
            self.view.as_deref().unwrap_or(Path::new("view")).display(),
            first.path.display(),
            first.why
        );
        for more in self.skipped.iter().skip(1).take(2) {
            s.push_str(&format!("; {} ({})", more.path.display(), more.why));
        }
        if self.skipped.len() > 3 {
            s.push_str(&format!("; and {} more", self.skipped.len() - 3));
        }
        Some(s)
    }
}

/// The largest runfiles manifest jbazel reads (a line per runfile: 64 MiB is millions).
const MANIFEST_MAX_BYTES: u64 = 64 << 20;

/// Reads the pod's manifest of `loc` (`X.runfiles/MANIFEST`, else `X.runfiles_manifest`);
/// None when there is none the desktop can read.
fn read_manifest(loc: &Located, res: &mut Resolver) -> Result<Option<Vec<u8>>, RunfilesError> {
    let mut sibling = loc.runfiles.clone().into_os_string();
    sibling.push("_manifest");
    for pod in [loc.runfiles.join("MANIFEST"), PathBuf::from(sibling)] {
        let Ok(path) = res.resolve_pod(&pod) else {
            tracing::debug!(manifest = %pod.display(), "runfiles manifest not in the user's directories");
            continue;
        };
        // `path` is resolved already: its last component is opened without following a
        // link, without blocking, checked as a regular file and read with a cap.
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            continue;
        };
        match crate::untrusted_fs::read_beneath(dir, Path::new(name), MANIFEST_MAX_BYTES) {
            Ok(text) => return Ok(Some(text)),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(RunfilesError::ReadManifest(e)),
        }
    }
    Ok(None)
}

/// The directories a binary may resolve into: the workspace root, the mirror's `src` and
/// `out`, their aliases, and the canonical spelling of each.
pub fn binary_roots(map: &PathMap) -> Vec<PathBuf> {
    let mut roots = vec![
        map.desktop_root.clone(),
        map.mirror_src.clone(),
        map.mirror_out.clone(),
    ];
    roots.extend(map.aliases.iter().map(|(p, _)| p.clone()));
    let canonical: Vec<PathBuf> = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    roots.extend(canonical);
    roots.sort();
    roots.dedup();
    roots
}

/// [`exec_policy`]'s last rule on disk: the binary, its links resolved as `execve` would
/// resolve them, lies inside [`binary_roots`].
pub fn check_binary(binary: &Path, map: &PathMap) -> Result<(), Refusal> {
    let resolved = std::fs::canonicalize(binary).map_err(|e| e.to_string());
    exec_policy::check_resolved(binary, resolved, &binary_roots(map))
}

/// Makes `bazel run`'s exec request runnable on the desktop: with a runfiles view in
/// [`default_base`] when the binary has runfiles, else with its paths translated and
/// resolved. `program` is what [`exec_policy::admit`] made of the request.
pub fn prepare(
    req: &ExecRequest,
    program: &Program,
    map: &PathMap,
) -> Result<Prepared, RunfilesError> {
    prepare_in(req, program, map, &default_base())
}

/// [`prepare`] with the views in `base`.
pub fn prepare_in(
    req: &ExecRequest,
    program: &Program,
    map: &PathMap,
    base: &Path,
) -> Result<Prepared, RunfilesError> {
    let started = Instant::now();
    let mut res = Resolver::new(map, &paths::DiskLinks);
    let plain = |res: &mut Resolver| -> Result<Prepared, RunfilesError> {
        let desktop = plain_request(req, program, map, res)?;
        check_binary(&desktop.binary, map)?;
        Ok(Prepared {
            request: desktop.request,
            view: None,
            reused: false,
            executable: None,
            skipped: Vec::new(),
        })
    };
    let Some(loc) = locate(req) else {
        return plain(&mut res);
    };
    let Some(manifest) = read_manifest(&loc, &mut res)? else {
        tracing::debug!(runfiles = %loc.runfiles.display(), "no runfiles manifest; running without a view");
        return plain(&mut res);
    };
    let view = plan_view(&loc, &manifest, &mut res)?;
    private_dir(base)?;
    let key = view_key(map, &loc);
    let (dir, reused) = materialize(base, &key, &view)?;
    sweep(base, &key, &dir);
    tracing::debug!(view = %dir.display(), entries = view.tree.links.len(),
        skipped = view.tree.skipped.len(), lookups = res.lookups(), reused,
        took_us = started.elapsed().as_micros() as u64, "desktop runfiles");
    let desktop = view_request(req, program, map, &loc, &dir, &view, &mut res)?;
    check_binary(&desktop.binary, map)?;
    Ok(Prepared {
        request: desktop.request,
        view: Some(dir),
        reused,
        executable: Some(loc.executable),
        skipped: view.tree.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runfiles::fixtures::*;

    #[test]
    fn a_fifo_for_a_manifest_is_refused_at_once() {
        // The pod's build made the manifest a FIFO: a plain read would wait for a writer.
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("ws");
        let m = PathMap::new(&root, &t.path().join("fs"), "alice", "h");
        let bin = m
            .mirror_out
            .join("execroot/__main__/bazel-out/k8-fastbuild/bin/pkg");
        std::fs::create_dir_all(root.join("pkg")).expect("mkdir");
        std::fs::create_dir_all(bin.join("tool.runfiles/__main__")).expect("mkdir");
        std::fs::write(root.join("pkg/tool.sh"), "#!/bin/sh\n").expect("write");
        std::os::unix::fs::symlink("/work/src/pkg/tool.sh", bin.join("tool")).expect("link");
        nix::unistd::mkfifo(
            &bin.join("tool.runfiles/MANIFEST"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let req = exec_request(
            &format!("{BIN}/pkg/tool.runfiles/__main__"),
            &format!("{BIN}/pkg/tool"),
        );
        let base = t.path().join("jbazel-run");
        let got = crate::untrusted_fs::within(std::time::Duration::from_secs(10), move || {
            let prog = program(&req);
            prepare_in(&req, &prog, &m, &base).map(|_| ())
        });
        let err = got.expect_err("refused");
        assert!(
            matches!(
                err,
                RunfilesError::ReadManifest(
                    crate::untrusted_fs::UntrustedFileError::NotRegular { .. }
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn prepare_on_disk_end_to_end() {
        // A pod output base on disk: the binary and a data file through pod links.
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("ws");
        let fs_root = t.path().join("fs");
        let m = PathMap::new(&root, &fs_root, "alice", "h");
        let bin = m
            .mirror_out
            .join("execroot/__main__/bazel-out/k8-fastbuild/bin/pkg");
        std::fs::create_dir_all(root.join("pkg")).expect("mkdir");
        std::fs::create_dir_all(bin.join("tool.runfiles/__main__/pkg")).expect("mkdir");
        std::fs::write(root.join("pkg/tool.sh"), "#!/bin/sh\n").expect("write");
        std::fs::write(root.join("pkg/data.txt"), "data\n").expect("write");
        std::os::unix::fs::symlink("/work/src/pkg/tool.sh", bin.join("tool")).expect("link");
        let manifest = format!(
            "__main__/pkg/data.txt /work/src/pkg/data.txt\n__main__/pkg/tool {BIN}/pkg/tool\n"
        );
        std::fs::write(bin.join("tool.runfiles/MANIFEST"), &manifest).expect("write");
        let req = exec_request(
            &format!("{BIN}/pkg/tool.runfiles/__main__"),
            &format!("{BIN}/pkg/tool 1"),
        );
        let base = t.path().join("jbazel-run");
        let prog = program(&req);
        let p = prepare_in(&req, &prog, &m, &base).expect("prepared");
        let dir = p.view.clone().expect("a view");
        assert!(dir.starts_with(&base));
        assert!(!p.reused);
        assert!(p.warning().is_none());
        let data = std::fs::read_to_string(dir.join("tool.runfiles/__main__/pkg/data.txt"))
            .expect("data through the view");
        assert_eq!(data, "data\n");
        assert_eq!(
            std::fs::read_link(dir.join("tool")).expect("link"),
            root.join("pkg/tool.sh")
        );
        assert_eq!(
            argv_of(&p.request),
            [format!("{}/tool", dir.display()), "1".to_string()]
        );
        let p2 = prepare_in(&req, &prog, &m, &base).expect("again");
        assert_eq!((p2.view.as_deref(), p2.reused), (Some(dir.as_path()), true));
        // The output base was not touched.
        assert_eq!(
            std::fs::read_to_string(bin.join("tool.runfiles/MANIFEST")).expect("read"),
            manifest
        );
        // A base another user could enter is refused.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = prepare_in(&req, &prog, &m, &base).expect_err("not private");
        assert!(matches!(err, RunfilesError::NotPrivate { .. }), "{err}");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).expect("chmod");

        // A binary that is, on disk, a link out of the workspace is refused (no view).
        std::fs::remove_file(root.join("pkg/tool.sh")).expect("rm");
        std::os::unix::fs::symlink("/bin/true", root.join("pkg/tool.sh")).expect("link");
        let req = exec_request("/work/src", "/work/src/pkg/tool.sh");
        let err = prepare_in(&req, &program(&req), &m, &base).expect_err("outside");
        assert!(err.is_refusal(), "{err}");
        assert!(err.to_string().contains("/bin/true"), "{err}");

        // The last check itself: a desktop path that resolves elsewhere.
        let err = check_binary(&root.join("pkg/tool.sh"), &m).expect_err("outside");
        assert!(matches!(err, Refusal::Outside { .. }), "{err}");
        check_binary(&root.join("pkg/data.txt"), &m).expect("inside");
        let err = check_binary(&root.join("pkg/missing"), &m).expect_err("missing");
        assert!(matches!(err, Refusal::Unresolvable { .. }), "{err}");
    }
}
