//! `--symlink_prefix` as the pod's Bazel must see it: the checkout `/work/src` is read-only
//! in the pod, so Bazel makes its convenience symlinks under the output base instead, in
//! `/work/out/jbazel/links/` ([`crate::links::POD_LINKS`]), and jbazel mirrors them into
//! the desktop's workspace ([`crate::links::mirror`]).
//!
//! Measured with Bazel 4.2.3 on a read-only workspace:
//! - with any relative prefix, `build`/`test`/`run` succeed but warn `failed to create one
//!   or more convenience symlinks`, and `clean` warns `failed to remove ...` for every
//!   symlink of the prefix's names in the checkout (the desktop's own links are such);
//! - with an absolute prefix, Bazel makes `<prefix>bin`, `testlogs`, `out` and
//!   `<prefix>src` there (parent directories created), targets in `/work/out`, and `clean`
//!   removes them; it still makes `bazel-out` in the workspace (its product-name link)
//!   unless `--experimental_no_product_name_out_symlink` (hidden in 4.2.3) is given;
//! - `clean` ignores that option and always removes `bazel-out` from the workspace, so a
//!   `clean` is sent `--symlink_prefix=/` (Bazel touches no link) and jbazel removes the
//!   links itself ([`crate::links::clean`]);
//! - `--symlink_prefix=/` makes and removes no links, silently;
//! - `info bazel-bin` is the same real path under every prefix.
//!
//! So: the defaults go first, as the client's own (index 0) `build` options, below every
//! rc file; every `--symlink_prefix=P` of the rc files and the command line becomes
//! `--symlink_prefix=/work/out/jbazel/links/P` where it stands (so `--config` expansion and
//! precedence stay the server's); `/` stays `/`; a prefix naming a place outside the
//! workspace (absolute, or with `..`) is refused and becomes `/`: jbazel creates nothing
//! outside the workspace. Pure code.

use std::path::{Component, Path};

use crate::links::POD_LINKS;

/// The option.
pub const OPTION: &str = "--symlink_prefix";
/// Bazel's default prefix: its product name and a hyphen.
pub const DEFAULT: &str = "bazel-";
/// The prefix with which Bazel makes and removes no convenience symlinks.
pub const NONE: &str = "/";
/// Without it Bazel 4.2.3 also makes `bazel-out` in the (read-only) workspace whatever the
/// prefix; accepted by `build` and every command inheriting its options.
pub const NO_PRODUCT_OUT: &str = "--experimental_no_product_name_out_symlink";

const DEFAULT_OVERRIDE: &str = "--default_override=";

/// The client's own `build` options (rc index 0, before every rc file's): the default
/// prefix in the links directory, and no `bazel-out` in the workspace.
pub fn defaults() -> Vec<String> {
    vec![
        format!("{DEFAULT_OVERRIDE}0:build={OPTION}={POD_LINKS}/{DEFAULT}"),
        format!("{DEFAULT_OVERRIDE}0:build={NO_PRODUCT_OUT}"),
    ]
}

/// Whether links named `<prefix>...` stay inside the directory they are made in.
pub fn is_inside(prefix: &str) -> bool {
    !prefix.starts_with('/')
        && Path::new(prefix)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// What a prefix becomes in the pod: `/` stays, a prefix inside the workspace moves into
/// the links directory, any other is refused (`None`).
pub fn to_pod(prefix: &str) -> Option<String> {
    if prefix == NONE {
        Some(NONE.to_string())
    } else if is_inside(prefix) {
        Some(format!("{POD_LINKS}/{prefix}"))
    } else {
        None
    }
}

/// The arguments as the server must see them, and the prefixes they name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rewritten {
    /// [`defaults`], then the rc args with their prefixes moved.
    pub rc_args: Vec<String>,
    /// The user's args with their prefixes moved; for `clean`, `--symlink_prefix=/` after
    /// the last option.
    pub user_args: Vec<String>,
    /// The prefixes whose links jbazel mirrors, lowest precedence first: each where it last
    /// appeared ([`DEFAULT`] first unless named again, then the rc files', then the command
    /// line's). `/` and refused prefixes are not among them.
    pub prefixes: Vec<String>,
    /// Prefixes refused (absolute or leaving the workspace): the server got `/` instead.
    pub refused: Vec<String>,
}

#[derive(Default)]
struct Found {
    prefixes: Vec<String>,
    refused: Vec<String>,
}

impl Found {
    /// The pod value of `prefix`, noting it.
    fn take(&mut self, prefix: &str) -> String {
        match to_pod(prefix) {
            Some(pod) => {
                if prefix != NONE {
                    self.prefixes.retain(|p| p != prefix);
                    self.prefixes.push(prefix.to_string());
                }
                pod
            }
            None => {
                if !self.refused.iter().any(|p| p == prefix) {
                    self.refused.push(prefix.to_string());
                }
                NONE.to_string()
            }
        }
    }
}

