//! The command line, split as Bazel's client splits it, and the RunRequest args built as
//! Bazel's client builds them (`OptionProcessor::SplitCommandLine`,
//! `GetBlazercAndEnvCommandArgs`, `BlazeServer::Communicate`).
//!
//! `jbazel [startup options] <command> [args]`. Startup options are Bazel's (the same
//! nullary/unary table as Bazel 4.2.3's client) plus jbazel's own `--jbazel-*` options. What
//! happens to each Bazel startup option:
//! - handled: `--bazelrc`, `--[no]system_rc`, `--[no]workspace_rc`, `--[no]home_rc`,
//!   `--[no]ignore_all_rc_files` (rc selection), `--[no]block_for_lock` (RunRequest),
//!   `--invocation_policy` (RunRequest), `--[no]client_debug` (jbazel's debug log),
//!   `--version` (prints jbazel's version);
//! - ignored with a warning: everything that configures the server process (`--output_base`,
//!   `--output_user_root`, `--install_base`, `--host_jvm_args`, `--max_idle_secs`,
//!   `--command_port`, `--batch`, `--watchfs`, ...): the pod owns its server's startup
//!   options, and a second server with other options cannot be started from the desktop;
//! - unknown ones are an error (exit 2), as in Bazel.
//!
//! RunRequest args: `<command> --startup_time=<ms> --binary_path=<jbazel>
//! --rc_source=client --default_override=0:common=--isatty=<0|1>
//! --default_override=0:common=--terminal_columns=<n> [--default_override=0:common=--emacs]
//! <rc args> --client_env=K=V... --client_cwd=<pod cwd> <user args>`; no args at all when
//! there is no command (the server then prints its help).

use crate::rc::RcSelection;
use std::collections::{BTreeMap, BTreeSet};

/// Bazel 4.2.3's nullary startup options (`--name` / `--noname`).
const NULLARY: &[&str] = &[
    "batch",
    "batch_cpu_scheduling",
    "block_for_lock",
    "client_debug",
    "expand_configs_in_place",
    "fatal_event_bus_exceptions",
    "host_jvm_debug",
    "autodetect_server_javabase",
    "idle_server_tasks",
    "incompatible_enable_execution_transition",
    "shutdown_on_low_sys_mem",
    "ignore_all_rc_files",
    "unlimit_coredumps",
    "watchfs",
    "write_command_log",
    "windows_enable_symlinks",
    "version",
    "trust_install_base",
    "home_rc",
    "master_bazelrc",
    "system_rc",
    "workspace_rc",
];

/// Bazel 4.2.3's unary startup options (`--name=value` or `--name value`).
const UNARY: &[&str] = &[
    "command_port",
    "connect_timeout_secs",
    "local_startup_timeout_secs",
    "digest_function",
    "unix_digest_hash_attribute_name",
    "server_javabase",
    "host_jvm_args",
    "host_jvm_profile",
    "invocation_policy",
    "io_nice_level",
    "install_base",
    "macos_qos_class",
    "max_idle_secs",
    "output_base",
    "output_user_root",
    "server_jvm_out",
    "failure_detail_out",
    "bazelrc",
];

/// Startup options that only rc-selection on the command line may use (`...NoRc`).
const NO_RC: &[&str] = &[
    "ignore_all_rc_files",
    "home_rc",
    "master_bazelrc",
    "system_rc",
    "workspace_rc",
];

/// jbazel's own options start with this; they may only appear before the command.
pub const JBAZEL_PREFIX: &str = "--jbazel-";

/// A command line split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandLine {
    /// Bazel startup options, normalised to `--name` / `--noname` / `--name=value`.
    pub startup: Vec<String>,
    /// jbazel's own `--jbazel-*` options, as given.
    pub jbazel: Vec<String>,
    /// The command (`build`, `run`, ...); empty when there is none.
    pub command: String,
    /// Everything after the command, untouched.
    pub args: Vec<String>,
}

