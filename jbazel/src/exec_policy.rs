//! Whether jbazel executes what the server asks, and what exactly (pure).
//!
//! Bazel's server may end a command with an exec request: its client then runs a program in
//! the client's place (that is how `bazel run` runs the binary it built). The server here
//! runs in the pod with the user's untrusted build and is reached over the network, so an
//! exec request is honoured only when all of these hold:
//!
//! 1. the command is `run`, and the user did not pass `--script_path` (with it Bazel writes
//!    a script and asks for no exec); for any other command the request is refused;
//! 2. the request is the command line Bazel 4's `run` writes: `[<shell>, -c, <line>]`, where
//!    `<line>` is words joined as Bazel's `ShellEscaper.escapeJoinAll` joins them (each word
//!    either bare, made of `[A-Za-z0-9@%_+=:,./-]`, or single-quoted with `'\''` for a
//!    quote), so nothing in it is shell syntax. jbazel runs those words itself, without the
//!    shell: the program it executes is the first word;
//! 3. that program is a pod path (`/work/src/...`, `/work/out/...`) and, rewritten to the
//!    desktop and with every symlink resolved as `execve` would, lies inside the workspace
//!    root or the mirror of the output base ([`inside`], checked on disk by
//!    [`crate::runfiles`]). A `/bin/sh -c "..."` or any other desktop binary is refused.
//!
//! `--run_under=<prefix>`: Bazel 4 then nests a second shell, `[<shell>, -c, "<prefix>
//! <binary> <args>"]`, and `<prefix>` is the option's text as given, unescaped (a label's
//! prefix is the path of the tool it built, plus its escaped options).
//! - A prefix whose first word is itself a pod path (a `--run_under=//tools:wrapper` built
//!   in the workspace) is a program like any other: the words are run without a shell.
//! - A prefix that names a desktop tool (`--run_under=valgrind`, `--run_under='cd $PWD &&'`)
//!   is run only when it is exactly the value of a `--run_under` the user wrote: on the
//!   command line or in their own rc files (the workspace's, `~/.bazelrc`, `--bazelrc`),
//!   never the system rc the pod publishes ([`Named`]). Then jbazel runs `<known shell> -c
//!   "<prefix> <binary> <args>"` with the user's prefix verbatim (it is shell text the user
//!   wrote, e.g. `cd $PWD &&`) and the rest re-quoted from the checked words, the binary
//!   still required to lie inside the workspace or the mirror. The shell must be one of
//!   [`KNOWN_SHELLS`].
//!
//! Refusals are [`Refusal`]s: jbazel exits 37 and executes nothing.

use crate::paths::{POD_OUT, POD_SRC};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The only command whose exec request is honoured.
pub const RUN: &str = "run";

/// Shells a `--run_under` command the user named may run in (the pod's `sh` toolchain path,
/// which is also a desktop path).
pub const KNOWN_SHELLS: &[&str] = &["/bin/bash", "/usr/bin/bash", "/bin/sh", "/usr/bin/sh"];

/// Why an exec request is not honoured; each names the command or the program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The command is not `run`.
    #[error(
        "refusing to execute {program}: the server asked for it after '{command}', and jbazel \
         executes only for 'run'"
    )]
    NotRun { command: String, program: String },
    /// `run --script_path`: Bazel writes the script and asks for no exec.
    #[error(
        "refusing to execute {program}: the server asked for it after 'run --script_path', \
         which writes a script instead"
    )]
    ScriptPath { program: String },
    /// No argv at all.
    #[error("refusing an empty exec request after 'run'")]
    Empty,
    /// The command line is not Bazel's `run`'s: not `<shell> -c <escaped words>`.
    #[error(
        "refusing to execute {command_line:?} after 'run': not the command line Bazel's 'run' \
         writes (a shell running one escaped command)"
    )]
    NotBazels { command_line: String },
    /// The program is not a path of the workspace or the output base.
    #[error(
        "refusing to execute {program} after 'run': it is not in the workspace or the output \
         base"
    )]
    NotAPodPath { program: String },
    /// A `--run_under` prefix the user did not write.
    #[error(
        "refusing to execute {prefix:?} (a --run_under prefix) after 'run': the user did not \
         pass --run_under={prefix:?}, and it is not a program in the workspace or the output \
         base"
    )]
    RunUnderNotNamed { prefix: String },
    /// The user's `--run_under` in a shell jbazel does not know.
    #[error(
        "refusing to run --run_under={prefix:?} in {shell}: not one of the shells jbazel runs \
         it in ({})",
        KNOWN_SHELLS.join(", ")
    )]
    UnknownShell { prefix: String, shell: String },
    /// The program, on the desktop with its links resolved, is outside.
    #[error(
        "refusing to execute {} after 'run': it resolves to {}, outside the workspace and the \
         output base",
        program.display(),
        resolved.display()
    )]
    Outside { program: PathBuf, resolved: PathBuf },
    /// The program cannot be resolved on the desktop (missing, unreadable).
    #[error("refusing to execute {} after 'run': it cannot be resolved on the desktop ({why})", program.display())]
    Unresolvable { program: PathBuf, why: String },
}

