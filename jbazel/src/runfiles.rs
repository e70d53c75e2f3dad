//! `jbazel run` on the desktop with the binary's runfiles (issue 11, point 5).
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
//! and execs with `D/<name>` in place of the binary's pod path (so `$0.runfiles` and
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
//! Pure planning: [`locate`], [`parse_manifest`], [`Resolver`], [`plan_tree`], [`plan_view`],
//! [`view_request`], [`plain_request`]; I/O: [`prepare`].

use crate::exec_policy::{self, Program, Refusal};
use crate::paths::{self, PathMap, ReadLink, Rewriter, POD_OUT, POD_SRC};
use md5::{Digest, Md5};
use proto::command_server::{EnvironmentVariable, ExecRequest};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Symlinks followed at most while resolving one path, as the kernel.
const MAX_HOPS: u32 = 40;
/// Part of every view's content hash: a new layout never reuses an old view.
const LAYOUT: &[u8] = b"jbazel-runfiles-view-1";
/// Suffix of a runfiles directory.
const RUNFILES: &str = ".runfiles";
/// The variables jbazel sets to the view (any value the server sent is replaced).
pub const RUNFILES_VARS: [&str; 3] = ["RUNFILES_DIR", "RUNFILES_MANIFEST_FILE", "JAVA_RUNFILES"];
/// A temporary view older than this is left over by a killed jbazel.
const STALE_TMP: Duration = Duration::from_secs(600);

/// Why a path cannot be used on the desktop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Escape {
    /// Not a `/work/src` or `/work/out` path.
    NotPod { path: PathBuf },
    /// A symlink on the way points outside the workspace and the output base.
    Outside { link: PathBuf, target: PathBuf },
    /// `..` climbs above the workspace root or the output base.
    AboveRoot { path: PathBuf },
    /// More than 40 symlinks.
    Loop { path: PathBuf },
}

impl fmt::Display for Escape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Escape::NotPod { path } => write!(
                f,
                "{} is under neither {POD_SRC} nor {POD_OUT}",
                path.display()
            ),
            Escape::Outside { link, target } => write!(
                f,
                "{} is a symlink to {}, outside the workspace and the output base",
                link.display(),
                target.display()
            ),
            Escape::AboveRoot { path } => write!(
                f,
                "{} climbs out of the workspace or the output base",
                path.display()
            ),
            Escape::Loop { path } => {
                write!(f, "too many levels of symbolic links in {}", path.display())
            }
        }
    }
}

/// Why `jbazel run` cannot exec; each names its path.
#[derive(Debug, thiserror::Error)]
pub enum RunfilesError {
    /// The binary resolves outside the workspace and the output base.
    #[error("refusing to run {}: {why}", executable.display())]
    ExecutableOutside { executable: PathBuf, why: Escape },
    /// The working directory resolves outside the workspace and the output base.
    #[error("refusing to run in {}: {why}", dir.display())]
    WorkingDirectoryOutside { dir: PathBuf, why: Escape },
    #[error("cannot read the runfiles manifest {}", path.display())]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// The desktop spelling of a pod path (`/work/src` -> root, `/work/out` -> mirror), or
/// None for any other path. Whole components only: `/work/srcs` is not a pod path.
pub fn desktop_path(map: &PathMap, pod: &Path) -> Option<PathBuf> {
    [(POD_SRC, &map.desktop_root), (POD_OUT, &map.mirror_out)]
        .into_iter()
        .find_map(|(prefix, desktop)| {
            pod.strip_prefix(prefix)
                .ok()
                .map(|rest| join(desktop, rest))
        })
}

/// Resolves desktop paths link by link without leaving the user's directories (the
/// workspace root, the mirror's `src` and `out`, and their aliases). Each link's target is
/// read once (memoized), so a tree of many files costs one `readlink` per distinct path.
pub struct Resolver<'a> {
    map: &'a PathMap,
    /// Longest first, so the innermost root matches.
    roots: Vec<PathBuf>,
    fs: &'a dyn ReadLink,
    links: HashMap<PathBuf, Option<PathBuf>>,
}

impl<'a> Resolver<'a> {
    pub fn new(map: &'a PathMap, fs: &'a dyn ReadLink) -> Self {
        let mut roots = vec![
            map.desktop_root.clone(),
            map.mirror_src.clone(),
            map.mirror_out.clone(),
        ];
        roots.extend(map.aliases.iter().map(|(p, _)| p.clone()));
        roots.retain(|p| p.is_absolute());
        roots.sort_by(|a, b| {
            b.components()
                .count()
                .cmp(&a.components().count())
                .then_with(|| a.cmp(b))
        });
        roots.dedup();
        Resolver {
            map,
            roots,
            fs,
            links: HashMap::new(),
        }
    }

    /// How many distinct paths were checked for a link.
    pub fn lookups(&self) -> usize {
        self.links.len()
    }

    fn read_link(&mut self, p: &Path) -> Option<PathBuf> {
        if let Some(t) = self.links.get(p) {
            return t.clone();
        }
        let t = self.fs.read_link(p);
        self.links.insert(p.to_path_buf(), t.clone());
        t
    }