/// A command line Bazel's client would reject (exit 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("Unknown startup option: '{0}'.\n  For more info, run 'jbazel help startup_options'.")]
    UnknownStartupOption(String),
    #[error("Startup option '{0}' expects a value.\nUsage: '{0}=somevalue' or '{0} somevalue'.")]
    MissingValue(String),
    #[error("In argument '{0}': option '{1}' does not take a value.")]
    NullaryWithValue(String, String),
    #[error("Can't specify {option} in the .bazelrc file ({source_file}).")]
    NotInRc { option: String, source_file: String },
}

fn is_arg(a: &str) -> bool {
    a.starts_with('-') && a != "--help" && a != "-help" && a != "-h"
}

fn nullary_name(a: &str) -> Option<&'static str> {
    let name = a.strip_prefix("--")?;
    let base = NULLARY.iter().find(|n| **n == name).or_else(|| {
        name.strip_prefix("no")
            .and_then(|b| NULLARY.iter().find(|n| **n == b))
    })?;
    Some(base)
}

fn unary_name(a: &str) -> Option<&'static str> {
    let name = a.strip_prefix("--")?;
    let name = name.split_once('=').map_or(name, |(n, _)| n);
    UNARY.iter().find(|n| **n == name).copied()
}

/// Splits `argv[1..]` (`SplitCommandLine`).
pub fn split_command_line(argv: &[String]) -> Result<CommandLine, ArgsError> {
    let mut cl = CommandLine::default();
    let mut i = 0;
    while i < argv.len() && is_arg(&argv[i]) {
        let a = &argv[i];
        if a.starts_with(JBAZEL_PREFIX) {
            cl.jbazel.push(a.clone());
            i += 1;
            continue;
        }
        if let Some((flag, _)) = a.split_once('=') {
            if nullary_name(flag).is_some() {
                return Err(ArgsError::NullaryWithValue(a.clone(), flag.to_string()));
            }
        }
        if nullary_name(a).is_some() {
            cl.startup.push(a.clone());
            i += 1;
        } else if let Some(name) = unary_name(a) {
            if a.contains('=') {
                cl.startup.push(a.clone());
                i += 1;
            } else {
                let value = argv
                    .get(i + 1)
                    .ok_or_else(|| ArgsError::MissingValue(a.clone()))?;
                cl.startup.push(format!("--{name}={value}"));
                i += 2;
            }
        } else {
            return Err(ArgsError::UnknownStartupOption(a.clone()));
        }
    }
    if let Some(command) = argv.get(i) {
        cl.command = command.clone();
        cl.args = argv[i + 1..].to_vec();
    }
    Ok(cl)
}

/// What jbazel does with the startup options (from rc files and the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub rc: RcSelection,
    pub block_for_lock: bool,
    pub invocation_policy: Option<String>,
    pub client_debug: bool,
    pub version: bool,
    /// Options that configure the server process: not applied (the pod owns them).
    pub ignored: Vec<String>,
}

/// The rc selection from the command line's startup options (rc files cannot change it).
pub fn rc_selection(startup: &[String]) -> RcSelection {
    let mut sel = RcSelection::default();
    for a in startup {
        match a.as_str() {
            "--system_rc" => sel.system_rc = true,
            "--nosystem_rc" => sel.system_rc = false,
            "--workspace_rc" => sel.workspace_rc = true,
            "--noworkspace_rc" => sel.workspace_rc = false,
            "--home_rc" => sel.home_rc = true,
            "--nohome_rc" => sel.home_rc = false,
            "--ignore_all_rc_files" => sel.ignore_all_rc_files = true,
            "--noignore_all_rc_files" => sel.ignore_all_rc_files = false,
            _ => {
                if let Some(v) = a.strip_prefix("--bazelrc=") {
                    sel.bazelrc.push(v.to_string());
                }
            }
        }
    }
    sel
}