/// What the user wrote about `run` in their own options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    /// Every `--run_under` value (command line and the user's own rc files).
    pub run_under: Vec<String>,
    /// Whether `--script_path` was given.
    pub script_path: bool,
}

impl Named {
    /// Scans options (`--run_under=V`, `--run_under V`, `--script_path...`), stopping at
    /// `--` (what follows is the binary's arguments).
    pub fn scan<'a>(options: impl IntoIterator<Item = &'a str>) -> Named {
        let mut named = Named::default();
        let mut want_value = false;
        for o in options {
            if std::mem::take(&mut want_value) {
                named.run_under.push(o.to_string());
                continue;
            }
            if o == "--" {
                break;
            }
            if o == "--run_under" {
                want_value = true;
            } else if let Some(v) = o.strip_prefix("--run_under=") {
                named.run_under.push(v.to_string());
            } else if o == "--script_path" || o.starts_with("--script_path=") {
                named.script_path = true;
            }
        }
        named
    }

    /// The names in the user's own rc files: `(command section, its option words)`. A
    /// `--run_under` counts in any section (it is a value the user wrote); `--script_path`
    /// only where it applies to every `run` (`common`, `build`, `run`, no `:config`).
    pub fn scan_rc<'a>(sections: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>) -> Named {
        let mut named = Named::default();
        for (section, options) in sections {
            let mut found = Named::scan(options);
            found.script_path &= matches!(section, "common" | "build" | "run");
            named = named.merge(found);
        }
        named
    }

    /// `self` with `other`'s names added.
    pub fn merge(mut self, other: Named) -> Named {
        self.run_under.extend(other.run_under);
        self.script_path |= other.script_path;
        self
    }
}

/// A `--run_under` command the user named, run through a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPrefix {
    /// One of [`KNOWN_SHELLS`].
    pub shell: PathBuf,
    /// The user's `--run_under` value, verbatim.
    pub prefix: String,
}

/// What jbazel will execute: a program (a pod path until rewritten) and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// `argv`: the program first.
    pub argv: Vec<Vec<u8>>,
    /// Run as `<shell> -c "<prefix> <argv quoted>"` instead of executing `argv`.
    pub prefix: Option<UserPrefix>,
}

