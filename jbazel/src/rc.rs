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

use std::path::{Path, PathBuf};

/// Bazel's `WorkspaceLayout::WorkspacePrefix`.
pub const WORKSPACE_PREFIX: &str = "%workspace%";

/// Filesystem access needed to read rc files (so the reader is testable in memory).
pub trait RcFs {
    /// The file's contents; an error for a missing or unreadable file.
    fn read(&self, path: &Path) -> std::io::Result<String>;
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
    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }
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
    /// The pod-published system rc imports a file outside the workspace. That file is
    /// written by the pod (where untrusted builds run): the desktop reads nothing else
    /// because of it.
    #[error(
        "the platform's system rc '{}' imports '{target}', outside the workspace: refused",
        file.display()
    )]
    ImportOutsideWorkspace { file: PathBuf, target: String },
}

impl RcError {
    /// Bazel client's exit code: 2 (BAD_ARGV) except for unreadable files (37).
    pub fn exit_code(&self) -> i32 {
        match self {
            RcError::Unreadable { .. } => 37,
            _ => 2,
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

/// Parses one top-level rc file and its imports (`RcFile::Parse`).
pub fn parse_file(fs: &dyn RcFs, filename: &Path, workspace: &Path) -> Result<RcFile, RcError> {
    parse_file_confined(fs, filename, workspace, false)
}

/// [`parse_file`]; with `confined`, every import must resolve inside the workspace (the
/// pod-published system rc: the pod may have written it).
pub fn parse_file_confined(
    fs: &dyn RcFs,
    filename: &Path,
    workspace: &Path,
    confined: bool,
) -> Result<RcFile, RcError> {
    let mut rc = RcFile::default();
    let mut stack = vec![filename.to_string_lossy().into_owned()];
    let confine = confined.then_some(workspace);
    parse_into(fs, filename, workspace, confine, &mut stack, &mut rc)?;
    Ok(rc)
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

fn parse_into(
    fs: &dyn RcFs,
    filename: &Path,
    workspace: &Path,
    confine: Option<&Path>,
    import_stack: &mut Vec<String>,
    rc: &mut RcFile,
) -> Result<(), RcError> {
    let contents = fs.read(filename).map_err(|_| RcError::Unreadable {
        path: filename.to_path_buf(),
    })?;
    let canonical = fs
        .canonicalize(filename)
        .unwrap_or_else(|| filename.to_path_buf());
    let index = rc.canonical_paths.len();
    rc.canonical_paths.push(canonical.clone());

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
            let target = match words[1].strip_prefix(WORKSPACE_PREFIX) {
                Some(rest) => join_path(&workspace.to_string_lossy(), rest),
                None => words[1].clone(),
            };
            if let Some(root) = confine {
                if !inside(fs, root, &target) {
                    if command == "try-import" {
                        // Optional by definition: not read (Debian's rc tries
                        // /etc/bazel.bazelrc, which is the pod's, not the desktop's).
                        tracing::debug!(file = %target, "optional import outside the workspace not read");
                        continue;
                    }
                    return Err(RcError::ImportOutsideWorkspace {
                        file: canonical,
                        target,
                    });
                }
            }
            if import_stack.contains(&target) {
                let mut chain = import_stack.clone();
                chain.push(target);
                return Err(RcError::ImportLoop { chain });
            }
            import_stack.push(target.clone());
            match parse_into(fs, Path::new(&target), workspace, confine, import_stack, rc) {
                Ok(()) => {}
                Err(RcError::Unreadable { .. }) if command == "try-import" => {
                    tracing::debug!(file = %target, "skipped optional import");
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
    for value in &sel.bazelrc {
        let path = absolute_from_flag(value, loc);
        if fs.read(&path).is_err() {
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
    top_level_files(fs, sel, loc)?
        .iter()
        .map(|f| parse_file_confined(fs, f, loc.workspace, f == loc.system_rc))
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
            assert_eq!(err.exit_code(), *code);
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
        assert_eq!(err.exit_code(), 2);
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

    #[test]
    fn the_system_rc_imports_nothing_outside_the_workspace() {
        let fs = MemFs::with(&[
            ("/out/jbazel/system.bazelrc", "import /etc/passwd\n"),
            ("/etc/passwd", "root:x:0:0\n"),
            ("/ws/tools/ok.rc", "build --x\n"),
        ]);
        let err = parse_file_confined(
            &fs,
            Path::new("/out/jbazel/system.bazelrc"),
            Path::new("/ws"),
            true,
        )
        .expect_err("refused");
        assert!(
            matches!(err, RcError::ImportOutsideWorkspace { .. }),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 2);
        for target in ["/ws/../etc/passwd", "%workspace%/../etc/passwd"] {
            let content = format!("import {target}\n");
            let fs = MemFs::with(&[
                ("/sys.rc", content.as_str()),
                ("/etc/passwd", "build --x\n"),
            ]);
            assert!(
                parse_file_confined(&fs, Path::new("/sys.rc"), Path::new("/ws"), true).is_err(),
                "{target}"
            );
            // An optional import outside is not read (and not an error).
            let content = format!("try-import {target}\nbuild --y\n");
            let fs = MemFs::with(&[
                ("/sys.rc", content.as_str()),
                ("/etc/passwd", "build --x\n"),
            ]);
            let rc = parse_file_confined(&fs, Path::new("/sys.rc"), Path::new("/ws"), true)
                .expect("skipped");
            assert_eq!(rc.canonical_paths.len(), 1, "{target}: not read");
        }
        let fs = MemFs::with(&[
            ("/sys.rc", "import %workspace%/tools/ok.rc\n"),
            ("/ws/tools/ok.rc", "build --x\n"),
        ]);
        assert!(parse_file_confined(&fs, Path::new("/sys.rc"), Path::new("/ws"), true).is_ok());
        // The user's own rc files are not confined.
        let fs = MemFs::with(&[
            ("/home/u/.bazelrc", "import /etc/shared.rc\n"),
            ("/etc/shared.rc", ""),
        ]);
        assert!(parse_file(&fs, Path::new("/home/u/.bazelrc"), Path::new("/ws")).is_ok());
    }
}