/// Applies startup options in Bazel's priority order: rc files first (with their source
/// name), then the command line (source `None`); later ones win.
pub fn apply_startup(
    rc_startup: &[(String, String)],
    cmdline: &[String],
) -> Result<Startup, ArgsError> {
    let mut s = Startup {
        rc: rc_selection(cmdline),
        block_for_lock: true,
        invocation_policy: None,
        client_debug: false,
        version: false,
        ignored: Vec::new(),
    };
    let all: Vec<(Option<&str>, &str)> = rc_startup
        .iter()
        .map(|(src, o)| (Some(src.as_str()), o.as_str()))
        .chain(cmdline.iter().map(|o| (None, o.as_str())))
        .collect();
    let mut i = 0;
    while i < all.len() {
        let (source, opt) = all[i];
        i += 1;
        if let Some(name) = nullary_name(opt) {
            if let (Some(src), true) = (source, NO_RC.contains(&name)) {
                return Err(ArgsError::NotInRc {
                    option: opt.to_string(),
                    source_file: src.to_string(),
                });
            }
            let on = opt != format!("--no{name}");
            match name {
                "block_for_lock" => s.block_for_lock = on,
                "client_debug" => s.client_debug = on,
                "version" => s.version = on,
                n if NO_RC.contains(&n) => {}
                _ => s.ignored.push(opt.to_string()),
            }
        } else if let Some(name) = unary_name(opt) {
            let value = match opt.split_once('=') {
                Some((_, v)) => v.to_string(),
                // `startup --output_base /x` in an rc file: the value is the next word.
                None => match all.get(i) {
                    Some((src, v)) if *src == source => {
                        i += 1;
                        v.to_string()
                    }
                    _ => return Err(ArgsError::MissingValue(opt.to_string())),
                },
            };
            match (name, source) {
                ("invocation_policy", _) => s.invocation_policy = Some(value),
                ("bazelrc", None) => {}
                ("bazelrc", Some(src)) => {
                    return Err(ArgsError::NotInRc {
                        option: "--bazelrc".into(),
                        source_file: src.to_string(),
                    })
                }
                _ => s.ignored.push(format!("--{name}={value}")),
            }
        } else if source.is_some() {
            // Bazel rejects unknown startup options from rc files too.
            return Err(ArgsError::UnknownStartupOption(opt.to_string()));
        }
    }
    Ok(s)
}

/// Bazel's `IsStandardTerminal()` from its inputs.
pub fn is_standard_terminal(
    term: Option<&str>,
    emacs: bool,
    stdout_tty: bool,
    stderr_tty: bool,
) -> bool {
    let term = term.unwrap_or("");
    if emacs && term == "eterm-color" {
        return true;
    }
    if term.is_empty()
        || matches!(
            term,
            "dumb" | "emacs" | "xterm-mono" | "symbolics" | "9term"
        )
        || emacs
    {
        return false;
    }
    stdout_tty && stderr_tty
}

/// Bazel's `IsEmacsTerminal()`.
pub fn is_emacs(emacs_var: Option<&str>, inside_emacs_set: bool) -> bool {
    emacs_var == Some("t") || inside_emacs_set
}

/// Desktop variables sent to the pod's Bazel: an allow-list. The pod runs the user's
/// untrusted build, so the desktop's secrets (`AWS_*`, `*_TOKEN`, agent sockets, ...)
/// never leave the desktop unless the command names them (see [`named_env_vars`]).
const DESKTOP_ALLOWED: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "TZ",
    "TERM",
    "COLORTERM",
    "USER",
    "LOGNAME",
    "CC",
    "CXX",
    "CFLAGS",
    "CXXFLAGS",
    "CPPFLAGS",
    "LDFLAGS",
    "BAZEL_SH",
    "BAZEL_LINKOPTS",
    "BAZEL_LINKLIBS",
    "BAZEL_CXXOPTS",
    "BAZEL_COMPILER",
    "BAZEL_USE_CPP_ONLY_TOOLCHAIN",
];
const DESKTOP_ALLOWED_PREFIXES: &[&str] = &["LC_"];

/// The pod-side variables jbazel takes from `out/jbazel/client-env` (written by the
/// pod's supervisor, so on a tree the build can write): only these keys, nothing else.
pub const POD_ENV_KEYS: &[&str] = &["PATH"];

