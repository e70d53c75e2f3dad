//! rc files, read the way Bazel 4's C++ client reads them (`src/main/cpp/rc_file.cc`,
//! `option_processor.cc`), and turned into the `--rc_source=` / `--default_override=` args
//! the server expects (the server reads no rc file itself).
//!
//! What matches Bazel's client:
//! - top-level files in order: system rc (unless `--nosystem_rc`), `<workspace>/.bazelrc`
//!   (unless `--noworkspace_rc`), `$HOME/.bazelrc` (unless `--nohome_rc`), then every
//!   `--bazelrc=` (an unreadable one is an error; `/dev/null` ends the list); none of them
//!   with `--ignore_all_rc_files`. Missing default files are skipped; duplicates (by
//!   canonical path) are read once.
//! - parsing: `\`-newline continues a line, `#` comments, quotes and `\` escapes as
//!   `blaze_util::Tokenize`; `import` / `try-import` (missing files skipped by `try-import`
//!   only), `%workspace%` prefix, import loops and malformed imports are errors (exit 2).
//! - output: `--rc_source=<canonical path>` once per file, indexes from 1 in the order of
//!   the top-level files and, inside each, of first reading (imports depth-first); then per
//!   top-level file, per command, `--default_override=<index>:<command>=<option>` in the
//!   order of appearance. `startup` options are not sent as overrides.
//!
//! Differences, on purpose:
//! - the system rc is the *pod image's* (published in the mirror of the output base), not
//!   the desktop's `/etc/bazel/bazelrc`;
//! - `%workspace%` is the desktop root when reading a file; names sent to the server are the
//!   pod's (`/work/src/...`) for files in the workspace or the mirror;
//! - commands inside one file come out in order of first appearance (Bazel's client iterates
//!   an `unordered_map`, so its order across commands is arbitrary; the server does not
//!   depend on it).
//!
//! Whose a file is ([`RcOwner`]): the pod runs untrusted builds, and whoever controls the
//! repository controls its rc files. So:
//! - a file in the workspace (by the path it is named with or by its real path) and the
//!   pod-published system rc are the [`RcOwner::Repository`]'s; every other file
//!   (`~/.bazelrc`, a `--bazelrc` outside the workspace, what those import outside it) is
//!   the [`RcOwner::User`]'s. Ownership follows the file, not the importer: `~/.bazelrc`
//!   importing `%workspace%/x.rc` makes `x.rc` no more trusted.
//! - a repository file is read at its real path below the workspace's real path (the
//!   system rc below the mirror), through no link, as a regular file with a size cap
//!   ([`crate::untrusted_fs`]): a workspace `.bazelrc` that is a link to a file outside the
//!   workspace is refused (exit 2; links inside the workspace are fine).
//! - a repository file's `import` of a file outside the workspace is refused (exit 2, naming
//!   the import), its `try-import` of one is skipped with a warning: an rc file the
//!   repository controls never makes jbazel read a desktop file outside the workspace and
//!   send its lines to the pod. Refusing was chosen over an allow-list: Bazel has no such
//!   list to read it from, and the user's own files already say what they want: import the
//!   file from `~/.bazelrc`, or pass `--bazelrc=`, both of which stay the user's.
//! - the variables a repository file names (`--action_env=NAME`, ...) never pull a desktop
//!   value: [`applied_options`] gives the words of the user's own files that Bazel's server
//!   applies to the command (its sections, those it inherits, `common`, and the configs
//!   selected), which with the command line are the only names that do.

use std::path::{Path, PathBuf};

use crate::untrusted_fs;

/// Bazel's `WorkspaceLayout::WorkspacePrefix`.
pub const WORKSPACE_PREFIX: &str = "%workspace%";

/// More than this in an rc file the repository or the pod controls is not an rc file.
pub const RC_MAX_BYTES: u64 = 4 << 20;

/// Filesystem access needed to read rc files (so the reader is testable in memory).
pub trait RcFs {
    /// A file of the user's (links followed); an error for a missing or unreadable file.
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// The file `rel` below `root`, reached through no link, a regular file, at most
    /// [`RC_MAX_BYTES`] ([`untrusted_fs::read_beneath`]): a file the repository or the pod
    /// controls.
    fn read_beneath(&self, root: &Path, rel: &Path) -> std::io::Result<String>;
    /// `realpath(3)`, or None when the path does not resolve.
    fn canonicalize(&self, path: &Path) -> Option<PathBuf>;
}

/// The real filesystem. Relative paths are relative to the process's working directory,
/// as in Bazel's client.
pub struct DiskFs;

impl RcFs for DiskFs {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned())
    }
    fn read_beneath(&self, root: &Path, rel: &Path) -> std::io::Result<String> {
        untrusted_fs::read_beneath_to_string(root, rel, RC_MAX_BYTES).map_err(|e| {
            tracing::warn!(error = %proto::error_chain::ErrorChain(&e), "rc file not read");
            std::io::Error::other(e)
        })
    }
    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }
}

/// Who controls an rc file, by where it is (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcOwner {
    /// The user's own file: read as Bazel's client reads it; the variables it names are
    /// sent from the desktop.
    User,
    /// A file in the workspace, or the pod-published system rc: read through no link, its
    /// imports kept inside the workspace, the variables it names never sent.
    Repository,
}

/// One option line's word, with the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcOption {
    pub option: String,
    /// Index into [`RcFile::canonical_paths`].
    pub source_index: usize,
}

/// A top-level rc file and everything it imports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcFile {
    /// Canonical paths of the file and its imports, in the order they were read.
    pub canonical_paths: Vec<PathBuf>,
    /// Whose each of [`RcFile::canonical_paths`] is.
    pub owners: Vec<RcOwner>,
    /// Command -> options, commands in order of first appearance.
    pub options: Vec<(String, Vec<RcOption>)>,
}

impl RcFile {
    fn push(&mut self, command: &str, opt: RcOption) {
        match self.options.iter_mut().find(|(c, _)| c == command) {
            Some((_, v)) => v.push(opt),
            None => self.options.push((command.to_string(), vec![opt])),
        }
    }
}