    /// The root `path` lies in (lexically), and the rest.
    fn split_root<'p>(&self, path: &'p Path) -> Option<(PathBuf, &'p Path)> {
        self.roots
            .iter()
            .find_map(|r| path.strip_prefix(r).ok().map(|rest| (r.clone(), rest)))
    }

    /// A pod path resolved to a desktop path with no links left below its root.
    pub fn resolve_pod(&mut self, pod: &Path) -> Result<PathBuf, Escape> {
        let desktop = desktop_path(self.map, pod).ok_or_else(|| Escape::NotPod {
            path: pod.to_path_buf(),
        })?;
        self.resolve(&desktop)
    }

    /// A desktop path inside the user's directories, resolved component by component;
    /// a link's absolute pod target is translated first. Err when the walk would leave them.
    pub fn resolve(&mut self, path: &Path) -> Result<PathBuf, Escape> {
        let outside = || Escape::AboveRoot {
            path: path.to_path_buf(),
        };
        let (mut root, rest) = self.split_root(path).ok_or_else(outside)?;
        let mut cur = root.clone();
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, rest);
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                if cur == root {
                    return Err(outside());
                }
                cur.pop();
                continue;
            }
            let candidate = cur.join(&name);
            let Some(target) = self.read_link(&candidate) else {
                cur = candidate;
                continue;
            };
            hops += 1;
            if hops > MAX_HOPS {
                return Err(Escape::Loop {
                    path: path.to_path_buf(),
                });
            }
            if target.is_absolute() {
                let translated = desktop_path(self.map, &target).unwrap_or_else(|| target.clone());
                let Some((r, rest)) = self.split_root(&translated) else {
                    return Err(Escape::Outside {
                        link: candidate,
                        target,
                    });
                };
                root = r.clone();
                cur = r;
                push_components(&mut pending, rest);
            } else {
                push_components(&mut pending, &target);
            }
        }
        Ok(cur)
    }
}

/// Pushes the components of a relative path so that they pop in order (`.` dropped).
fn push_components(stack: &mut Vec<OsString>, rel: &Path) {
    for c in rel.components().rev() {
        match c {
            Component::Normal(n) => stack.push(n.to_os_string()),
            Component::ParentDir => stack.push("..".into()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

/// Where `bazel run`'s binary and its runfiles are, in the pod's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// `X`: the binary (`/work/out/.../bin/<pkg>/<name>`).
    pub executable: PathBuf,
    /// `X.runfiles`.
    pub runfiles: PathBuf,
    /// The working directory relative to `X.runfiles` (Bazel 4: the workspace name,
    /// `__main__`).
    pub cwd: PathBuf,
}

impl Located {
    /// The binary's file name (`D/<name>` in the view).
    pub fn name(&self) -> &OsStr {
        self.executable.file_name().unwrap_or(OsStr::new("binary"))
    }
}

/// Finds the binary from the exec request: Bazel 4 runs it in `X.runfiles/<workspace>`.
/// None when the working directory is not inside a runfiles tree of the output base.
pub fn locate(req: &ExecRequest) -> Option<Located> {
    let wd = os(&req.working_directory);
    let rel = wd.strip_prefix(POD_OUT).ok()?;
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let runfiles = wd.ancestors().find(|a| {
        a.file_name().is_some_and(|n| {
            let n = n.as_bytes();
            n.len() > RUNFILES.len() && n.ends_with(RUNFILES.as_bytes())
        })
    })?;
    let name = runfiles.file_name()?.as_bytes();
    let executable = runfiles.with_file_name(os(&name[..name.len() - RUNFILES.len()]));
    Some(Located {
        cwd: wd.strip_prefix(runfiles).ok()?.to_path_buf(),
        runfiles: runfiles.to_path_buf(),
        executable,
    })
}

/// One manifest line: a runfiles path and its target (None: an empty file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub target: Option<PathBuf>,
}

/// Bazel 4's runfiles manifest: `<path> <target>\n`, the target empty for an empty file.
pub fn parse_manifest(text: &[u8]) -> Vec<Entry> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| match line.iter().position(|b| *b == b' ') {
            Some(i) => Entry {
                path: line[..i].to_vec(),
                target: Some(&line[i + 1..]).filter(|t| !t.is_empty()).map(os),
            },
            None => Entry {
                path: line.to_vec(),
                target: None,
            },
        })
        .collect()
}

/// A runfiles path usable in the view and in a manifest: relative, no empty, `.` or `..`
/// component, no space or newline, and not the view's own `MANIFEST`.
fn valid_runfiles_path(p: &[u8]) -> bool {
    !p.is_empty()
        && p != b"MANIFEST"
        && !p.iter().any(|b| matches!(b, b' ' | b'\n' | 0))
        && p.split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// What a view entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A symlink to this desktop path.
    Link(PathBuf),
    /// An empty file (an entry without a target).
    Empty,
}

/// Why an entry is left out of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Not a clean relative path (or `MANIFEST`).
    BadPath,
    /// Listed twice; the first one is kept.
    Duplicate,
    /// Below another entry, which is a file or link.
    Below(PathBuf),
    /// Its target cannot be used on the desktop.
    Escape(Escape),
    /// Its desktop target has a newline, which a manifest cannot hold.
    Unwritable,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::BadPath => f.write_str("not a clean relative runfiles path"),
            SkipReason::Duplicate => f.write_str("listed twice"),
            SkipReason::Below(p) => write!(f, "below the entry {}", p.display()),
            SkipReason::Escape(e) => e.fmt(f),
            SkipReason::Unwritable => f.write_str("its desktop path has a newline"),
        }
    }
}

/// An entry left out, for the warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: SkipReason,
}

/// The runfiles part of a view: `(path relative to <name>.runfiles, node)`, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreePlan {
    pub links: Vec<(PathBuf, Node)>,
    pub skipped: Vec<Skipped>,
}

impl TreePlan {
    /// The view's manifest: Bazel 4's format with the desktop targets.
    pub fn manifest(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, node) in &self.links {
            out.extend_from_slice(bytes(path));
            out.push(b' ');
            if let Node::Link(t) = node {
                out.extend_from_slice(bytes(t));
            }
            out.push(b'\n');
        }
        out
    }
}