/// Whether a desktop variable is sent to the pod's Bazel without being named.
pub fn forwards_desktop_var(name: &str) -> bool {
    DESKTOP_ALLOWED.contains(&name) || DESKTOP_ALLOWED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Variables the command names for Bazel to read from the client env
/// (`--action_env=NAME`, `--test_env NAME`, `--repo_env`, `--host_action_env`, without a
/// value): the user asked for them, so their desktop values are sent.
pub fn named_env_vars<'a>(args: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    const FLAGS: &[&str] = &[
        "--action_env",
        "--test_env",
        "--repo_env",
        "--host_action_env",
    ];
    let mut named = BTreeSet::new();
    let mut pending = false;
    for arg in args {
        if std::mem::take(&mut pending) {
            if !arg.contains('=') && !arg.is_empty() {
                named.insert(arg.to_string());
            }
            continue;
        }
        if FLAGS.contains(&arg) {
            pending = true;
        } else if let Some((flag, value)) = arg.split_once('=') {
            if FLAGS.contains(&flag) && !value.contains('=') && !value.is_empty() {
                named.insert(value.to_string());
            }
        }
    }
    named
}

/// The option inside an rc argument as the client sends it
/// (`--default_override=0:build=--action_env=X` -> `--action_env=X`); anything else as is.
pub fn rc_option(arg: &str) -> &str {
    arg.strip_prefix("--default_override=")
        .and_then(|rest| rest.split_once('=').map(|(_, option)| option))
        .unwrap_or(arg)
}