/// `--default_override=<index>:<command>=<option>` split into its head and option.
fn split_override(arg: &str) -> Option<(&str, &str)> {
    arg.strip_prefix(DEFAULT_OVERRIDE)?.split_once('=')
}

fn rewrite_rc(rc_args: &[String], found: &mut Found) -> Vec<String> {
    let mut out = Vec::with_capacity(rc_args.len());
    let mut i = 0;
    while i < rc_args.len() {
        let arg = &rc_args[i];
        match split_override(arg) {
            Some((head, opt)) if opt == OPTION => {
                // `build --symlink_prefix P` in an rc file: the value is the next option of
                // the same file and command.
                out.push(arg.clone());
                if let Some((next_head, value)) = rc_args.get(i + 1).and_then(|n| split_override(n))
                {
                    if next_head == head {
                        out.push(format!("{DEFAULT_OVERRIDE}{head}={}", found.take(value)));
                        i += 1;
                    }
                }
            }
            Some((head, opt)) => match opt.strip_prefix(OPTION).and_then(|r| r.strip_prefix('=')) {
                Some(value) => out.push(format!(
                    "{DEFAULT_OVERRIDE}{head}={OPTION}={}",
                    found.take(value)
                )),
                None => out.push(arg.clone()),
            },
            None => out.push(arg.clone()),
        }
        i += 1;
    }
    out
}

fn rewrite_user(command: &str, user_args: &[String], found: &mut Found) -> Vec<String> {
    let mut out = Vec::with_capacity(user_args.len() + 1);
    let end = user_args
        .iter()
        .position(|a| a == "--")
        .unwrap_or(user_args.len());
    let mut i = 0;
    while i < end {
        let arg = &user_args[i];
        if arg == OPTION && i + 1 < end {
            out.push(arg.clone());
            out.push(found.take(&user_args[i + 1]));
            i += 2;
            continue;
        }
        match arg.strip_prefix(OPTION).and_then(|r| r.strip_prefix('=')) {
            Some(value) => out.push(format!("{OPTION}={}", found.take(value))),
            None => out.push(arg.clone()),
        }
        i += 1;
    }
    if command == "clean" {
        out.push(format!("{OPTION}={NONE}"));
    }
    out.extend(user_args[end..].iter().cloned());
    out
}

/// Moves every `--symlink_prefix` of `rc_args` (from [`crate::rc::rc_args`]) and
/// `user_args` (after the command; what follows `--` is left alone) into the links
/// directory, and puts [`defaults`] first.
pub fn rewrite(command: &str, rc_args: &[String], user_args: &[String]) -> Rewritten {
    let mut found = Found {
        prefixes: vec![DEFAULT.to_string()],
        refused: Vec::new(),
    };
    let mut rc = defaults();
    rc.extend(rewrite_rc(rc_args, &mut found));
    let user_args = rewrite_user(command, user_args, &mut found);
    Rewritten {
        rc_args: rc,
        user_args,
        prefixes: found.prefixes,
        refused: found.refused,
    }
}