/// The view of the pod's manifest entries: each target translated and resolved.
pub fn plan_tree(entries: &[Entry], res: &mut Resolver) -> TreePlan {
    let mut skipped = Vec::new();
    let mut kept: BTreeMap<PathBuf, Node> = BTreeMap::new();
    for e in entries {
        let path = os(&e.path);
        let mut skip = |why| {
            skipped.push(Skipped {
                path: path.clone(),
                why,
            })
        };
        if !valid_runfiles_path(&e.path) {
            skip(SkipReason::BadPath);
            continue;
        }
        if kept.contains_key(&path) {
            skip(SkipReason::Duplicate);
            continue;
        }
        let node = match &e.target {
            None => Node::Empty,
            Some(t) => match res.resolve_pod(t) {
                Ok(d) if d.as_os_str().as_bytes().contains(&b'\n') => {
                    skip(SkipReason::Unwritable);
                    continue;
                }
                Ok(d) => Node::Link(d),
                Err(why) => {
                    skip(SkipReason::Escape(why));
                    continue;
                }
            },
        };
        kept.insert(path, node);
    }
    // An entry inside another entry (a file or a link) cannot be created; keep the outer.
    let mut links: Vec<(PathBuf, Node)> = Vec::with_capacity(kept.len());
    for (path, node) in kept {
        let outer = path
            .ancestors()
            .skip(1)
            .find(|a| links.binary_search_by(|(p, _)| p.as_path().cmp(a)).is_ok());
        match outer {
            Some(a) => skipped.push(Skipped {
                why: SkipReason::Below(a.to_path_buf()),
                path,
            }),
            None => links.push((path, node)),
        }
    }
    TreePlan { links, skipped }
}

/// Everything `D` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub name: OsString,
    /// The desktop target of `D/<name>`.
    pub executable: PathBuf,
    /// The working directory, relative to `D/<name>.runfiles`.
    pub cwd: PathBuf,
    pub tree: TreePlan,
}

impl View {
    /// A short hash of the whole view (its directory name).
    pub fn content_hash(&self) -> String {
        let mut h = Md5::new();
        for part in [
            LAYOUT,
            self.name.as_bytes(),
            bytes(&self.executable),
            bytes(&self.cwd),
        ] {
            h.update(part);
            h.update([0]);
        }
        h.update(self.tree.manifest());
        short_hex(h)
    }

    pub fn runfiles_name(&self) -> OsString {
        let mut n = self.name.clone();
        n.push(RUNFILES);
        n
    }
}

fn short_hex(h: Md5) -> String {
    let mut s = hex::encode(h.finalize());
    s.truncate(16);
    s
}

/// The view for a located binary and its pod manifest. Err when the binary itself
/// resolves outside the user's directories.
pub fn plan_view(
    loc: &Located,
    manifest: &[u8],
    res: &mut Resolver,
) -> Result<View, RunfilesError> {
    let executable =
        res.resolve_pod(&loc.executable)
            .map_err(|why| RunfilesError::ExecutableOutside {
                executable: loc.executable.clone(),
                why,
            })?;
    let cwd = if valid_runfiles_path(bytes(&loc.cwd)) {
        loc.cwd.clone()
    } else {
        PathBuf::new()
    };
    Ok(View {
        name: loc.name().to_os_string(),
        executable,
        cwd,
        tree: plan_tree(&parse_manifest(manifest), res),
    })
}

/// Which of a user's views belong to one binary: a hash of the mirror and its pod path.
pub fn view_key(map: &PathMap, loc: &Located) -> String {
    let mut h = Md5::new();
    h.update(bytes(&map.mirror_out));
    h.update([0]);
    h.update(bytes(&loc.executable));
    short_hex(h)
}

fn set_env(req: &mut ExecRequest, name: &str, value: &Path) {
    req.environment_variable
        .retain(|v| v.name.as_slice() != name.as_bytes());
    req.environment_variable.push(EnvironmentVariable {
        name: name.as_bytes().to_vec(),
        value: bytes(value).to_vec(),
    });
}

/// The request to exec on the desktop, and the binary in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desktop {
    /// Desktop paths; argv as [`Program::exec_argv`] makes it.
    pub request: ExecRequest,
    /// The program (first word) on the desktop, which must resolve inside the workspace or
    /// the mirror ([`exec_policy::check_resolved`]).
    pub binary: PathBuf,
}

/// `program` with `binary` first and the other words rewritten by `rw`.
fn desktop_program(program: &Program, binary: &Path, rw: &Rewriter) -> Program {
    let mut argv = vec![bytes(binary).to_vec()];
    argv.extend(program.argv.iter().skip(1).map(|w| rw.rewrite(w)));
    Program {
        argv,
        prefix: program.prefix.clone(),
    }
}

/// The program's pod path resolved on the desktop (refused when it leaves the user's
/// directories).
fn resolve_binary(program: &Program, res: &mut Resolver) -> Result<PathBuf, RunfilesError> {
    let pod = os(program.program());
    res.resolve_pod(&pod)
        .map_err(|why| RunfilesError::ExecutableOutside {
            executable: pod,
            why,
        })
}