/// An rc problem; [`RcError::exit_code`] is Bazel's for it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RcError {
    /// A file (or `import`ed file) cannot be read.
    #[error("Unexpected error reading .blazerc file '{}'", path.display())]
    Unreadable { path: PathBuf },
    /// An `import` line that is not `import <one path>`.
    #[error(
        "Invalid import declaration in .blazerc file '{}': '{line}' (are you in your source \
         checkout/WORKSPACE?)",
        file.display()
    )]
    InvalidImport { file: PathBuf, line: String },
    /// A file imports itself, directly or not.
    #[error("Import loop detected:\n{}", chain.iter().map(|c| format!("  {c}\n")).collect::<String>())]
    ImportLoop { chain: Vec<String> },
    /// A `--bazelrc=` file that cannot be read.
    #[error("Unable to read .bazelrc file '{}'.", path.display())]
    CommandLineRcUnreadable { path: PathBuf },
    /// A file the repository or the pod controls imports a file outside the workspace: the
    /// desktop reads nothing else because of it.
    #[error(
        "'{}' imports '{target}', outside the workspace: refused (an rc file of the \
         repository or the pod makes jbazel read no desktop file outside it; if that file \
         is an rc file you want, import it from your ~/.bazelrc)",
        file.display()
    )]
    ImportOutsideWorkspace { file: PathBuf, target: String },
    /// A file named inside the workspace is a link to a file outside it.
    #[error(
        "'{}' is in the workspace but leads to '{}', outside it: refused (if that file is \
         an rc file you want, import it from your ~/.bazelrc)",
        path.display(), real.display()
    )]
    LinkOutOfWorkspace { path: PathBuf, real: PathBuf },
}

impl RcError {
    /// Bazel client's exit code: 2 (BAD_ARGV) except for unreadable files (37).
    pub fn exit_code(&self) -> crate::exit_code::ExitCode {
        use crate::exit_code::ExitCode;
        match self {
            RcError::Unreadable { .. } => ExitCode::INTERNAL_ERROR,
            _ => ExitCode::COMMAND_LINE_ERROR,
        }
    }
}

/// `blaze_util::Tokenize(line, '#')`: whitespace-separated words; `'` and `"` quote, `\`
/// escapes the next character, an unquoted `#` starts a comment.
pub fn tokenize(line: &str) -> Vec<String> {
    let is_sep = |c: char| matches!(c, ' ' | '\n' | '\t' | '\r');
    let chars: Vec<char> = line.chars().collect();
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && is_sep(chars[i]) {
            i += 1;
        }
        if i < chars.len() && chars[i] == '#' {
            break;
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while i < chars.len() && (quote.is_some() || !is_sep(chars[i])) {
            let c = chars[i];
            if c == '\\' {
                i += 1;
                if i == chars.len() {
                    break;
                }
                word.push(chars[i]);
                i += 1;
                continue;
            }
            match quote {
                Some(q) if c == q => {
                    quote = None;
                    i += 1;
                }
                Some(_) => {
                    word.push(c);
                    i += 1;
                }
                None if c == '#' => {
                    i = chars.len();
                    break;
                }
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    i += 1;
                }
                None => {
                    word.push(c);
                    i += 1;
                }
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
    }
    words
}

/// How a file is read, once located.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    /// The user's file, at the path it was named by.
    User,
    /// Below a root, through no link.
    Beneath { root: PathBuf, rel: PathBuf },
}

/// A file to read: its canonical path, whose it is, and how it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    canonical: PathBuf,
    owner: RcOwner,
    access: Access,
}

/// What a file's location says about reading it.
enum Location {
    Found(Located),
    /// The path does not resolve.
    Missing,
    /// Named inside the workspace, real path outside.
    LinkOut(PathBuf),
}

/// Reads rc files knowing where the workspace and the pod's system rc are.
struct Reader<'a> {
    fs: &'a dyn RcFs,
    /// `%workspace%`: the desktop root as given.
    workspace: &'a Path,
    /// Its real path (the root repository files are read below).
    workspace_real: PathBuf,
    /// The pod-published system rc.
    system_rc: Option<&'a Path>,
}

impl<'a> Reader<'a> {
    fn new(fs: &'a dyn RcFs, workspace: &'a Path, system_rc: Option<&'a Path>) -> Self {
        Reader {
            fs,
            workspace,
            workspace_real: fs
                .canonicalize(workspace)
                .unwrap_or_else(|| workspace.to_path_buf()),
            system_rc,
        }
    }

    /// Whose `path` is and how to read it (see the module doc).
    fn locate(&self, path: &Path) -> Location {
        if Some(path) == self.system_rc {
            // Below the output base's mirror: the layout's own relative path when it ends
            // so, else below its directory.
            let rel = Path::new(proto::mirror::SYSTEM_RC);
            let (root, rel) = match path
                .to_str()
                .and_then(|p| p.strip_suffix(proto::mirror::SYSTEM_RC))
                .filter(|root| root.ends_with('/'))
            {
                Some(root) => (PathBuf::from(root), rel.to_path_buf()),
                None => (
                    path.parent().unwrap_or(Path::new("/")).to_path_buf(),
                    path.file_name().map(PathBuf::from).unwrap_or_default(),
                ),
            };
            let Some(canonical) = self.fs.canonicalize(path) else {
                return Location::Missing;
            };
            return Location::Found(Located {
                canonical,
                owner: RcOwner::Repository,
                access: Access::Beneath { root, rel },
            });
        }
        let Some(canonical) = self.fs.canonicalize(path) else {
            return Location::Missing;
        };
        if let Ok(rel) = canonical.strip_prefix(&self.workspace_real) {
            let rel = rel.to_path_buf();
            return Location::Found(Located {
                canonical,
                owner: RcOwner::Repository,
                access: Access::Beneath {
                    root: self.workspace_real.clone(),
                    rel,
                },
            });
        }
        if path.starts_with(self.workspace) || path.starts_with(&self.workspace_real) {
            return Location::LinkOut(canonical);
        }
        Location::Found(Located {
            canonical,
            owner: RcOwner::User,
            access: Access::User,
        })
    }

    fn read(&self, path: &Path, at: &Located) -> std::io::Result<String> {
        match &at.access {
            Access::User => self.fs.read(path),
            Access::Beneath { root, rel } => self.fs.read_beneath(root, rel),
        }
    }

    /// Parses one top-level rc file and its imports (`RcFile::Parse`).
    fn parse(&self, filename: &Path) -> Result<RcFile, RcError> {
        let mut rc = RcFile::default();
        let mut stack = vec![filename.to_string_lossy().into_owned()];
        self.parse_into(filename, &mut stack, &mut rc)?;
        Ok(rc)
    }