/// The warning for a refused prefix (the caller prints it).
pub fn refusal_message(prefix: &str) -> String {
    format!(
        "{OPTION}={prefix} would put the convenience symlinks outside the workspace; jbazel \
         makes none for it (the Bazel server in your pod gets {OPTION}={NONE})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    const L: &str = "/work/out/jbazel/links";

    #[test]
    fn to_pod_table() {
        let cases: &[(&str, Option<String>)] = &[
            ("bazel-", Some(format!("{L}/bazel-"))),
            (".bazel/", Some(format!("{L}/.bazel/"))),
            ("out/x-", Some(format!("{L}/out/x-"))),
            ("", Some(format!("{L}/"))),
            ("/", Some("/".into())),
            ("/tmp/x-", None),
            ("../x-", None),
            ("a/../b-", None),
            ("./x-", None),
            (&format!("{L}/bazel-"), None),
        ];
        for (p, want) in cases {
            assert_eq!(to_pod(p), *want, "{p:?}");
        }
    }

    #[test]
    fn defaults_come_first_and_name_bazels_default() {
        let r = rewrite("build", &[], &v(&["//..."]));
        assert_eq!(
            r.rc_args,
            v(&[
                "--default_override=0:build=--symlink_prefix=/work/out/jbazel/links/bazel-",
                "--default_override=0:build=--experimental_no_product_name_out_symlink",
            ])
        );
        assert_eq!(r.user_args, v(&["//..."]));
        assert_eq!(r.prefixes, v(&["bazel-"]));
        assert!(r.refused.is_empty());
    }

    #[test]
    fn rc_prefixes_move_where_they_stand() {
        let rc = v(&[
            "--rc_source=/work/src/.bazelrc",
            "--default_override=1:build=--symlink_prefix=.bazel/",
            "--default_override=1:build=--jobs=4",
            // Two tokens in the file: `build:ci --symlink_prefix ci-`.
            "--default_override=1:build:ci=--symlink_prefix",
            "--default_override=1:build:ci=ci-",
            "--default_override=1:test=--symlink_prefix=/",
            "--default_override=1:build:abs=--symlink_prefix=/home/a/x-",
            // Not the option, only its name's start.
            "--default_override=1:build=--symlink_prefixes=x",
            // A lone name at the end, and a value of another file: left alone.
            "--default_override=1:build=--symlink_prefix",
            "--default_override=2:build=y-",
        ]);
        let r = rewrite("test", &rc, &[]);
        assert_eq!(
            r.rc_args[2..],
            v(&[
                "--rc_source=/work/src/.bazelrc",
                "--default_override=1:build=--symlink_prefix=/work/out/jbazel/links/.bazel/",
                "--default_override=1:build=--jobs=4",
                "--default_override=1:build:ci=--symlink_prefix",
                "--default_override=1:build:ci=/work/out/jbazel/links/ci-",
                "--default_override=1:test=--symlink_prefix=/",
                "--default_override=1:build:abs=--symlink_prefix=/",
                "--default_override=1:build=--symlink_prefixes=x",
                "--default_override=1:build=--symlink_prefix",
                "--default_override=2:build=y-",
            ])
        );
        assert_eq!(r.prefixes, v(&["bazel-", ".bazel/", "ci-"]));
        assert_eq!(r.refused, v(&["/home/a/x-"]));
    }

    #[test]
    fn command_line_prefixes_move_before_the_double_dash_only() {
        let user = v(&[
            "--symlink_prefix=.b/",
            "//app",
            "--symlink_prefix",
            "bazel-",
            "--",
            "--symlink_prefix=arg",
        ]);
        let r = rewrite("run", &[], &user);
        assert_eq!(
            r.user_args,
            v(&[
                "--symlink_prefix=/work/out/jbazel/links/.b/",
                "//app",
                "--symlink_prefix",
                "/work/out/jbazel/links/bazel-",
                "--",
                "--symlink_prefix=arg",
            ])
        );
        assert_eq!(
            r.prefixes,
            v(&[".b/", "bazel-"]),
            "named last: the default wins"
        );
        // A name without a value before `--` is Bazel's error to report.
        let r = rewrite("build", &[], &v(&["--symlink_prefix", "--", "x"]));
        assert_eq!(r.user_args, v(&["--symlink_prefix", "--", "x"]));
    }

    #[test]
    fn later_appearances_take_precedence() {
        let rc = v(&[
            "--default_override=1:build=--symlink_prefix=a-",
            "--default_override=2:build=--symlink_prefix=b-",
        ]);
        let r = rewrite("build", &rc, &v(&["--symlink_prefix=a-"]));
        assert_eq!(r.prefixes, v(&["bazel-", "b-", "a-"]));
    }

    #[test]
    fn clean_gets_no_links_after_the_last_option() {
        let r = rewrite("clean", &[], &v(&["--expunge"]));
        assert_eq!(r.user_args, v(&["--expunge", "--symlink_prefix=/"]));
        let r = rewrite("clean", &[], &v(&["--symlink_prefix=x-", "--", "y"]));
        assert_eq!(
            r.user_args,
            v(&[
                "--symlink_prefix=/work/out/jbazel/links/x-",
                "--symlink_prefix=/",
                "--",
                "y"
            ])
        );
        assert_eq!(r.prefixes, v(&["bazel-", "x-"]), "still mirrored (removed)");
        let r = rewrite("build", &[], &v(&["--expunge"]));
        assert_eq!(r.user_args, v(&["--expunge"]), "only clean");
    }

    #[test]
    fn refusals_are_listed_once_and_messaged() {
        let r = rewrite(
            "build",
            &v(&["--default_override=1:build=--symlink_prefix=../x-"]),
            &v(&["--symlink_prefix=../x-"]),
        );
        assert_eq!(r.refused, v(&["../x-"]));
        assert_eq!(r.user_args, v(&["--symlink_prefix=/"]));
        let m = refusal_message("../x-");
        assert!(m.contains("--symlink_prefix=../x-") && m.contains("--symlink_prefix=/"));
    }
}