/// The exec request for the view in `dir`: the binary's pod path becomes `dir/<name>`, its
/// runfiles `dir/<name>.runfiles` (working directory included), other pod paths desktop
/// paths; `RUNFILES_DIR`, `JAVA_RUNFILES` and `RUNFILES_MANIFEST_FILE` name the view. A
/// program other than the binary (a `--run_under` tool of the output base) is resolved.
pub fn view_request(
    req: &ExecRequest,
    program: &Program,
    map: &PathMap,
    loc: &Located,
    dir: &Path,
    view: &View,
    res: &mut Resolver,
) -> Result<Desktop, RunfilesError> {
    let exe = dir.join(&view.name);
    let runfiles = dir.join(view.runfiles_name());
    let rw = Rewriter::new(vec![
        (bytes(&loc.runfiles).to_vec(), bytes(&runfiles).to_vec()),
        (bytes(&loc.executable).to_vec(), bytes(&exe).to_vec()),
        (POD_SRC.into(), bytes(&map.desktop_root).to_vec()),
        (POD_OUT.into(), bytes(&map.mirror_out).to_vec()),
    ]);
    let binary = if os(program.program()) == loc.executable {
        exe
    } else {
        resolve_binary(program, res)?
    };
    let mut out = paths::rewrite_exec_request(req, &rw);
    out.argv = desktop_program(program, &binary, &rw).exec_argv();
    set_env(&mut out, "RUNFILES_DIR", &runfiles);
    set_env(&mut out, "JAVA_RUNFILES", &runfiles);
    set_env(
        &mut out,
        "RUNFILES_MANIFEST_FILE",
        &runfiles.join("MANIFEST"),
    );
    Ok(Desktop {
        request: out,
        binary,
    })
}

/// The exec request of a binary without a runfiles view: pod paths rewritten, the program
/// and the working directory resolved, both refused when they resolve outside the user's
/// directories.
pub fn plain_request(
    req: &ExecRequest,
    program: &Program,
    map: &PathMap,
    res: &mut Resolver,
) -> Result<Desktop, RunfilesError> {
    let rw = map.to_desktop();
    let mut out = paths::rewrite_exec_request(req, &rw);
    let wd = os(&req.working_directory);
    if desktop_path(map, &wd).is_some() {
        let dir = res
            .resolve_pod(&wd)
            .map_err(|why| RunfilesError::WorkingDirectoryOutside {
                dir: wd.clone(),
                why,
            })?;
        out.working_directory = bytes(&dir).to_vec();
    }
    let binary = resolve_binary(program, res)?;
    out.argv = desktop_program(program, &binary, &rw).exec_argv();
    Ok(Desktop {
        request: out,
        binary,
    })
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
        match std::fs::read(&path) {
            Ok(text) => return Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(RunfilesError::ReadManifest { path, source }),
        }
    }
    Ok(None)
}

/// Where the views live: `$XDG_RUNTIME_DIR/jbazel-run`, else `$TMPDIR/jbazel-run-<uid>`.
pub fn default_base() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        Some(xdg) => xdg.join("jbazel-run"),
        None => {
            std::env::temp_dir().join(format!("jbazel-run-{}", nix::unistd::geteuid().as_raw()))
        }
    }
}

/// Creates `base` 0700 if missing; refuses it unless it is a directory of this user that
/// nobody else can enter (it may be in a shared `/tmp`).
fn private_dir(base: &Path) -> Result<(), RunfilesError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = nix::unistd::geteuid().as_raw();
    let err = |source| RunfilesError::Base {
        path: base.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(err(source)),
    }
    let meta = std::fs::symlink_metadata(base).map_err(err)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(RunfilesError::NotPrivate {
            path: base.to_path_buf(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Creates the view's files under `root` (a new, empty, private directory).
fn write_view(root: &Path, view: &View) -> Result<(), RunfilesError> {
    use std::os::unix::fs::symlink;
    let create = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunfilesError::Create { path, source }
    };
    let exe = root.join(&view.name);
    symlink(&view.executable, &exe).map_err(create(&exe))?;
    let rf = root.join(view.runfiles_name());
    std::fs::create_dir(&rf).map_err(create(&rf))?;
    for (path, node) in &view.tree.links {
        let p = rf.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(create(parent))?;
        }
        match node {
            Node::Link(t) => symlink(t, &p).map_err(create(&p))?,
            Node::Empty => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(create(&p))?;
            }
        }
    }
    let cwd = rf.join(&view.cwd);
    std::fs::create_dir_all(&cwd).map_err(create(&cwd))?;
    let manifest = view.tree.manifest();
    let mut sibling = rf.clone().into_os_string();
    sibling.push("_manifest");
    for path in [rf.join("MANIFEST"), PathBuf::from(sibling)] {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&manifest))
            .map_err(create(&path))?;
    }
    Ok(())
}

/// `base/<key>-<content>`: reused when present, else built beside it and renamed into
/// place. Returns the directory and whether it was reused.
pub fn materialize(base: &Path, key: &str, view: &View) -> Result<(PathBuf, bool), RunfilesError> {
    let dir = base.join(format!("{key}-{}", view.content_hash()));
    if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return Ok((dir, true));
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{key}-"))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(base)
        .map_err(|source| RunfilesError::Create {
            path: base.to_path_buf(),
            source,
        })?;
    write_view(tmp.path(), view)?;
    match std::fs::rename(tmp.path(), &dir) {
        Ok(()) => {
            let _ = tmp.keep();
            Ok((dir, false))
        }
        // Another jbazel made the same view meanwhile (ours is dropped).
        Err(_) if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) => Ok((dir, true)),
        Err(source) => Err(RunfilesError::Create { path: dir, source }),
    }
}