/// `--client_env` entries: the pod's [`POD_ENV_KEYS`] (PATH: the pod's, not the desktop's),
/// then the allowed and the named desktop variables. Sorted by name.
pub fn client_env(
    pod: &[(String, String)],
    desktop: &[(String, String)],
    named: &BTreeSet<String>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = desktop
        .iter()
        .filter(|(k, _)| forwards_desktop_var(k) || named.contains(k))
        .filter(|(k, _)| !POD_ENV_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    for (k, v) in pod {
        if POD_ENV_KEYS.contains(&k.as_str()) {
            env.insert(k.clone(), v.clone());
        }
    }
    env.into_iter().collect()
}

/// Parses `KEY=VALUE` lines (blank lines and `#` comments skipped).
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Everything the RunRequest args are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgsInput {
    pub command: String,
    pub startup_time_ms: u64,
    pub binary_path: String,
    pub isatty: bool,
    pub terminal_columns: u32,
    pub emacs: bool,
    /// `--rc_source=` / `--default_override=` args from [`crate::rc::rc_args`].
    pub rc_args: Vec<String>,
    pub client_env: Vec<(String, String)>,
    /// The pod-side working directory.
    pub client_cwd: String,
    pub user_args: Vec<String>,
}

/// The RunRequest's `arg` list, in the real client's order.
pub fn run_request_args(i: &RunArgsInput) -> Vec<String> {
    if i.command.is_empty() {
        return Vec::new();
    }
    let mut a = vec![
        i.command.clone(),
        format!("--startup_time={}", i.startup_time_ms),
        format!("--binary_path={}", i.binary_path),
        "--rc_source=client".to_string(),
        format!(
            "--default_override=0:common=--isatty={}",
            u8::from(i.isatty)
        ),
        format!(
            "--default_override=0:common=--terminal_columns={}",
            i.terminal_columns
        ),
    ];
    if i.emacs {
        a.push("--default_override=0:common=--emacs".to_string());
    }
    a.extend(i.rc_args.iter().cloned());
    a.extend(
        i.client_env
            .iter()
            .map(|(k, v)| format!("--client_env={k}={v}")),
    );
    a.push(format!("--client_cwd={}", i.client_cwd));
    a.extend(i.user_args.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// (argv, startup options, jbazel options, command, args)
    type SplitCase<'a> = (
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
        &'a str,
        &'a [&'a str],
    );

    #[test]
    fn split_table() {
        let cases: &[SplitCase] = &[
            (&["build", "//..."], &[], &[], "build", &["//..."]),
            (&[], &[], &[], "", &[]),
            (
                &[
                    "--output_base",
                    "/x",
                    "--nohome_rc",
                    "--bazelrc=a.rc",
                    "test",
                    "--nohome_rc",
                    "//t",
                ],
                &["--output_base=/x", "--nohome_rc", "--bazelrc=a.rc"],
                &[],
                "test",
                &["--nohome_rc", "//t"],
            ),
            (
                &[
                    "--jbazel-dry-run",
                    "--noblock_for_lock",
                    "run",
                    "//x",
                    "--",
                    "-a",
                ],
                &["--noblock_for_lock"],
                &["--jbazel-dry-run"],
                "run",
                &["//x", "--", "-a"],
            ),
            // --help/-h are not options: they are the command, as in Bazel.
            (&["--help"], &[], &[], "--help", &[]),
            (&["-h", "x"], &[], &[], "-h", &["x"]),
        ];
        for (argv, startup, jb, command, args) in cases {
            let cl = split_command_line(&v(argv)).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(cl.startup, v(startup), "{argv:?}");
            assert_eq!(cl.jbazel, v(jb), "{argv:?}");
            assert_eq!(cl.command, *command, "{argv:?}");
            assert_eq!(cl.args, v(args), "{argv:?}");
        }
    }

    #[test]
    fn split_errors_table() {
        let cases: &[(&[&str], ArgsError)] = &[
            (
                &["--bogus", "build"],
                ArgsError::UnknownStartupOption("--bogus".into()),
            ),
            (
                &["--output_base"],
                ArgsError::MissingValue("--output_base".into()),
            ),
            (
                &["--batch=1", "build"],
                ArgsError::NullaryWithValue("--batch=1".into(), "--batch".into()),
            ),
        ];
        for (argv, want) in cases {
            assert_eq!(
                split_command_line(&v(argv)).expect_err("error"),
                *want,
                "{argv:?}"
            );
        }
    }

    #[test]
    fn startup_handling_table() {
        let s = apply_startup(
            &[
                ("/w/.bazelrc".into(), "--noblock_for_lock".into()),
                ("/w/.bazelrc".into(), "--max_idle_secs=5".into()),
            ],
            &v(&[
                "--block_for_lock",
                "--output_base=/x",
                "--nohome_rc",
                "--bazelrc=/r",
                "--invocation_policy=p",
                "--batch",
                "--client_debug",
            ]),
        )
        .expect("startup");
        assert!(s.block_for_lock, "the command line wins over rc files");
        assert!(s.client_debug);
        assert_eq!(s.invocation_policy.as_deref(), Some("p"));
        assert!(!s.rc.home_rc);
        assert_eq!(s.rc.bazelrc, v(&["/r"]));
        assert_eq!(
            s.ignored,
            v(&["--max_idle_secs=5", "--output_base=/x", "--batch"])
        );

        let s = apply_startup(&[("/w/.bazelrc".into(), "--noblock_for_lock".into())], &[])
            .expect("startup");
        assert!(!s.block_for_lock);

        assert!(matches!(
            apply_startup(&[("/w/.bazelrc".into(), "--nohome_rc".into())], &[]),
            Err(ArgsError::NotInRc { .. })
        ));
        assert!(matches!(
            apply_startup(&[("/w/.bazelrc".into(), "--nonsense".into())], &[]),
            Err(ArgsError::UnknownStartupOption(_))
        ));
        assert!(
            apply_startup(&[], &v(&["--version"]))
                .expect("version")
                .version
        );
    }

    #[test]
    fn terminal_table() {
        let cases = [
            (Some("xterm-256color"), false, true, true, true),
            (Some("xterm-256color"), false, true, false, false),
            (Some("dumb"), false, true, true, false),
            (None, false, true, true, false),
            (Some("eterm-color"), true, false, false, true),
            (Some("xterm"), true, true, true, false),
        ];
        for (term, emacs, o, e, want) in cases {
            assert_eq!(
                is_standard_terminal(term, emacs, o, e),
                want,
                "{term:?} {emacs} {o} {e}"
            );
        }
        assert!(is_emacs(Some("t"), false));
        assert!(is_emacs(None, true));
        assert!(!is_emacs(Some("25.1"), false));
    }

    #[test]
    fn client_env_table() {
        let pod = parse_env_file(
            "# pod\nPATH=/usr/local/bin:/usr/bin:/bin\n\nHOME=/root\nLD_PRELOAD=/x.so\nBAD\n",
        );
        assert_eq!(
            pod[..2],
            [
                ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                ("HOME".into(), "/root".into())
            ]
        );
        let desktop: Vec<(String, String)> = [
            ("PATH", "/home/u/bin:/usr/bin"),
            ("HOME", "/home/u"),
            ("TERM", "xterm"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("CC", "clang"),
            ("XDG_RUNTIME_DIR", "/run/user/1"),
            ("JBAZEL_SERVER", "x"),
            ("SSH_AUTH_SOCK", "/tmp/s"),
            ("PWD", "/home/u/p"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("GITHUB_TOKEN", "ghp_x"),
            ("MY_FLAG", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let named = named_env_vars(["build", "--action_env=MY_FLAG", "--test_env=X=1", "//..."]);
        let got = client_env(&pod, &desktop, &named);
        let want: Vec<(String, String)> = [
            ("CC", "clang"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("MY_FLAG", "1"),
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("TERM", "xterm"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want, "secrets stay home; the pod sets only PATH");
    }

    #[test]
    fn rc_options_are_read_inside_overrides() {
        assert_eq!(
            rc_option("--default_override=0:build=--action_env=X"),
            "--action_env=X"
        );
        assert_eq!(rc_option("--rc_source=/a"), "--rc_source=/a");
        let rc = [
            "--default_override=0:build=--action_env",
            "--default_override=0:build=FOO",
        ];
        assert!(named_env_vars(rc.iter().map(|a| rc_option(a))).contains("FOO"));
    }

    #[test]
    fn named_variables() {
        let named = named_env_vars([
            "--action_env=A",
            "--action_env",
            "B",
            "--test_env=C=set",
            "--repo_env",
            "D=1",
            "--host_action_env=E",
            "--action_env=",
            "--copt=F",
            "G",
        ]);
        assert_eq!(
            named.into_iter().collect::<Vec<_>>(),
            ["A", "B", "E"],
            "only names without a value"
        );
    }

    #[test]
    fn run_request_args_order() {
        let input = RunArgsInput {
            command: "build".into(),
            startup_time_ms: 12,
            binary_path: "/usr/bin/jbazel".into(),
            isatty: false,
            terminal_columns: 80,
            emacs: false,
            rc_args: v(&[
                "--rc_source=/work/out/jbazel/system.bazelrc",
                "--default_override=1:build=--x",
            ]),
            client_env: vec![("PATH".into(), "/usr/bin".into())],
            client_cwd: "/work/src/app".into(),
            user_args: v(&["//app:hello", "--keep_going"]),
        };
        assert_eq!(
            run_request_args(&input),
            v(&[
                "build",
                "--startup_time=12",
                "--binary_path=/usr/bin/jbazel",
                "--rc_source=client",
                "--default_override=0:common=--isatty=0",
                "--default_override=0:common=--terminal_columns=80",
                "--rc_source=/work/out/jbazel/system.bazelrc",
                "--default_override=1:build=--x",
                "--client_env=PATH=/usr/bin",
                "--client_cwd=/work/src/app",
                "//app:hello",
                "--keep_going",
            ])
        );
        let tty = RunArgsInput {
            isatty: true,
            emacs: true,
            terminal_columns: 132,
            ..input.clone()
        };
        let a = run_request_args(&tty);
        assert_eq!(a[4], "--default_override=0:common=--isatty=1");
        assert_eq!(a[5], "--default_override=0:common=--terminal_columns=132");
        assert_eq!(a[6], "--default_override=0:common=--emacs");
        let none = RunArgsInput {
            command: String::new(),
            ..input
        };
        assert!(run_request_args(&none).is_empty());
    }
}