    fn parse_into(
        &self,
        filename: &Path,
        import_stack: &mut Vec<String>,
        rc: &mut RcFile,
    ) -> Result<(), RcError> {
        let unreadable = || RcError::Unreadable {
            path: filename.to_path_buf(),
        };
        let at = match self.locate(filename) {
            Location::Found(at) => at,
            Location::Missing => return Err(unreadable()),
            Location::LinkOut(real) => {
                return Err(RcError::LinkOutOfWorkspace {
                    path: filename.to_path_buf(),
                    real,
                })
            }
        };
        let contents = self.read(filename, &at).map_err(|_| unreadable())?;
        let canonical = at.canonical.clone();
        let index = rc.canonical_paths.len();
        rc.canonical_paths.push(canonical.clone());
        rc.owners.push(at.owner);

        let contents = contents.replace("\\\r\n", "").replace("\\\n", "");
        for raw in contents.split('\n') {
            let line = raw.trim_matches(|c: char| c.is_ascii_whitespace());
            if line.is_empty() {
                continue;
            }
            let words = tokenize(line);
            let Some(command) = words.first() else {
                continue;
            };
            if command == "import" || command == "try-import" {
                if words.len() != 2 {
                    return Err(RcError::InvalidImport {
                        file: canonical,
                        line: line.to_string(),
                    });
                }
                let optional = command == "try-import";
                let target = match words[1].strip_prefix(WORKSPACE_PREFIX) {
                    Some(rest) => join_path(&self.workspace.to_string_lossy(), rest),
                    None => words[1].clone(),
                };
                if at.owner == RcOwner::Repository
                    && !inside(self.fs, &self.workspace_real, &target)
                {
                    if optional {
                        // Optional by definition: not read. Debian's system rc tries
                        // /etc/bazel.bazelrc, which is the pod's, not the desktop's.
                        if Some(filename) == self.system_rc {
                            tracing::debug!(file = %target, "optional import outside the workspace not read");
                        } else {
                            tracing::warn!(rc = %canonical.display(), file = %target,
                                "try-import of a file outside the workspace, from an rc file in the workspace: not read (import it from ~/.bazelrc to use it)");
                        }
                        continue;
                    }
                    return Err(RcError::ImportOutsideWorkspace {
                        file: canonical,
                        target,
                    });
                }
                if import_stack.contains(&target) {
                    let mut chain = import_stack.clone();
                    chain.push(target);
                    return Err(RcError::ImportLoop { chain });
                }
                import_stack.push(target.clone());
                match self.parse_into(Path::new(&target), import_stack, rc) {
                    Ok(()) => {}
                    Err(RcError::Unreadable { .. }) if optional => {
                        tracing::debug!(file = %target, "skipped optional import");
                    }
                    Err(RcError::LinkOutOfWorkspace { path, real }) if optional => {
                        tracing::warn!(file = %path.display(), real = %real.display(),
                            "try-import of a workspace file that leads outside the workspace: not read");
                    }
                    Err(e) => return Err(e),
                }
                import_stack.pop();
            } else {
                for word in &words[1..] {
                    rc.push(
                        command,
                        RcOption {
                            option: word.clone(),
                            source_index: index,
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

/// Parses one top-level rc file and its imports (`RcFile::Parse`); files in `workspace`
/// are the repository's (see the module doc).
pub fn parse_file(fs: &dyn RcFs, filename: &Path, workspace: &Path) -> Result<RcFile, RcError> {
    Reader::new(fs, workspace, None).parse(filename)
}

/// Whether `target` is inside `root`: both resolved (symlinks included) when they exist,
/// and never through `..`.
fn inside(fs: &dyn RcFs, root: &Path, target: &str) -> bool {
    let target = Path::new(target);
    if target
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return false;
    }
    let root = fs.canonicalize(root).unwrap_or_else(|| root.to_path_buf());
    match fs.canonicalize(target) {
        Some(real) => real.starts_with(&root),
        None => target.starts_with(&root),
    }
}

/// `blaze_util::JoinPath`.
fn join_path(a: &str, b: &str) -> String {
    if a.is_empty() {
        return b.to_string();
    }
    match (a.ends_with('/'), b.starts_with('/')) {
        (true, true) => format!("{a}{}", &b[1..]),
        (false, false) => format!("{a}/{b}"),
        _ => format!("{a}{b}"),
    }
}

/// Which rc files to read: the rc-related startup options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcSelection {
    pub system_rc: bool,
    pub workspace_rc: bool,
    pub home_rc: bool,
    pub ignore_all_rc_files: bool,
    /// `--bazelrc` values, in order, as given.
    pub bazelrc: Vec<String>,
}

impl Default for RcSelection {
    fn default() -> Self {
        RcSelection {
            system_rc: true,
            workspace_rc: true,
            home_rc: true,
            ignore_all_rc_files: false,
            bazelrc: Vec::new(),
        }
    }
}

/// Where the default rc files are.
#[derive(Debug, Clone)]
pub struct RcLocations<'a> {
    /// The system rc (jbazel: the pod image's, through the mirror).
    pub system_rc: &'a Path,
    /// The workspace root (desktop path).
    pub workspace: &'a Path,
    /// `$HOME`, if set and not empty.
    pub home: Option<&'a Path>,
    /// The working directory, for relative `--bazelrc` paths.
    pub cwd: &'a Path,
}

/// `blaze::AbsolutePathFromFlag`.
fn absolute_from_flag(value: &str, loc: &RcLocations<'_>) -> PathBuf {
    if value.is_empty() {
        loc.cwd.to_path_buf()
    } else if let Some(rest) = value.strip_prefix('~') {
        let home = loc
            .home
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        PathBuf::from(join_path(&home, rest))
    } else if Path::new(value).is_absolute() {
        PathBuf::from(value)
    } else {
        PathBuf::from(join_path(&loc.cwd.to_string_lossy(), value))
    }
}

/// The top-level rc files to parse, deduplicated, missing defaults dropped
/// (`OptionProcessor::GetRcFiles`).
pub fn top_level_files(
    fs: &dyn RcFs,
    sel: &RcSelection,
    loc: &RcLocations<'_>,
) -> Result<Vec<PathBuf>, RcError> {
    if sel.ignore_all_rc_files {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    if sel.system_rc {
        files.push(loc.system_rc.to_path_buf());
    }
    if sel.workspace_rc {
        files.push(loc.workspace.join(".bazelrc"));
    }
    if sel.home_rc {
        if let Some(home) = loc.home {
            files.push(home.join(".bazelrc"));
        }
    }
    let reader = Reader::new(fs, loc.workspace, Some(loc.system_rc));
    for value in &sel.bazelrc {
        let path = absolute_from_flag(value, loc);
        let readable = match reader.locate(&path) {
            Location::Found(at) => reader.read(&path, &at).is_ok(),
            Location::Missing => false,
            Location::LinkOut(real) => return Err(RcError::LinkOutOfWorkspace { path, real }),
        };
        if !readable {
            return Err(RcError::CommandLineRcUnreadable { path });
        }
        files.push(path);
        if value == "/dev/null" {
            break;
        }
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for f in files {
        if let Some(c) = fs.canonicalize(&f) {
            if !seen.contains(&c) {
                seen.push(c);
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// Reads every selected rc file.
pub fn read_all(
    fs: &dyn RcFs,
    sel: &RcSelection,
    loc: &RcLocations<'_>,
) -> Result<Vec<RcFile>, RcError> {
    let reader = Reader::new(fs, loc.workspace, Some(loc.system_rc));
    top_level_files(fs, sel, loc)?
        .iter()
        .map(|f| reader.parse(f))
        .collect()
}

/// The rc part of the RunRequest args: `--rc_source=` for every file read (named by
/// `name`), then `--default_override=` for every non-startup option
/// (`GetBlazercAndEnvCommandArgs` after the client's own index-0 options).
pub fn rc_args(files: &[RcFile], name: &dyn Fn(&Path) -> String) -> Vec<String> {
    let mut args = Vec::new();
    let mut indexes: Vec<&Path> = Vec::new();
    for rc in files {
        for path in &rc.canonical_paths {
            if indexes.contains(&path.as_path()) {
                continue;
            }
            args.push(format!("--rc_source={}", name(path)));
            indexes.push(path);
        }
    }
    let index_of = |p: &Path| indexes.iter().position(|q| *q == p).map_or(0, |i| i + 1);
    for rc in files {
        for (command, opts) in &rc.options {
            if command == "startup" {
                continue;
            }
            for o in opts {
                let idx = index_of(&rc.canonical_paths[o.source_index]);
                args.push(format!("--default_override={idx}:{command}={}", o.option));
            }
        }
    }
    args
}

/// The `startup` options of the rc files, with the canonical path they came from.
pub fn startup_options(files: &[RcFile]) -> Vec<(PathBuf, String)> {
    files
        .iter()
        .flat_map(|rc| {
            rc.options
                .iter()
                .filter(|(c, _)| c == "startup")
                .flat_map(move |(_, opts)| {
                    opts.iter().map(move |o| {
                        (rc.canonical_paths[o.source_index].clone(), o.option.clone())
                    })
                })
        })
        .collect()
}

/// The commands whose rc sections a command also reads (Bazel's `inherits`, transitively),
/// for Bazel 4.2.3's commands. An unknown command is taken to read `build`'s, as most do:
/// for the names of variables (the only use here) reading a section too many only sends
/// a variable the user's own file names.
fn inherited(command: &str) -> &'static [&'static str] {
    match command {
        "test" | "run" | "aquery" | "clean" | "info" | "mobile-install" | "print_action"
        | "config" | "canonicalize-flags" => &["build"],
        "coverage" | "cquery" | "fetch" | "sync" => &["test", "build"],
        "build" | "query" | "dump" | "help" | "license" | "shutdown" | "version"
        | "analyze-profile" => &[],
        _ => &["build"],
    }
}

/// The `--config` values among `words` (`--config=x`, or `--config x`).
fn configs_in<'w>(words: impl IntoIterator<Item = &'w str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = false;
    for w in words {
        if std::mem::take(&mut pending) {
            out.push(w.to_string());
        } else if w == "--config" {
            pending = true;
        } else if let Some(v) = w.strip_prefix("--config=") {
            out.push(v.to_string());
        }
    }
    out
}

/// The last word about `--[no]enable_platform_specific_config` among `words`, if any.
fn platform_specific(words: &[&str]) -> Option<bool> {
    words.iter().rev().find_map(|w| match *w {
        "--enable_platform_specific_config" => Some(true),
        "--noenable_platform_specific_config" => Some(false),
        _ => match w.strip_prefix("--enable_platform_specific_config=")? {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
    })
}

/// The option words of the files of `owner` that Bazel's server applies to `command` run
/// with `args` (the user's arguments after the command): the sections of the command, of
/// those it inherits from, `common` and `always`, then of every config selected: by
/// `--config` on the command line (before `--`) or in an applied section of any file,
/// recursively, and `linux` (the server's platform) under
/// `--enable_platform_specific_config`. A config no one selects contributes nothing.
///
/// With `RcOwner::User`, these words and the command line are what may name a desktop
/// variable to send (`--action_env=NAME`, ...).
pub fn applied_options(
    files: &[RcFile],
    command: &str,
    args: &[String],
    owner: RcOwner,
) -> Vec<String> {
    if command.is_empty() {
        return Vec::new();
    }
    let applies =
        |c: &str| c == "common" || c == "always" || c == command || inherited(command).contains(&c);
    // (owner, word) of every applied section for `config` (None: the plain sections).
    let section = |config: Option<&str>| -> Vec<(RcOwner, &str)> {
        files
            .iter()
            .flat_map(|rc| {
                rc.options
                    .iter()
                    .filter(move |(name, _)| {
                        let (c, cfg) = match name.split_once(':') {
                            Some((c, cfg)) => (c, Some(cfg)),
                            None => (name.as_str(), None),
                        };
                        applies(c) && cfg == config
                    })
                    .flat_map(move |(_, opts)| {
                        opts.iter().map(move |o| {
                            let who = rc.owners.get(o.source_index).copied();
                            (who.unwrap_or(RcOwner::Repository), o.option.as_str())
                        })
                    })
            })
            .collect()
    };
    let cli: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .take_while(|a| *a != "--")
        .collect();
    let mut applied = vec![(None, section(None))];
    let mut queue: Vec<String> = configs_in(applied[0].1.iter().map(|(_, w)| *w));
    queue.extend(configs_in(cli.iter().copied()));
    queue.reverse();
    let mut selected: Vec<String> = Vec::new();
    loop {
        while let Some(config) = queue.pop() {
            if selected.contains(&config) {
                continue;
            }
            let words = section(Some(&config));
            let mut more = configs_in(words.iter().map(|(_, w)| *w));
            more.reverse();
            queue.extend(more);
            selected.push(config.clone());
            applied.push((Some(config), words));
        }
        let all: Vec<&str> = applied
            .iter()
            .flat_map(|(_, ws)| ws.iter().map(|(_, w)| *w))
            .chain(cli.iter().copied())
            .collect();
        let linux = "linux".to_string();
        if platform_specific(&all) == Some(true) && !selected.contains(&linux) {
            queue.push(linux);
        } else {
            break;
        }
    }
    applied
        .into_iter()
        .flat_map(|(_, ws)| ws)
        .filter(|(who, _)| *who == owner)
        .map(|(_, w)| w.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// In-memory files; symlinks as (link -> target) for canonicalize.
    #[derive(Default)]
    struct MemFs {
        files: HashMap<PathBuf, String>,
        links: HashMap<PathBuf, PathBuf>,
    }
    impl MemFs {
        fn with(files: &[(&str, &str)]) -> Self {
            MemFs {
                files: files
                    .iter()
                    .map(|(p, c)| (PathBuf::from(p), c.to_string()))
                    .collect(),
                links: HashMap::new(),
            }
        }
        fn resolve(&self, p: &Path) -> PathBuf {
            self.links
                .get(p)
                .cloned()
                .unwrap_or_else(|| p.to_path_buf())
        }
    }
    impl RcFs for MemFs {
        fn read(&self, path: &Path) -> std::io::Result<String> {
            self.files
                .get(&self.resolve(path))
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        fn read_beneath(&self, root: &Path, rel: &Path) -> std::io::Result<String> {
            let path = root.join(rel);
            let mut p = root.to_path_buf();
            for c in rel.components() {
                p.push(c);
                if self.links.contains_key(&p) {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
            }
            self.files
                .get(&path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
            let r = self.resolve(path);
            self.files.contains_key(&r).then_some(r)
        }
    }

    #[test]
    fn tokenize_table() {
        let cases: &[(&str, &[&str])] = &[
            ("build --a --b", &["build", "--a", "--b"]),
            ("  build\t--a  ", &["build", "--a"]),
            ("# comment", &[]),
            ("build --a # trailing", &["build", "--a"]),
            ("build --a#b", &["build", "--a"]),
            (
                "build '--x=a b' \"--y=c d\"",
                &["build", "--x=a b", "--y=c d"],
            ),
            ("build --x='a#b'", &["build", "--x=a#b"]),
            ("build --x=a\\ b", &["build", "--x=a b"]),
            ("build --x=\\\"", &["build", "--x=\""]),
            ("build ''", &["build"]),
            ("build --x='unterminated", &["build", "--x=unterminated"]),
        ];
        for (line, want) in cases {
            assert_eq!(tokenize(line), *want, "{line:?}");
        }
    }

    const WS: &str = "/ws";

    fn parse(fs: &MemFs, f: &str) -> Result<RcFile, RcError> {
        parse_file(fs, Path::new(f), Path::new(WS))
    }

    fn opts(rc: &RcFile) -> Vec<String> {
        rc.options
            .iter()
            .flat_map(|(c, os)| {
                os.iter()
                    .map(move |o| format!("{}:{c}={}", o.source_index, o.option))
            })
            .collect()
    }

    #[test]
    fn parse_table() {
        let fs = MemFs::with(&[
            (
                "/ws/.bazelrc",
                "build --a \\\n  --b\ntest --t\n\n# c\nbuild --c\nimport %workspace%/tools/x.rc\n\
                 try-import %workspace%/missing.rc\nbuild --d\nstartup --max_idle_secs=5\n",
            ),
            (
                "/ws/tools/x.rc",
                "test --x1\nimport /ws/tools/y.rc\nbuild --x2\n",
            ),
            ("/ws/tools/y.rc", "query --y\r\n"),
        ]);
        let rc = parse(&fs, "/ws/.bazelrc").expect("parse");
        assert_eq!(
            rc.canonical_paths,
            ["/ws/.bazelrc", "/ws/tools/x.rc", "/ws/tools/y.rc"].map(PathBuf::from)
        );
        assert_eq!(
            opts(&rc),
            [
                "0:build=--a",
                "0:build=--b",
                "0:build=--c",
                "1:build=--x2",
                "0:build=--d",
                "0:test=--t",
                "1:test=--x1",
                "2:query=--y",
                "0:startup=--max_idle_secs=5",
            ]
        );
    }

    #[test]
    fn parse_errors_table() {
        type Case<'a> = (&'a [(&'a str, &'a str)], fn(&RcError) -> bool, i32);
        let cases: &[Case] = &[
            (
                &[("/a", "import /missing")],
                |e| matches!(e, RcError::Unreadable { .. }),
                37,
            ),
            (
                &[("/a", "import")],
                |e| matches!(e, RcError::InvalidImport { .. }),
                2,
            ),
            (
                &[("/a", "import /b /c")],
                |e| matches!(e, RcError::InvalidImport { .. }),
                2,
            ),
            (
                &[("/a", "import /a")],
                |e| matches!(e, RcError::ImportLoop { .. }),
                2,
            ),
            (
                &[("/a", "import /b"), ("/b", "try-import /a")],
                |e| matches!(e, RcError::ImportLoop { .. }),
                2,
            ),
            // try-import does not hide a malformed file.
            (
                &[("/a", "try-import /b"), ("/b", "import")],
                |e| matches!(e, RcError::InvalidImport { .. }),
                2,
            ),
        ];
        for (files, is, code) in cases {
            let err = parse(&MemFs::with(files), "/a").expect_err("must fail");
            assert!(is(&err), "{files:?}: {err:?}");
            assert_eq!(err.exit_code().code(), *code);
        }
        let err = parse(
            &MemFs::with(&[("/a", "import /b"), ("/b", "import /a")]),
            "/a",
        )
        .expect_err("loop");
        assert_eq!(err.to_string(), "Import loop detected:\n  /a\n  /b\n  /a\n");
    }

    fn loc<'a>(home: Option<&'a Path>) -> RcLocations<'a> {
        RcLocations {
            system_rc: Path::new("/out/jbazel/system.bazelrc"),
            workspace: Path::new(WS),
            home,
            cwd: Path::new("/ws/sub"),
        }
    }

    #[test]
    fn top_level_selection_table() {
        let mut fs = MemFs::with(&[
            ("/out/jbazel/system.bazelrc", ""),
            ("/ws/.bazelrc", ""),
            ("/home/u/.bazelrc", ""),
            ("/ws/sub/my.rc", ""),
            ("/home/u/x.rc", ""),
            ("/dev/null", ""),
        ]);
        let home = Some(Path::new("/home/u"));
        let sel = |f: &dyn Fn(&mut RcSelection)| {
            let mut s = RcSelection::default();
            f(&mut s);
            s
        };
        let cases: Vec<(RcSelection, Option<&Path>, Vec<&str>)> = vec![
            (
                sel(&|_| {}),
                home,
                vec![
                    "/out/jbazel/system.bazelrc",
                    "/ws/.bazelrc",
                    "/home/u/.bazelrc",
                ],
            ),
            (
                sel(&|_| {}),
                None,
                vec!["/out/jbazel/system.bazelrc", "/ws/.bazelrc"],
            ),
            (
                sel(&|s| s.home_rc = false),
                home,
                vec!["/out/jbazel/system.bazelrc", "/ws/.bazelrc"],
            ),
            (
                sel(&|s| s.workspace_rc = false),
                home,
                vec!["/out/jbazel/system.bazelrc", "/home/u/.bazelrc"],
            ),
            (
                sel(&|s| s.system_rc = false),
                home,
                vec!["/ws/.bazelrc", "/home/u/.bazelrc"],
            ),
            (sel(&|s| s.ignore_all_rc_files = true), home, vec![]),
            (
                sel(&|s| {
                    s.bazelrc = vec![
                        "my.rc".into(),
                        "~/x.rc".into(),
                        "/dev/null".into(),
                        "/nope".into(),
                    ]
                }),
                home,
                vec![
                    "/out/jbazel/system.bazelrc",
                    "/ws/.bazelrc",
                    "/home/u/.bazelrc",
                    "/ws/sub/my.rc",
                    "/home/u/x.rc",
                    "/dev/null",
                ],
            ),
            // The same file twice is read once.
            (
                sel(&|s| s.bazelrc = vec!["/ws/.bazelrc".into()]),
                home,
                vec![
                    "/out/jbazel/system.bazelrc",
                    "/ws/.bazelrc",
                    "/home/u/.bazelrc",
                ],
            ),
        ];
        for (s, h, want) in cases {
            let got = top_level_files(&fs, &s, &loc(h)).expect("files");
            let want: Vec<PathBuf> = want.into_iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "{s:?}");
        }
        // An unreadable --bazelrc is an error (exit 2), a missing default is not.
        let err = top_level_files(&fs, &sel(&|s| s.bazelrc = vec!["/nope".into()]), &loc(home))
            .expect_err("unreadable");
        assert_eq!(err.exit_code().code(), 2);
        assert_eq!(err.to_string(), "Unable to read .bazelrc file '/nope'.");
        // A home rc that is a symlink to the workspace rc is read once.
        fs.links
            .insert("/home/u/.bazelrc".into(), "/ws/.bazelrc".into());
        let got = top_level_files(&fs, &RcSelection::default(), &loc(home)).expect("files");
        assert_eq!(
            got,
            ["/out/jbazel/system.bazelrc", "/ws/.bazelrc"].map(PathBuf::from)
        );
    }

    #[test]
    fn rc_args_match_bazels_client() {
        let fs = MemFs::with(&[
            ("/out/jbazel/system.bazelrc", "build --override_repository=rules_cc=/opt/jbazel/rules_cc\nstartup --max_idle_secs=0\n"),
            ("/ws/.bazelrc", "build --jobs=2\nimport %workspace%/common.rc\ncommon --color=yes\n"),
            ("/ws/common.rc", "build --keep_going\ntest --test_output=errors\n"),
            ("/home/u/.bazelrc", "import /ws/common.rc\nbuild:opt -c opt\n"),
        ]);
        let files = read_all(
            &fs,
            &RcSelection::default(),
            &loc(Some(Path::new("/home/u"))),
        )
        .expect("read");
        let name = |p: &Path| {
            p.strip_prefix("/ws")
                .map(|r| format!("/work/src/{}", r.display()))
                .unwrap_or_else(|_| p.display().to_string())
        };
        assert_eq!(
            rc_args(&files, &name),
            [
                "--rc_source=/out/jbazel/system.bazelrc",
                "--rc_source=/work/src/.bazelrc",
                "--rc_source=/work/src/common.rc",
                "--rc_source=/home/u/.bazelrc",
                "--default_override=1:build=--override_repository=rules_cc=/opt/jbazel/rules_cc",
                "--default_override=2:build=--jobs=2",
                "--default_override=3:build=--keep_going",
                "--default_override=3:test=--test_output=errors",
                "--default_override=2:common=--color=yes",
                // common.rc imported again from ~/.bazelrc: its options again, same index.
                "--default_override=3:build=--keep_going",
                "--default_override=3:test=--test_output=errors",
                "--default_override=4:build:opt=-c",
                "--default_override=4:build:opt=opt",
            ]
        );
        assert_eq!(
            startup_options(&files),
            [(
                PathBuf::from("/out/jbazel/system.bazelrc"),
                "--max_idle_secs=0".to_string()
            )]
        );
    }

    fn read_sys(fs: &MemFs, sys: &str) -> Result<RcFile, RcError> {
        Reader::new(fs, Path::new("/ws"), Some(Path::new(sys))).parse(Path::new(sys))
    }

    #[test]
    fn the_system_rc_imports_nothing_outside_the_workspace() {
        let fs = MemFs::with(&[
            ("/out/jbazel/system.bazelrc", "import /etc/passwd\n"),
            ("/etc/passwd", "root:x:0:0\n"),
            ("/ws/tools/ok.rc", "build --x\n"),
        ]);
        let err = read_sys(&fs, "/out/jbazel/system.bazelrc").expect_err("refused");
        assert!(
            matches!(err, RcError::ImportOutsideWorkspace { .. }),
            "{err:?}"
        );
        assert_eq!(err.exit_code().code(), 2);
        for target in ["/ws/../etc/passwd", "%workspace%/../etc/passwd"] {
            let content = format!("import {target}\n");
            let fs = MemFs::with(&[
                ("/sys.rc", content.as_str()),
                ("/etc/passwd", "build --x\n"),
            ]);
            assert!(read_sys(&fs, "/sys.rc").is_err(), "{target}");
            // An optional import outside is not read (and not an error).
            let content = format!("try-import {target}\nbuild --y\n");
            let fs = MemFs::with(&[
                ("/sys.rc", content.as_str()),
                ("/etc/passwd", "build --x\n"),
            ]);
            let rc = read_sys(&fs, "/sys.rc").expect("skipped");
            assert_eq!(rc.canonical_paths.len(), 1, "{target}: not read");
        }
        let fs = MemFs::with(&[
            ("/sys.rc", "import %workspace%/tools/ok.rc\n"),
            ("/ws/tools/ok.rc", "build --x\n"),
        ]);
        let rc = read_sys(&fs, "/sys.rc").expect("inside");
        assert_eq!(rc.owners, [RcOwner::Repository, RcOwner::Repository]);
        // The user's own rc files are not confined.
        let fs = MemFs::with(&[
            ("/home/u/.bazelrc", "import /etc/shared.rc\n"),
            ("/etc/shared.rc", ""),
        ]);
        let rc = parse_file(&fs, Path::new("/home/u/.bazelrc"), Path::new("/ws")).expect("ok");
        assert_eq!(rc.owners, [RcOwner::User, RcOwner::User]);
    }

    #[test]
    fn the_system_rc_is_read_below_the_mirror_through_no_link() {
        let mut fs = MemFs::with(&[
            ("/out/jbazel/system.bazelrc", "build --x\n"),
            ("/home/u/.aws/credentials", "CANARY\n"),
        ]);
        assert!(read_sys(&fs, "/out/jbazel/system.bazelrc").is_ok());
        fs.files.remove(Path::new("/out/jbazel/system.bazelrc"));
        fs.links.insert(
            "/out/jbazel/system.bazelrc".into(),
            "/home/u/.aws/credentials".into(),
        );
        let err = read_sys(&fs, "/out/jbazel/system.bazelrc").expect_err("a link");
        assert!(matches!(err, RcError::Unreadable { .. }), "{err:?}");
    }

    #[test]
    fn a_workspace_rc_reads_no_desktop_file_outside_the_workspace() {
        let files = [
            ("/ws/.bazelrc", "build --a\nimport /home/u/.kube/config\n"),
            ("/home/u/.kube/config", "CANARY token: secret\n"),
            ("/ws/tools/x.rc", "import /home/u/.kube/config\n"),
            ("/home/u/.bazelrc", "import %workspace%/tools/x.rc\n"),
        ];
        let fs = MemFs::with(&files);
        let err = parse(&fs, "/ws/.bazelrc").expect_err("refused");
        assert!(
            matches!(err, RcError::ImportOutsideWorkspace { .. }),
            "{err:?}"
        );
        assert_eq!(err.exit_code().code(), 2);
        let text = err.to_string();
        assert!(
            text.contains("/home/u/.kube/config") && text.contains("~/.bazelrc"),
            "{text}"
        );
        // try-import: skipped, its content never read.
        let fs = MemFs::with(&[
            (
                "/ws/.bazelrc",
                "build --a\ntry-import /home/u/.kube/config\n",
            ),
            ("/home/u/.kube/config", "build --CANARY\n"),
        ]);
        let rc = parse(&fs, "/ws/.bazelrc").expect("skipped");
        assert_eq!(rc.canonical_paths, [PathBuf::from("/ws/.bazelrc")]);
        assert!(!opts(&rc).iter().any(|o| o.contains("CANARY")));
        // A workspace file imported from the user's rc is still the repository's: its
        // own import of a desktop file is refused.
        let fs = MemFs::with(&files);
        let err = parse(&fs, "/home/u/.bazelrc").expect_err("refused");
        assert!(
            matches!(err, RcError::ImportOutsideWorkspace { .. }),
            "{err:?}"
        );
        // %workspace% imports stay fine, and the user's rc may import desktop files.
        let fs = MemFs::with(&[
            ("/ws/.bazelrc", "import %workspace%/tools/y.rc\n"),
            ("/ws/tools/y.rc", "build --y\n"),
            ("/home/u/.bazelrc", "import /home/u/shared.rc\n"),
            ("/home/u/shared.rc", "build --s\n"),
        ]);
        assert_eq!(
            opts(&parse(&fs, "/ws/.bazelrc").expect("ok")),
            ["1:build=--y"]
        );
        assert_eq!(
            opts(&parse(&fs, "/home/u/.bazelrc").expect("ok")),
            ["1:build=--s"]
        );
    }

    #[test]
    fn a_workspace_rc_linked_out_of_the_workspace_is_refused() {
        let mut fs = MemFs::with(&[
            ("/home/u/.aws/credentials", "build --CANARY\n"),
            ("/ws/tools/real.rc", "build --r\n"),
        ]);
        fs.links
            .insert("/ws/.bazelrc".into(), "/home/u/.aws/credentials".into());
        let err = parse(&fs, "/ws/.bazelrc").expect_err("refused");
        assert!(matches!(err, RcError::LinkOutOfWorkspace { .. }), "{err:?}");
        assert_eq!(err.exit_code().code(), 2);
        assert!(!err.to_string().contains("CANARY"));
        // Through read_all too, and as a --bazelrc named in the workspace.
        let sel = RcSelection {
            system_rc: false,
            ..RcSelection::default()
        };
        let err = read_all(&fs, &sel, &loc(None)).expect_err("refused");
        assert!(matches!(err, RcError::LinkOutOfWorkspace { .. }), "{err:?}");
        let sel = RcSelection {
            workspace_rc: false,
            system_rc: false,
            bazelrc: vec!["/ws/.bazelrc".into()],
            ..RcSelection::default()
        };
        let err = read_all(&fs, &sel, &loc(None)).expect_err("refused");
        assert!(matches!(err, RcError::LinkOutOfWorkspace { .. }), "{err:?}");
        // A link inside the workspace is fine: read at its real path.
        fs.links
            .insert("/ws/.bazelrc".into(), "/ws/tools/real.rc".into());
        let rc = parse(&fs, "/ws/.bazelrc").expect("inside");
        assert_eq!(rc.canonical_paths, [PathBuf::from("/ws/tools/real.rc")]);
        assert_eq!(rc.owners, [RcOwner::Repository]);
    }

    /// `applied_options` over files read from `fs` as jbazel reads them.
    fn applied(fs: &MemFs, command: &str, args: &[&str]) -> Vec<String> {
        let files = read_all(
            fs,
            &RcSelection::default(),
            &loc(Some(Path::new("/home/u"))),
        )
        .expect("read");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        applied_options(&files, command, &args, RcOwner::User)
    }

    #[test]
    fn only_the_users_own_applied_options_count() {
        // A config no one selects, in the workspace rc: nothing.
        let fs = MemFs::with(&[
            (
                "/ws/.bazelrc",
                "build:never --action_env=CANARY_TOKEN\nbuild --action_env=WS_TOKEN\n",
            ),
            (
                "/out/jbazel/system.bazelrc",
                "build --action_env=POD_TOKEN\n",
            ),
        ]);
        for args in [&[][..], &["--config=never"]] {
            let got = applied(&fs, "build", args);
            assert!(got.is_empty(), "{args:?}: {got:?}");
        }
        // The same in ~/.bazelrc: only when selected.
        let fs = MemFs::with(&[(
            "/home/u/.bazelrc",
            "build:never --action_env=CANARY_TOKEN\nbuild:mine --test_env=MINE\n\
             test --repo_env=T\ncommon --action_env=C\nquery --x\n",
        )]);
        assert_eq!(applied(&fs, "build", &[]), ["--action_env=C"]);
        assert_eq!(
            applied(&fs, "build", &["--config=never"]),
            ["--action_env=C", "--action_env=CANARY_TOKEN"]
        );
        assert_eq!(
            applied(&fs, "test", &["--config", "mine"]),
            ["--repo_env=T", "--action_env=C", "--test_env=MINE"]
        );
        // After `--`: the target's arguments, not a selection.
        assert_eq!(
            applied(&fs, "run", &["//x", "--", "--config=never"]),
            ["--action_env=C"]
        );
        assert_eq!(applied(&fs, "query", &[]), ["--action_env=C", "--x"]);
        assert!(applied(&fs, "", &[]).is_empty());
    }

    #[test]
    fn configs_are_selected_as_bazel_selects_them() {
        let fs = MemFs::with(&[
            // The repository may select a config; the names still come from the user's file.
            (
                "/ws/.bazelrc",
                "build --config=ci\nbuild:ci --action_env=WS_CI\n",
            ),
            (
                "/home/u/.bazelrc",
                "build:ci --config=deep\nbuild:deep --action_env=DEEP\n\
                 build:deep --config=ci\nbuild:linux --action_env=LINUX\n\
                 cquery:other --action_env=OTHER\ntest:other --action_env=T_OTHER\n",
            ),
        ]);
        assert_eq!(
            applied(&fs, "build", &[]),
            ["--config=deep", "--action_env=DEEP", "--config=ci"]
        );
        let got = applied(&fs, "build", &["--enable_platform_specific_config"]);
        assert!(got.contains(&"--action_env=LINUX".to_string()), "{got:?}");
        let got = applied(
            &fs,
            "build",
            &[
                "--enable_platform_specific_config",
                "--noenable_platform_specific_config",
            ],
        );
        assert!(!got.contains(&"--action_env=LINUX".to_string()), "{got:?}");
        // cquery reads test's sections, which read build's.
        let got = applied(&fs, "cquery", &["--config=other"]);
        assert!(
            got.contains(&"--action_env=OTHER".to_string())
                && got.contains(&"--action_env=T_OTHER".to_string())
                && got.contains(&"--action_env=DEEP".to_string()),
            "{got:?}"
        );
    }

    /// The client env jbazel would send for `command args`, from real files, with the
    /// desktop holding `CANARY_TOKEN`.
    fn sent_env(ws: &Path, home: &Path, out: &Path, command: &str, args: &[&str]) -> Vec<String> {
        let system_rc = out.join(proto::mirror::SYSTEM_RC);
        let loc = RcLocations {
            system_rc: &system_rc,
            workspace: ws,
            home: Some(home),
            cwd: ws,
        };
        let files = read_all(&DiskFs, &RcSelection::default(), &loc).expect("read");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let user = applied_options(&files, command, &args, RcOwner::User);
        let named = crate::args::named_env_vars(
            user.iter()
                .map(String::as_str)
                .chain(args.iter().map(String::as_str)),
        );
        let desktop = vec![
            ("CANARY_TOKEN".to_string(), "s3cr3t".to_string()),
            ("LANG".to_string(), "C".to_string()),
        ];
        crate::args::client_env(&[], &desktop, &named)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    #[test]
    fn on_disk_a_workspace_rc_pulls_no_desktop_variable_nor_file() {
        let t = tempfile::tempdir().expect("tempdir");
        let (ws, home, out) = (
            t.path().join("ws"),
            t.path().join("home"),
            t.path().join("out"),
        );
        for d in [&ws, &home, &out.join(proto::mirror::JBAZEL_DIR)] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let rc = "build:never --action_env=CANARY_TOKEN\n";
        std::fs::write(ws.join(".bazelrc"), rc).expect("write");
        std::fs::write(
            out.join(proto::mirror::SYSTEM_RC),
            "build --action_env=CANARY_TOKEN\n",
        )
        .expect("write");
        for args in [&[][..], &["--config=never"]] {
            assert_eq!(
                sent_env(&ws, &home, &out, "build", args),
                ["LANG=C"],
                "{args:?}"
            );
        }
        // The same line in ~/.bazelrc: the user's own, sent when the config is selected.
        std::fs::remove_file(ws.join(".bazelrc")).expect("rm");
        std::fs::write(home.join(".bazelrc"), rc).expect("write");
        assert_eq!(sent_env(&ws, &home, &out, "build", &[]), ["LANG=C"]);
        assert_eq!(
            sent_env(&ws, &home, &out, "build", &["--config=never"]),
            ["CANARY_TOKEN=s3cr3t", "LANG=C"]
        );
        // Named on the command line: sent.
        std::fs::remove_file(home.join(".bazelrc")).expect("rm");
        assert_eq!(
            sent_env(&ws, &home, &out, "build", &["--action_env=CANARY_TOKEN"]),
            ["CANARY_TOKEN=s3cr3t", "LANG=C"]
        );

        // `import /outside/file` in the workspace rc: refused, the file never read.
        let outside = t.path().join("outside");
        std::fs::write(&outside, "build --CANARY_FILE_CONTENT\n").expect("write");
        std::fs::write(
            ws.join(".bazelrc"),
            format!("import {}\n", outside.display()),
        )
        .expect("write");
        let system_rc = out.join(proto::mirror::SYSTEM_RC);
        let loc = RcLocations {
            system_rc: &system_rc,
            workspace: &ws,
            home: Some(&home),
            cwd: &ws,
        };
        let err = read_all(&DiskFs, &RcSelection::default(), &loc).expect_err("refused");
        assert!(
            matches!(err, RcError::ImportOutsideWorkspace { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&outside.display().to_string()),
            "{err}"
        );
        // try-import: skipped; nothing of it in the args.
        std::fs::write(
            ws.join(".bazelrc"),
            format!("try-import {}\n", outside.display()),
        )
        .expect("write");
        let files = read_all(&DiskFs, &RcSelection::default(), &loc).expect("read");
        let args = rc_args(&files, &|p: &Path| p.display().to_string());
        assert!(
            !args.iter().any(|a| a.contains("CANARY_FILE_CONTENT")),
            "{args:?}"
        );
        assert_eq!(files[1].canonical_paths.len(), 1, "the import is not read");
        // A workspace .bazelrc that is a link out of the workspace: refused.
        std::fs::remove_file(ws.join(".bazelrc")).expect("rm");
        std::os::unix::fs::symlink(&outside, ws.join(".bazelrc")).expect("symlink");
        let err = read_all(&DiskFs, &RcSelection::default(), &loc).expect_err("refused");
        assert!(matches!(err, RcError::LinkOutOfWorkspace { .. }), "{err:?}");
        // A FIFO as the workspace rc or the system rc: an error at once, no hang.
        std::fs::remove_file(ws.join(".bazelrc")).expect("rm");
        nix::unistd::mkfifo(
            &ws.join(".bazelrc"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let (ws2, home2, sys2) = (ws.clone(), home.clone(), system_rc.clone());
        let r = crate::untrusted_fs::within(std::time::Duration::from_secs(10), move || {
            let loc = RcLocations {
                system_rc: &sys2,
                workspace: &ws2,
                home: Some(&home2),
                cwd: &ws2,
            };
            read_all(&DiskFs, &RcSelection::default(), &loc).map(drop)
        });
        assert!(matches!(r, Err(RcError::Unreadable { .. })), "{r:?}");
    }
}