/// Removes the other views of the same binary, and its temporary views left by a killed
/// jbazel. Failures are only logged: the view in use is complete either way.
pub fn sweep(base: &Path, key: &str, keep: &Path) {
    let Ok(list) = std::fs::read_dir(base) else {
        return;
    };
    let (view_prefix, tmp_prefix) = (format!("{key}-"), format!(".tmp-{key}-"));
    for entry in list.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let stale = if name.starts_with(&view_prefix) {
            path != keep
        } else if name.starts_with(&tmp_prefix) {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP)
        } else {
            false
        };
        if stale {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::debug!(path = %path.display(), error = %e, "cannot remove an old runfiles view");
            }
        }
    }
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

    const OUT: &str = "/fs/alice/0123456789abcdef0123456789abcdef/out";
    const BIN: &str = "/work/out/execroot/__main__/bazel-out/k8-fastbuild/bin";

    fn map() -> PathMap {
        PathMap::new(
            Path::new("/home/alice/proj"),
            Path::new("/fs"),
            "alice",
            "0123456789abcdef0123456789abcdef",
        )
    }

    /// A fake filesystem: only its symlinks.
    struct Links(Vec<(String, String)>);
    impl ReadLink for Links {
        fn read_link(&self, path: &Path) -> Option<PathBuf> {
            self.0
                .iter()
                .find(|(l, _)| Path::new(l) == path)
                .map(|(_, t)| PathBuf::from(t))
        }
    }

    /// The links of a pod output base after `bazel build` of a `sh_binary`.
    fn output_base() -> Links {
        let ex = format!("{OUT}/execroot/__main__");
        let bin = format!("{ex}/bazel-out/k8-fastbuild/bin");
        Links(
            [
                (format!("{ex}/runfiles"), "/work/src/runfiles"),
                (
                    format!("{bin}/runfiles/show_data"),
                    "/work/src/runfiles/show_data.sh",
                ),
                (format!("{ex}/external"), "/work/out/external"),
                (
                    format!("{OUT}/external/bazel_tools"),
                    "/usr/share/bazel/embedded_tools",
                ),
                (format!("{OUT}/external/local"), "../execroot/__main__"),
                (format!("{OUT}/external/up"), "../../.."),
                (format!("{OUT}/loop"), "/work/out/loop"),
                (format!("{OUT}/to_home"), "/home/alice/proj/lib"),
                (format!("{OUT}/to_etc"), "/etc/passwd"),
            ]
            .into_iter()
            .map(|(l, t)| (l, t.to_string()))
            .collect(),
        )
    }

    #[test]
    fn resolve_table() {
        let m = map();
        let fs = output_base();
        let mut res = Resolver::new(&m, &fs);
        let ok = |s: &str| Ok(PathBuf::from(s));
        let cases: Vec<(String, Result<PathBuf, Escape>)> = vec![
            (
                "/work/src/runfiles/data.txt".into(),
                ok("/home/alice/proj/runfiles/data.txt"),
            ),
            ("/work/src".into(), ok("/home/alice/proj")),
            (
                format!("{BIN}/runfiles/generated.txt"),
                Ok(PathBuf::from(format!(
                    "{OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin/runfiles/generated.txt"
                ))),
            ),
            // A sh_binary is a link to its source; a package link in the execroot.
            (
                format!("{BIN}/runfiles/show_data"),
                ok("/home/alice/proj/runfiles/show_data.sh"),
            ),
            (
                "/work/out/execroot/__main__/runfiles/data.txt".into(),
                ok("/home/alice/proj/runfiles/data.txt"),
            ),
            // Two links and a relative one.
            (
                "/work/out/execroot/__main__/external/local/runfiles/x".into(),
                ok("/home/alice/proj/runfiles/x"),
            ),
            // A desktop path inside the workspace is fine.
            (
                "/work/out/to_home/greet.h".into(),
                ok("/home/alice/proj/lib/greet.h"),
            ),
            // Outside: the pod's install base, /etc, `..` above the output base.
            (
                "/work/out/external/bazel_tools/tools/bash/runfiles/runfiles.bash".into(),
                Err(Escape::Outside {
                    link: PathBuf::from(format!("{OUT}/external/bazel_tools")),
                    target: PathBuf::from("/usr/share/bazel/embedded_tools"),
                }),
            ),
            (
                "/work/out/to_etc".into(),
                Err(Escape::Outside {
                    link: PathBuf::from(format!("{OUT}/to_etc")),
                    target: PathBuf::from("/etc/passwd"),
                }),
            ),
            (
                "/work/out/external/up/x".into(),
                Err(Escape::AboveRoot {
                    path: PathBuf::from(format!("{OUT}/external/up/x")),
                }),
            ),
            (
                "/work/out/../../etc/passwd".into(),
                Err(Escape::AboveRoot {
                    path: PathBuf::from(format!("{OUT}/../../etc/passwd")),
                }),
            ),
            (
                "/work/out/loop/x".into(),
                Err(Escape::Loop {
                    path: PathBuf::from(format!("{OUT}/loop/x")),
                }),
            ),
            // Not pod paths.
            (
                "/usr/bin/python3".into(),
                Err(Escape::NotPod {
                    path: PathBuf::from("/usr/bin/python3"),
                }),
            ),
            (
                "/work/srcs/x".into(),
                Err(Escape::NotPod {
                    path: PathBuf::from("/work/srcs/x"),
                }),
            ),
            (
                "relative/x".into(),
                Err(Escape::NotPod {
                    path: PathBuf::from("relative/x"),
                }),
            ),
        ];
        for (pod, want) in cases {
            assert_eq!(res.resolve_pod(Path::new(&pod)), want, "{pod}");
        }
    }

    #[test]
    fn resolve_reads_each_link_once() {
        struct Counting(std::cell::Cell<usize>);
        impl ReadLink for Counting {
            fn read_link(&self, _: &Path) -> Option<PathBuf> {
                self.0.set(self.0.get() + 1);
                None
            }
        }
        let m = map();
        let fs = Counting(std::cell::Cell::new(0));
        let mut res = Resolver::new(&m, &fs);
        for i in 0..100 {
            let p = format!("{BIN}/pkg/f{i}");
            assert!(res.resolve_pod(Path::new(&p)).is_ok());
        }
        // execroot, __main__, bazel-out, k8-fastbuild, bin, pkg + 100 files.
        assert_eq!(fs.0.get(), 106);
        assert_eq!(res.lookups(), 106);
    }

    #[test]
    fn aliases_are_roots_too() {
        let mut m = map();
        m.aliases
            .push((PathBuf::from("/data/fs/alice/h/out"), POD_OUT));
        let fs = Links(vec![(format!("{OUT}/x"), "/data/fs/alice/h/out/y".into())]);
        let mut res = Resolver::new(&m, &fs);
        assert_eq!(
            res.resolve_pod(Path::new("/work/out/x/z")),
            Ok(PathBuf::from("/data/fs/alice/h/out/y/z"))
        );
    }

    #[test]
    fn locate_table() {
        let req = |wd: &str| ExecRequest {
            working_directory: wd.as_bytes().to_vec(),
            argv: vec![],
            environment_variable: vec![],
        };
        let cases = [
            (
                format!("{BIN}/runfiles/show_data.runfiles/__main__"),
                Some((format!("{BIN}/runfiles/show_data"), "__main__")),
            ),
            (
                format!("{BIN}/a/b.runfiles/__main__/c.runfiles/d"),
                Some((format!("{BIN}/a/b.runfiles/__main__/c"), "d")),
            ),
            (format!("{BIN}/x.runfiles"), Some((format!("{BIN}/x"), ""))),
            (format!("{BIN}/.runfiles/__main__"), None),
            (format!("{BIN}/x/../y.runfiles/__main__"), None),
            ("/work/src/app".to_string(), None),
            ("/elsewhere/x.runfiles/__main__".to_string(), None),
            (String::new(), None),
        ];
        for (wd, want) in cases {
            let got = locate(&req(&wd));
            let want = want.map(|(exe, cwd)| Located {
                runfiles: PathBuf::from(format!("{exe}.runfiles")),
                executable: PathBuf::from(exe),
                cwd: PathBuf::from(cwd),
            });
            assert_eq!(got, want, "{wd}");
        }
    }

    #[test]
    fn manifest_parse_table() {
        let text = "__main__/runfiles/data.txt /work/src/runfiles/data.txt\n\
                    __main__/pkg/__init__.py \n\
                    __main__/bare\n\
                    \n\
                    __main__/sp /work/src/a b\n";
        let e = |p: &str, t: Option<&str>| Entry {
            path: p.as_bytes().to_vec(),
            target: t.map(PathBuf::from),
        };
        assert_eq!(
            parse_manifest(text.as_bytes()),
            vec![
                e(
                    "__main__/runfiles/data.txt",
                    Some("/work/src/runfiles/data.txt")
                ),
                e("__main__/pkg/__init__.py", None),
                e("__main__/bare", None),
                e("__main__/sp", Some("/work/src/a b")),
            ]
        );
    }

    #[test]
    fn plan_tree_table() {
        let m = map();
        let fs = output_base();
        let mut res = Resolver::new(&m, &fs);
        let manifest = format!(
            "__main__/runfiles/data.txt /work/src/runfiles/data.txt\n\
             __main__/runfiles/generated.txt {BIN}/runfiles/generated.txt\n\
             __main__/runfiles/show_data {BIN}/runfiles/show_data\n\
             __main__/pkg/__init__.py \n\
             bazel_tools/tools/bash/runfiles/runfiles.bash /work/out/external/bazel_tools/tools/bash/runfiles/runfiles.bash\n\
             __main__/secret /work/out/to_etc\n\
             __main__/system /usr/lib/x\n\
             __main__/runfiles/data.txt /work/src/other\n\
             __main__/dir /work/src/dir\n\
             __main__/dir/inner /work/src/inner\n\
             ../escape /work/src/x\n\
             /abs /work/src/x\n\
             a/./b /work/src/x\n\
             MANIFEST /work/src/x\n"
        );
        let plan = plan_tree(&parse_manifest(manifest.as_bytes()), &mut res);
        let link = |p: &str, t: &str| (PathBuf::from(p), Node::Link(PathBuf::from(t)));
        assert_eq!(
            plan.links,
            vec![
                link("__main__/dir", "/home/alice/proj/dir"),
                (PathBuf::from("__main__/pkg/__init__.py"), Node::Empty),
                link(
                    "__main__/runfiles/data.txt",
                    "/home/alice/proj/runfiles/data.txt"
                ),
                link(
                    "__main__/runfiles/generated.txt",
                    &format!(
                        "{OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin/runfiles/generated.txt"
                    )
                ),
                link(
                    "__main__/runfiles/show_data",
                    "/home/alice/proj/runfiles/show_data.sh"
                ),
            ]
        );
        let skipped: Vec<(String, String)> = plan
            .skipped
            .iter()
            .map(|s| (s.path.display().to_string(), s.why.to_string()))
            .collect();
        let s = |p: &str, w: &str| (p.to_string(), w.to_string());
        assert_eq!(
            skipped,
            vec![
                s(
                    "bazel_tools/tools/bash/runfiles/runfiles.bash",
                    &format!("{OUT}/external/bazel_tools is a symlink to /usr/share/bazel/embedded_tools, outside the workspace and the output base")
                ),
                s(
                    "__main__/secret",
                    &format!("{OUT}/to_etc is a symlink to /etc/passwd, outside the workspace and the output base")
                ),
                s("__main__/system", "/usr/lib/x is under neither /work/src nor /work/out"),
                s("__main__/runfiles/data.txt", "listed twice"),
                s("../escape", "not a clean relative runfiles path"),
                s("/abs", "not a clean relative runfiles path"),
                s("a/./b", "not a clean relative runfiles path"),
                s("MANIFEST", "not a clean relative runfiles path"),
                s("__main__/dir/inner", "below the entry __main__/dir"),
            ]
        );
        assert_eq!(
            String::from_utf8_lossy(&plan.manifest()),
            format!(
                "__main__/dir /home/alice/proj/dir\n\
                 __main__/pkg/__init__.py \n\
                 __main__/runfiles/data.txt /home/alice/proj/runfiles/data.txt\n\
                 __main__/runfiles/generated.txt {OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin/runfiles/generated.txt\n\
                 __main__/runfiles/show_data /home/alice/proj/runfiles/show_data.sh\n"
            )
        );
    }

    fn exec_request(wd: &str, script: &str) -> ExecRequest {
        ExecRequest {
            working_directory: wd.as_bytes().to_vec(),
            argv: vec![
                b"/bin/bash".to_vec(),
                b"-c".to_vec(),
                script.as_bytes().to_vec(),
            ],
            environment_variable: vec![
                EnvironmentVariable {
                    name: b"BUILD_WORKSPACE_DIRECTORY".to_vec(),
                    value: b"/work/src".to_vec(),
                },
                EnvironmentVariable {
                    name: b"BUILD_WORKING_DIRECTORY".to_vec(),
                    value: b"/work/src/app".to_vec(),
                },
                EnvironmentVariable {
                    name: b"RUNFILES_DIR".to_vec(),
                    value: b"/work/out/stale".to_vec(),
                },
            ],
        }
    }

    /// What the policy admits of a `run` request.
    fn program(req: &ExecRequest) -> Program {
        exec_policy::admit("run", &req.argv, &exec_policy::Named::default()).expect("admitted")
    }

    fn argv_of(req: &ExecRequest) -> Vec<String> {
        req.argv
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    fn env_of(req: &ExecRequest) -> Vec<(String, String)> {
        req.environment_variable
            .iter()
            .map(|v| {
                (
                    String::from_utf8_lossy(&v.name).into_owned(),
                    String::from_utf8_lossy(&v.value).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn view_and_its_exec_request() {
        let m = map();
        let fs = output_base();
        let mut res = Resolver::new(&m, &fs);
        let req = exec_request(
            &format!("{BIN}/runfiles/show_data.runfiles/__main__"),
            &format!(
                "{BIN}/runfiles/show_data a 'b c' {BIN}/runfiles/show_data.runfiles/x /work/src/y"
            ),
        );
        let loc = locate(&req).expect("located");
        let manifest = "__main__/runfiles/data.txt /work/src/runfiles/data.txt\n";
        let view = plan_view(&loc, manifest.as_bytes(), &mut res).expect("view");
        assert_eq!(view.name, "show_data");
        assert_eq!(
            view.executable,
            PathBuf::from("/home/alice/proj/runfiles/show_data.sh")
        );
        assert_eq!(view.cwd, PathBuf::from("__main__"));
        assert_eq!(view.tree.links.len(), 1);

        let d = Path::new("/run/user/1000/jbazel-run/k-c");
        let desktop =
            view_request(&req, &program(&req), &m, &loc, d, &view, &mut res).expect("request");
        assert_eq!(
            desktop.binary,
            PathBuf::from("/run/user/1000/jbazel-run/k-c/show_data")
        );
        let got = desktop.request;
        assert_eq!(
            String::from_utf8_lossy(&got.working_directory),
            "/run/user/1000/jbazel-run/k-c/show_data.runfiles/__main__"
        );
        // No shell: the binary and its arguments.
        assert_eq!(
            argv_of(&got),
            [
                "/run/user/1000/jbazel-run/k-c/show_data",
                "a",
                "b c",
                "/run/user/1000/jbazel-run/k-c/show_data.runfiles/x",
                "/home/alice/proj/y"
            ]
        );
        let rf = "/run/user/1000/jbazel-run/k-c/show_data.runfiles";
        let s = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            env_of(&got),
            vec![
                s("BUILD_WORKSPACE_DIRECTORY", "/home/alice/proj"),
                s("BUILD_WORKING_DIRECTORY", "/home/alice/proj/app"),
                s("RUNFILES_DIR", rf),
                s("JAVA_RUNFILES", rf),
                s("RUNFILES_MANIFEST_FILE", &format!("{rf}/MANIFEST")),
            ]
        );

        // The content hash follows the view; the key follows the mirror and the binary.
        let mut other = view.clone();
        other.tree.links.clear();
        assert_ne!(view.content_hash(), other.content_hash());
        assert_eq!(view.content_hash(), view.clone().content_hash());
        assert_eq!(view.content_hash().len(), 16);
        let mut m2 = m.clone();
        m2.mirror_out = PathBuf::from("/fs/bob/x/out");
        assert_ne!(view_key(&m, &loc), view_key(&m2, &loc));
    }

    #[test]
    fn a_binary_outside_is_refused() {
        let m = map();
        let fs = Links(vec![(
            format!("{OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin/evil"),
            "/usr/bin/true".into(),
        )]);
        let mut res = Resolver::new(&m, &fs);
        let req = exec_request(
            &format!("{BIN}/evil.runfiles/__main__"),
            &format!("{BIN}/evil"),
        );
        let loc = locate(&req).expect("located");
        let err = plan_view(&loc, b"", &mut res).expect_err("refused");
        assert!(err.is_refusal());
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to run {BIN}/evil: {OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin/evil \
                 is a symlink to /usr/bin/true, outside the workspace and the output base"
            )
        );
        // Without runfiles too.
        let req = exec_request("/work/src", &format!("{BIN}/evil x"));
        let err = plain_request(&req, &program(&req), &m, &mut res).expect_err("refused");
        assert!(
            matches!(err, RunfilesError::ExecutableOutside { .. }),
            "{err}"
        );
        let req = exec_request("/work/out/to_etc", "/work/src/true");
        let fs = output_base();
        let mut res = Resolver::new(&m, &fs);
        let err = plain_request(&req, &program(&req), &m, &mut res).expect_err("refused");
        assert!(
            matches!(err, RunfilesError::WorkingDirectoryOutside { .. }),
            "{err}"
        );
    }

    #[test]
    fn plain_request_resolves_the_binary_and_the_working_directory() {
        let m = map();
        let fs = output_base();
        let mut res = Resolver::new(&m, &fs);
        let req = exec_request(
            "/work/out/execroot/__main__/runfiles",
            &format!("{BIN}/runfiles/show_data a 'b c' /work/src/x"),
        );
        let got = plain_request(&req, &program(&req), &m, &mut res).expect("request");
        assert_eq!(
            got.binary,
            PathBuf::from("/home/alice/proj/runfiles/show_data.sh")
        );
        assert_eq!(
            argv_of(&got.request),
            [
                "/home/alice/proj/runfiles/show_data.sh",
                "a",
                "b c",
                "/home/alice/proj/x"
            ]
        );
        assert_eq!(
            String::from_utf8_lossy(&got.request.working_directory),
            "/home/alice/proj/runfiles"
        );
        // A --run_under prefix the user named runs in the shell, before the binary.
        let named = exec_policy::Named::scan(["--run_under=valgrind -q"]);
        let inner = format!("valgrind -q {BIN}/runfiles/show_data 'a b'");
        let line =
            exec_policy::join_words(&[b"/bin/bash".to_vec(), b"-c".to_vec(), inner.into_bytes()]);
        let req = exec_request("/work/src", &String::from_utf8_lossy(&line));
        let p = exec_policy::admit("run", &req.argv, &named).expect("admitted");
        let got = plain_request(&req, &p, &m, &mut res).expect("request");
        assert_eq!(
            argv_of(&got.request),
            [
                "/bin/bash",
                "-c",
                "valgrind -q /home/alice/proj/runfiles/show_data.sh 'a b'"
            ]
        );
    }

    fn sample_view(target: &Path) -> View {
        View {
            name: "tool".into(),
            executable: target.join("tool.sh"),
            cwd: PathBuf::from("__main__"),
            tree: TreePlan {
                links: vec![
                    (
                        PathBuf::from("__main__/a/data.txt"),
                        Node::Link(target.join("data.txt")),
                    ),
                    (PathBuf::from("__main__/a/empty"), Node::Empty),
                    (PathBuf::from("ext/x"), Node::Link(target.join("x"))),
                ],
                skipped: vec![],
            },
        }
    }

    #[test]
    fn materialize_builds_reuses_and_sweeps() {
        let t = tempfile::tempdir().expect("tempdir");
        let base = t.path().join("base");
        std::fs::create_dir(&base).expect("mkdir");
        let view = sample_view(Path::new("/src"));
        let (dir, reused) = materialize(&base, "k", &view).expect("view");
        assert!(!reused);
        let rl = |p: &str| std::fs::read_link(dir.join(p)).expect(p);
        assert_eq!(rl("tool"), PathBuf::from("/src/tool.sh"));
        assert_eq!(
            rl("tool.runfiles/__main__/a/data.txt"),
            PathBuf::from("/src/data.txt")
        );
        assert_eq!(rl("tool.runfiles/ext/x"), PathBuf::from("/src/x"));
        let empty = std::fs::symlink_metadata(dir.join("tool.runfiles/__main__/a/empty"))
            .expect("empty file");
        assert!(empty.is_file() && empty.len() == 0);
        let manifest = "__main__/a/data.txt /src/data.txt\n__main__/a/empty \next/x /src/x\n";
        for m in ["tool.runfiles/MANIFEST", "tool.runfiles_manifest"] {
            assert_eq!(std::fs::read_to_string(dir.join(m)).expect(m), manifest);
        }
        assert!(dir.join("tool.runfiles/__main__").is_dir());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the view is private: {mode:o}");
        }

        // The same view again: reused, nothing written.
        let (again, reused) = materialize(&base, "k", &view).expect("again");
        assert_eq!((again.as_path(), reused), (dir.as_path(), true));

        // A new build: a new view; the sweep removes the old one of this binary only, and
        // temporary views only when stale.
        let other_binary = base.join("j-0000");
        std::fs::create_dir(&other_binary).expect("mkdir");
        let fresh_tmp = base.join(".tmp-k-fresh");
        std::fs::create_dir(&fresh_tmp).expect("mkdir");
        let new = sample_view(Path::new("/src2"));
        let (dir2, reused) = materialize(&base, "k", &new).expect("new view");
        assert!(!reused);
        assert_ne!(dir2, dir);
        sweep(&base, "k", &dir2);
        assert!(!dir.exists(), "old view removed");
        assert!(dir2.is_dir() && other_binary.is_dir() && fresh_tmp.is_dir());
        let names: Vec<String> = std::fs::read_dir(&base)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
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