impl Program {
    /// The program (first word).
    pub fn program(&self) -> &[u8] {
        self.argv.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// The argv to execute: `argv` itself, or the shell running the user's prefix.
    pub fn exec_argv(&self) -> Vec<Vec<u8>> {
        match &self.prefix {
            None => self.argv.clone(),
            Some(p) => {
                let mut line = p.prefix.as_bytes().to_vec();
                line.push(b' ');
                line.extend_from_slice(&join_words(&self.argv));
                vec![
                    p.shell.as_os_str().as_bytes().to_vec(),
                    b"-c".to_vec(),
                    line,
                ]
            }
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether `b` needs no quoting in a shell word (Bazel's `ShellEscaper` set plus `=`).
pub fn shell_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"@%_+=:,./-".contains(&b)
}

/// One word as Bazel's `ShellEscaper.escapeString` writes it.
pub fn quote_word(word: &[u8]) -> Vec<u8> {
    if !word.is_empty() && word.iter().all(|b| shell_safe(*b)) {
        return word.to_vec();
    }
    let mut q = b"'".to_vec();
    for b in word {
        if *b == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(*b);
        }
    }
    q.push(b'\'');
    q
}

/// Words joined as `ShellEscaper.escapeJoinAll` joins them.
pub fn join_words(words: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(&quote_word(w));
    }
    out
}

/// The words of a line `ShellEscaper.escapeJoinAll` wrote (its inverse), or None when the
/// line holds anything else: an unquoted byte outside [`shell_safe`], two spaces, a leading
/// space, an unclosed quote. A word may mix bare and quoted parts (`'a'\''b'` is `a'b`).
pub fn split_words(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    if line.is_empty() {
        return Some(Vec::new());
    }
    let mut words = Vec::new();
    let mut word = Vec::new();
    let mut i = 0;
    // Whether the current word has anything (`''` is a word).
    let mut started = false;
    while i < line.len() {
        match line[i] {
            b' ' => {
                if !started {
                    return None;
                }
                words.push(std::mem::take(&mut word));
                started = false;
                i += 1;
            }
            b'\'' => {
                let close = line[i + 1..].iter().position(|b| *b == b'\'')? + i + 1;
                word.extend_from_slice(&line[i + 1..close]);
                started = true;
                i = close + 1;
            }
            b'\\' if line.get(i + 1) == Some(&b'\'') => {
                word.push(b'\'');
                started = true;
                i += 2;
            }
            b if shell_safe(b) => {
                word.push(b);
                started = true;
                i += 1;
            }
            _ => return None,
        }
    }
    // One trailing space ends the last word: Bazel's `--run_under` line is `<prefix>
    // <binary> <escaped args>`, which ends in a space when there are no args.
    if started {
        words.push(word);
    }
    Some(words)
}

/// Whether `p` is `/work/src` or `/work/out` or below (whole components).
pub fn is_pod_path(p: &[u8]) -> bool {
    let p = Path::new(std::ffi::OsStr::from_bytes(p));
    p.starts_with(POD_SRC) || p.starts_with(POD_OUT)
}

/// `[<absolute shell>, -c, <line>]`: the line, else None.
fn shell_line(argv: &[Vec<u8>]) -> Option<&[u8]> {
    match argv {
        [shell, c, line] if shell.starts_with(b"/") && c == b"-c" => Some(line),
        _ => None,
    }
}

/// The exec request's argv as jbazel will run it, or why not (rules 1 and 2 of the module
/// doc, and rule 3's lexical half: the program is a pod path). `command` is the Bazel
/// command the user ran.
pub fn admit(command: &str, argv: &[Vec<u8>], named: &Named) -> Result<Program, Refusal> {
    let shown = || {
        let words = shell_line(argv)
            .and_then(split_words)
            .unwrap_or_else(|| argv.to_vec());
        words.first().map(|w| lossy(w)).unwrap_or_default()
    };
    if command != RUN {
        return Err(Refusal::NotRun {
            command: command.to_string(),
            program: shown(),
        });
    }
    if named.script_path {
        return Err(Refusal::ScriptPath { program: shown() });
    }
    if argv.is_empty() {
        return Err(Refusal::Empty);
    }
    let words = match shell_line(argv) {
        Some(line) => split_words(line).ok_or_else(|| Refusal::NotBazels {
            command_line: lossy(line),
        })?,
        // A plain argv (no shell): taken as is.
        None => argv.to_vec(),
    };
    let Some(first) = words.first() else {
        return Err(Refusal::Empty);
    };
    if is_pod_path(first) {
        return Ok(Program {
            argv: words,
            prefix: None,
        });
    }
    // `--run_under`: a second shell and the prefix's line.
    let Some(line) = shell_line(&words) else {
        return Err(Refusal::NotAPodPath {
            program: lossy(first),
        });
    };
    if let Some(inner) = split_words(line).filter(|w| w.first().is_some_and(|p| is_pod_path(p))) {
        return Ok(Program {
            argv: inner,
            prefix: None,
        });
    }
    let shell = lossy(first);
    let user = named
        .run_under
        .iter()
        .filter(|v| !v.is_empty())
        .filter_map(|v| {
            let rest = line.strip_prefix(v.as_bytes())?.strip_prefix(b" ")?;
            let rest = split_words(rest)?;
            rest.first()
                .is_some_and(|p| is_pod_path(p))
                .then_some((v, rest))
        })
        .max_by_key(|(v, _)| v.len());
    let Some((prefix, rest)) = user else {
        let prefix = named
            .run_under
            .iter()
            .find(|v| !v.is_empty() && line.starts_with(v.as_bytes()))
            .cloned()
            .unwrap_or_else(|| first_word(line));
        return Err(Refusal::RunUnderNotNamed { prefix });
    };
    if !KNOWN_SHELLS.contains(&shell.as_str()) {
        return Err(Refusal::UnknownShell {
            prefix: prefix.clone(),
            shell,
        });
    }
    Ok(Program {
        argv: rest,
        prefix: Some(UserPrefix {
            shell: PathBuf::from(shell),
            prefix: prefix.clone(),
        }),
    })
}

/// The text up to the first space (for a message).
fn first_word(line: &[u8]) -> String {
    let end = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
    lossy(&line[..end])
}

/// Rule 3 on the desktop: `resolved` (the program with every link resolved) lies inside one
/// of `roots` (the workspace root, the mirror's `src` and `out`, their canonical spellings).
pub fn inside(resolved: &Path, roots: &[PathBuf]) -> bool {
    resolved.is_absolute()
        && roots
            .iter()
            .any(|r| r.is_absolute() && resolved.starts_with(r))
}

/// Rule 3's verdict for `program` (desktop path) given what resolving it gave.
pub fn check_resolved(
    program: &Path,
    resolved: Result<PathBuf, String>,
    roots: &[PathBuf],
) -> Result<(), Refusal> {
    match resolved {
        Ok(r) if inside(&r, roots) => Ok(()),
        Ok(r) => Err(Refusal::Outside {
            program: program.to_path_buf(),
            resolved: r,
        }),
        Err(why) => Err(Refusal::Unresolvable {
            program: program.to_path_buf(),
            why,
        }),
    }
}

/// Bytes as a path.
pub fn os_path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(b.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIN: &str = "/work/out/execroot/__main__/bazel-out/k8-fastbuild/bin";

    fn v(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn bash(line: &str) -> Vec<Vec<u8>> {
        v(&["/bin/bash", "-c", line])
    }

    /// The exec request Bazel 4 writes for `run --run_under=<prefix>`.
    fn run_under(shell: &str, prefix: &str, exe: &str, args: &[&str]) -> Vec<Vec<u8>> {
        let inner = format!(
            "{prefix} {exe} {}",
            String::from_utf8_lossy(&join_words(&v(args)))
        );
        let line = join_words(&v(&[shell, "-c", &inner]));
        v(&["/bin/bash", "-c", &String::from_utf8_lossy(&line)])
    }

    fn named(run_under: &[&str]) -> Named {
        Named {
            run_under: run_under.iter().map(|s| s.to_string()).collect(),
            script_path: false,
        }
    }

    #[test]
    fn split_words_inverts_bazels_escape_join() {
        let cases: Vec<(&str, Option<Vec<&str>>)> = vec![
            ("", Some(vec![])),
            ("/a/b c", Some(vec!["/a/b", "c"])),
            ("x 'b c' ''", Some(vec!["x", "b c", ""])),
            ("'it'\\''s'", Some(vec!["it's"])),
            ("'$(rm -rf ~)'", Some(vec!["$(rm -rf ~)"])),
            ("a=b @%_+:,./-", Some(vec!["a=b", "@%_+:,./-"])),
            // Shell syntax outside quotes is not Bazel's output.
            ("x; touch y", None),
            ("x && y", None),
            ("x | y", None),
            ("$(y)", None),
            ("`y`", None),
            ("x > y", None),
            ("~/x", None),
            ("x\ny", None),
            ("x\\ y", None),
            ("a  b", None),
            (" a", None),
            (" ", None),
            ("a ", Some(vec!["a"])),
            ("a  ", None),
            ("'open", None),
            ("\"x\"", None),
        ];
        for (line, want) in cases {
            let want = want.map(|w| v(&w));
            assert_eq!(split_words(line.as_bytes()), want, "{line:?}");
        }
        // Round trip with what Bazel writes.
        for words in [
            vec!["/work/out/x", "a b", "it's", "", "$HOME", "--flag=1"],
            vec!["/p"],
        ] {
            let w = v(&words);
            assert_eq!(split_words(&join_words(&w)), Some(w.clone()), "{words:?}");
        }
    }

    #[test]
    fn named_table() {
        let cases: Vec<(Vec<&str>, Named)> = vec![
            (vec!["//x"], Named::default()),
            (
                vec!["--run_under=valgrind", "//x"],
                Named {
                    run_under: vec!["valgrind".into()],
                    script_path: false,
                },
            ),
            (
                vec!["--run_under", "cd $PWD &&", "//x"],
                Named {
                    run_under: vec!["cd $PWD &&".into()],
                    script_path: false,
                },
            ),
            (
                vec!["--script_path=/tmp/s", "//x"],
                Named {
                    run_under: vec![],
                    script_path: true,
                },
            ),
            // After `--`: the binary's own arguments.
            (
                vec!["//x", "--", "--run_under=evil", "--script_path"],
                Named::default(),
            ),
        ];
        for (args, want) in cases {
            assert_eq!(Named::scan(args.iter().copied()), want, "{args:?}");
        }
    }

    #[test]
    fn scan_rc_table() {
        let got = Named::scan_rc([
            ("build", vec!["--jobs=2"]),
            ("run:dbg", vec!["--run_under", "gdb --args"]),
            ("run:script", vec!["--script_path=/tmp/s"]),
        ]);
        assert_eq!(
            got,
            Named {
                run_under: vec!["gdb --args".into()],
                script_path: false
            }
        );
        for section in ["common", "build", "run"] {
            let got = Named::scan_rc([(section, vec!["--script_path=/tmp/s"])]);
            assert!(got.script_path, "{section}");
        }
        assert!(!Named::scan_rc([("test", vec!["--script_path=/tmp/s"])]).script_path);
    }

    #[test]
    fn quote_word_table() {
        for (word, want) in [
            ("/a/b-c_d.e", "/a/b-c_d.e"),
            ("/a b", "'/a b'"),
            ("/it's", "'/it'\\''s'"),
            ("", "''"),
        ] {
            assert_eq!(String::from_utf8_lossy(&quote_word(word.as_bytes())), want);
        }
    }

    #[test]
    fn admit_table() {
        let exe = format!("{BIN}/app/hello");
        let direct = |words: &[&str]| {
            Ok(Program {
                argv: v(words),
                prefix: None,
            })
        };
        let under = |shell: &str, prefix: &str, words: &[&str]| {
            Ok(Program {
                argv: v(words),
                prefix: Some(UserPrefix {
                    shell: PathBuf::from(shell),
                    prefix: prefix.to_string(),
                }),
            })
        };
        /// (command, the request's argv, what the user named, the verdict)
        type Case<'a> = (&'a str, Vec<Vec<u8>>, Named, Result<Program, Refusal>);
        let cases: Vec<Case> = vec![
            // Bazel 4's `run`: the binary and its escaped arguments.
            (
                "run",
                bash(&format!("{exe} a 'b c'")),
                Named::default(),
                direct(&[&exe, "a", "b c"]),
            ),
            // A binary's own `-c` argument is not a shell.
            (
                "run",
                bash(&format!("{exe} -c x")),
                Named::default(),
                direct(&[&exe, "-c", "x"]),
            ),
            // A workspace binary (a sh_binary's source) is a pod path too.
            (
                "run",
                bash("/work/src/tools/where.sh"),
                Named::default(),
                direct(&["/work/src/tools/where.sh"]),
            ),
            // A plain argv.
            (
                "run",
                v(&[&exe, "x"]),
                Named::default(),
                direct(&[&exe, "x"]),
            ),
            // Any other command: refused, whatever the request.
            (
                "build",
                v(&["/bin/sh", "-c", "touch /tmp/canary"]),
                Named::default(),
                Err(Refusal::NotRun {
                    command: "build".into(),
                    program: "touch".into(),
                }),
            ),
            (
                "test",
                bash(&exe),
                Named::default(),
                Err(Refusal::NotRun {
                    command: "test".into(),
                    program: exe.clone(),
                }),
            ),
            (
                "",
                bash(&exe),
                Named::default(),
                Err(Refusal::NotRun {
                    command: "".into(),
                    program: exe.clone(),
                }),
            ),
            // `run --script_path` writes a script: no exec.
            (
                "run",
                bash(&exe),
                Named {
                    run_under: vec![],
                    script_path: true,
                },
                Err(Refusal::ScriptPath {
                    program: exe.clone(),
                }),
            ),
            ("run", vec![], Named::default(), Err(Refusal::Empty)),
            ("run", bash(""), Named::default(), Err(Refusal::Empty)),
            // A shell command line, or a desktop binary: refused.
            (
                "run",
                v(&["/bin/sh", "-c", "touch /tmp/canary"]),
                Named::default(),
                Err(Refusal::NotAPodPath {
                    program: "touch".into(),
                }),
            ),
            (
                "run",
                bash(&format!("{exe}; touch /tmp/canary")),
                Named::default(),
                Err(Refusal::NotBazels {
                    command_line: format!("{exe}; touch /tmp/canary"),
                }),
            ),
            (
                "run",
                v(&["/usr/bin/python3", "x.py"]),
                Named::default(),
                Err(Refusal::NotAPodPath {
                    program: "/usr/bin/python3".into(),
                }),
            ),
            (
                "run",
                bash("/work/srcs/x"),
                Named::default(),
                Err(Refusal::NotAPodPath {
                    program: "/work/srcs/x".into(),
                }),
            ),
            // --run_under=//tools:wrapper: the tool built in the output base runs the binary.
            (
                "run",
                run_under(
                    "/bin/bash",
                    &format!("{BIN}/tools/wrapper --v"),
                    &exe,
                    &["a'b"],
                ),
                Named::default(),
                direct(&[&format!("{BIN}/tools/wrapper"), "--v", &exe, "a'b"]),
            ),
            // --run_under=<desktop tool>: only the user's own value, verbatim.
            (
                "run",
                run_under("/bin/bash", "valgrind --quiet", &exe, &["a b"]),
                named(&["valgrind --quiet"]),
                under("/bin/bash", "valgrind --quiet", &[&exe, "a b"]),
            ),
            (
                "run",
                run_under("/bin/bash", "cd $PWD &&", &exe, &[]),
                named(&["cd", "cd $PWD &&"]),
                under("/bin/bash", "cd $PWD &&", &[&exe]),
            ),
            (
                "run",
                run_under("/bin/bash", "valgrind", &exe, &[]),
                Named::default(),
                Err(Refusal::RunUnderNotNamed {
                    prefix: "valgrind".into(),
                }),
            ),
            (
                "run",
                run_under("/bin/bash", "valgrind; touch /tmp/canary;", &exe, &[]),
                named(&["valgrind"]),
                Err(Refusal::RunUnderNotNamed {
                    prefix: "valgrind".into(),
                }),
            ),
            // The user's prefix, then something other than a binary of the output base.
            (
                "run",
                run_under("/bin/bash", "valgrind", "/usr/bin/id", &[]),
                named(&["valgrind"]),
                Err(Refusal::RunUnderNotNamed {
                    prefix: "valgrind".into(),
                }),
            ),
            (
                "run",
                run_under("/tmp/evil", "valgrind", &exe, &[]),
                named(&["valgrind"]),
                Err(Refusal::UnknownShell {
                    prefix: "valgrind".into(),
                    shell: "/tmp/evil".into(),
                }),
            ),
        ];
        for (command, argv, named, want) in cases {
            let got = admit(command, &argv, &named);
            assert_eq!(got, want, "{command} {argv:?}");
        }
    }

    #[test]
    fn exec_argv_runs_the_users_prefix_in_the_shell() {
        let p = Program {
            argv: v(&["/home/a/ws/bin/x", "b c", "it's"]),
            prefix: Some(UserPrefix {
                shell: PathBuf::from("/bin/bash"),
                prefix: "cd $PWD &&".into(),
            }),
        };
        assert_eq!(
            p.exec_argv(),
            v(&[
                "/bin/bash",
                "-c",
                "cd $PWD && /home/a/ws/bin/x 'b c' 'it'\\''s'"
            ])
        );
        let p = Program {
            argv: v(&["/home/a/ws/bin/x", "b c"]),
            prefix: None,
        };
        assert_eq!(p.exec_argv(), v(&["/home/a/ws/bin/x", "b c"]));
    }

    #[test]
    fn check_resolved_table() {
        let roots = vec![
            PathBuf::from("/home/a/ws"),
            PathBuf::from("/fs/a/h/src"),
            PathBuf::from("/fs/a/h/out"),
        ];
        let prog = Path::new("/run/user/1/jbazel-run/k-c/x");
        let ok = |s: &str| Ok(PathBuf::from(s));
        let cases: Vec<(Result<PathBuf, String>, bool)> = vec![
            (ok("/home/a/ws/app/x.sh"), true),
            (ok("/fs/a/h/out/execroot/__main__/bazel-out/bin/x"), true),
            (ok("/fs/a/h/src/x"), true),
            (ok("/home/a/ws"), true),
            (ok("/home/a/wsx/x"), false),
            (ok("/bin/true"), false),
            (ok("/fs/a/h/outside"), false),
            (ok("relative/x"), false),
            (Err("No such file or directory".into()), false),
        ];
        for (resolved, want) in cases {
            let got = check_resolved(prog, resolved.clone(), &roots);
            assert_eq!(got.is_ok(), want, "{resolved:?}: {got:?}");
        }
        assert_eq!(
            check_resolved(prog, ok("/bin/true"), &roots)
                .expect_err("outside")
                .to_string(),
            "refusing to execute /run/user/1/jbazel-run/k-c/x after 'run': it resolves to \
             /bin/true, outside the workspace and the output base"
        );
    }
}
