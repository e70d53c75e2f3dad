//! The RunRequest of one command, built from what was read (pure): the command line, the
//! rc files, the pod's published client env and the [`Invocation`]'s facts become the
//! request's args (as Bazel's client builds them, see [`crate::args`]), its lock and
//! policy fields, and what jbazel needs to read the reply (which streams get desktop paths,
//! which files to deliver, what the user wrote about `run`).

use crate::args::{self, CommandLine, Startup};
use crate::exec_policy::Named;
use crate::file_flags::{self, FileFlagError};
use crate::invocation::Invocation;
use crate::links::{self, LinkName};
use crate::mirror;
use crate::paths::{OutsideWorkspace, PathMap};
use crate::rc::{self, RcFile};
use crate::symlink_prefix;
use proto::command_server::RunRequest;
use std::path::Path;

/// Why the request cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A startup option in an rc file or on the command line Bazel's client rejects.
    #[error(transparent)]
    Startup(#[from] args::ArgsError),
    /// The working directory has no pod path (`--client_cwd`).
    #[error(transparent)]
    ClientCwd(#[from] OutsideWorkspace),
    /// An option naming a file the pod cannot see.
    #[error(transparent)]
    FileFlag(#[from] FileFlagError),
}

/// What the request is made of.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub invocation: &'a Invocation,
    pub command_line: &'a CommandLine,
    pub map: &'a PathMap,
    /// The desktop working directory (inside the workspace).
    pub cwd: &'a Path,
    /// The rc files read, in Bazel's order.
    pub rc_files: &'a [RcFile],
    /// The pod's published client env (`out/jbazel/client-env`), None when unpublished.
    pub pod_env: Option<&'a [(String, String)]>,
    /// `--startup_time`.
    pub startup_time_ms: u64,
    /// Whether to show pod paths as desktop paths (`--jbazel-no-translate-paths` not given).
    pub translate_paths: bool,
}

/// The RunRequest and what is needed to read the reply.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub request: RunRequest,
    /// Whether stdout's pod paths are shown as desktop paths.
    pub translate_stdout: bool,
    /// Whether stderr's pod paths are shown as desktop paths.
    pub translate_stderr: bool,
    /// Files the server writes into the output base for a desktop path elsewhere.
    pub deliveries: Vec<file_flags::Delivery>,
    /// What the user wrote about `run` (`--run_under`, `--script_path`), for the exec policy.
    pub named: Named,
    /// The convenience links the pod's Bazel makes in its links directory, to mirror into
    /// the workspace after the command (see [`crate::links`]).
    pub links: Vec<LinkName>,
    /// `--symlink_prefix` values that would put links outside the workspace: sent as `/`
    /// (no links), each worth a warning.
    pub refused_prefixes: Vec<String>,
}

/// What the user wrote about `run`: the command line and their own rc files (not the
/// repository's, nor the pod's system rc: a repository's `--run_under` would run a desktop
/// program the user never named).
pub fn named(cl: &CommandLine, rc_files: &[RcFile]) -> Named {
    let from_rc = Named::scan_rc(rc_files.iter().flat_map(|f| {
        f.options.iter().map(move |(section, opts)| {
            (
                section.as_str(),
                opts.iter()
                    .filter(|o| f.owners.get(o.source_index) == Some(&rc::RcOwner::User))
                    .map(|o| o.option.as_str())
                    .collect(),
            )
        })
    }));
    Named::scan(cl.args.iter().map(String::as_str)).merge(from_rc)
}

/// Builds the request.
pub fn build(i: &Inputs<'_>) -> Result<Prepared, RequestError> {
    let inv = i.invocation;
    let cl = i.command_line;
    let name = |p: &Path| i.map.pod_name(p);
    let rc_args = rc::rc_args(i.rc_files, &name);
    let rc_startup: Vec<(String, String)> = rc::startup_options(i.rc_files)
        .into_iter()
        .map(|(p, o)| (name(&p), o))
        .collect();
    let startup: Startup = args::apply_startup(&rc_startup, &cl.startup)?;

    let mut pod_env = i.pod_env.map(<[_]>::to_vec).unwrap_or_default();
    if !pod_env.iter().any(|(k, _)| k == "PATH") {
        pod_env.push(("PATH".into(), mirror::FALLBACK_POD_PATH.into()));
    }
    // Only the user's own rc files (and the command line) may name a desktop variable: a
    // repository's rc is the pod's attacker's to write.
    let user_rc = rc::applied_options(i.rc_files, &cl.command, &cl.args, rc::RcOwner::User);
    let env_named = args::named_env_vars(
        user_rc
            .iter()
            .map(String::as_str)
            .chain(cl.args.iter().map(String::as_str)),
    );
    let client_env = args::client_env(&pod_env, &inv.env, &env_named);

    let emacs = args::is_emacs(inv.var("EMACS"), inv.var("INSIDE_EMACS").is_some());
    let client_cwd = i.map.pod_cwd(i.cwd)?;
    let files = file_flags::rewrite(&cl.args, i.cwd, i.map)?;
    // The checkout is read-only in the pod: Bazel makes its convenience links in the output
    // base, and jbazel mirrors them.
    let moved = symlink_prefix::rewrite(&cl.command, &rc_args, &files.args);
    let link_names = links::names(
        &moved.prefixes,
        i.map.desktop_root.file_name().and_then(|b| b.to_str()),
    );
    let input = args::RunArgsInput {
        command: cl.command.clone(),
        startup_time_ms: i.startup_time_ms,
        binary_path: inv.binary_path.clone(),
        isatty: args::is_standard_terminal(inv.var("TERM"), emacs, inv.stdout_tty, inv.stderr_tty),
        terminal_columns: inv.terminal_columns(),
        emacs,
        rc_args: moved.rc_args,
        client_env,
        client_cwd,
        user_args: moved.user_args,
    };
    let request = RunRequest {
        cookie: String::new(),
        arg: args::run_request_args(&input)
            .into_iter()
            .map(String::into_bytes)
            .collect(),
        block_for_lock: startup.block_for_lock,
        client_description: format!(
            "pid={} (jbazel {} on {})",
            inv.pid,
            env!("CARGO_PKG_VERSION"),
            inv.hostname
        ),
        invocation_policy: startup.invocation_policy.unwrap_or_default(),
        startup_options: Vec::new(),
    };
    // `info` prints paths that IDEs read from a pipe: always the desktop's.
    let paths_on_stdout = cl.command == "info";
    Ok(Prepared {
        request,
        translate_stdout: i.translate_paths && (inv.stdout_tty || paths_on_stdout),
        translate_stderr: i.translate_paths && inv.stderr_tty,
        deliveries: files.deliveries,
        named: named(cl, i.rc_files),
        links: link_names,
        refused_prefixes: moved.refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::tests::invocation;
    use crate::rc::RcOption;
    use std::path::PathBuf;

    fn map() -> PathMap {
        PathMap::new(
            Path::new("/home/alice/proj"),
            Path::new("/fs"),
            "alice",
            "0123456789abcdef0123456789abcdef",
        )
    }

    fn rc_file(path: &str, options: &[(&str, &[&str])]) -> RcFile {
        // The workspace's and the pod's files are the repository's; the rest the user's.
        let owner = if path.starts_with("/home/alice/proj/") || path.starts_with("/fs/") {
            rc::RcOwner::Repository
        } else {
            rc::RcOwner::User
        };
        RcFile {
            canonical_paths: vec![PathBuf::from(path)],
            owners: vec![owner],
            options: options
                .iter()
                .map(|(section, opts)| {
                    (
                        section.to_string(),
                        opts.iter()
                            .map(|o| RcOption {
                                option: o.to_string(),
                                source_index: 0,
                            })
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    fn args_of(p: &Prepared) -> Vec<String> {
        p.request
            .arg
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    #[test]
    fn the_request_as_bazels_client_builds_it() {
        let inv = invocation(
            &[],
            &[
                ("PATH", "/desktop/bin"),
                ("HOME", "/home/alice"),
                ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
                ("LANG", "C.UTF-8"),
                ("CC", "clang"),
                ("TERM", "dumb"),
            ],
        );
        let cl = args::split_command_line(&[
            "--noblock_for_lock".to_string(),
            "build".into(),
            "--action_env=AWS_SECRET_ACCESS_KEY".into(),
            "//app:all".into(),
        ])
        .expect("command line");
        let system = rc_file(
            "/fs/alice/0123456789abcdef0123456789abcdef/out/jbazel/system.bazelrc",
            &[("build", &["--run_under=evil"])],
        );
        let workspace = rc_file(
            "/home/alice/proj/.bazelrc",
            &[
                ("build", &["--jobs=2"]),
                ("startup", &["--invocation_policy=x"]),
                ("run", &["--run_under", "gdb --args"]),
            ],
        );
        let home = rc_file(
            "/home/alice/.bazelrc",
            &[("run", &["--run_under=valgrind"])],
        );
        let m = map();
        let files = [system, workspace, home];
        let pod_env = [
            ("PATH".to_string(), "/pod/bin".to_string()),
            ("SECRET".to_string(), "pod".to_string()),
        ];
        let i = Inputs {
            invocation: &inv,
            command_line: &cl,
            map: &m,
            cwd: Path::new("/home/alice/proj/app"),
            rc_files: &files,
            pod_env: Some(&pod_env),
            startup_time_ms: 12,
            translate_paths: true,
        };
        let p = build(&i).expect("request");
        assert_eq!(
            args_of(&p),
            [
                "build",
                "--startup_time=12",
                "--binary_path=/usr/bin/jbazel",
                "--rc_source=client",
                "--default_override=0:common=--isatty=0",
                "--default_override=0:common=--terminal_columns=80",
                // The checkout is read-only in the pod: its links go to the output base.
                "--default_override=0:build=--symlink_prefix=/work/out/jbazel/links/bazel-",
                "--default_override=0:build=--experimental_no_product_name_out_symlink",
                "--rc_source=/work/out/jbazel/system.bazelrc",
                "--rc_source=/work/src/.bazelrc",
                "--rc_source=/home/alice/.bazelrc",
                "--default_override=1:build=--run_under=evil",
                "--default_override=2:build=--jobs=2",
                "--default_override=2:run=--run_under",
                "--default_override=2:run=gdb --args",
                "--default_override=3:run=--run_under=valgrind",
                "--client_env=AWS_SECRET_ACCESS_KEY=s3cr3t",
                "--client_env=CC=clang",
                "--client_env=LANG=C.UTF-8",
                "--client_env=PATH=/pod/bin",
                "--client_env=TERM=dumb",
                "--client_cwd=/work/src/app",
                "--action_env=AWS_SECRET_ACCESS_KEY",
                "//app:all",
            ]
        );
        assert!(!p.request.block_for_lock);
        assert_eq!(p.request.invocation_policy, "x");
        assert_eq!(
            p.request.client_description,
            format!("pid=4242 (jbazel {} on desk)", env!("CARGO_PKG_VERSION"))
        );
        assert!(!p.translate_stdout && !p.translate_stderr);
        // Only the user's own rc names a --run_under: not the pod's system rc, not the
        // repository's .bazelrc.
        assert_eq!(p.named.run_under, ["valgrind"]);
    }

    #[test]
    fn terminals_and_fallbacks() {
        let mut inv = invocation(&[], &[("TERM", "xterm"), ("EMACS", "t")]);
        inv.stdout_tty = true;
        inv.stderr_tty = true;
        inv.stdout_columns = Some(132);
        let cl = args::split_command_line(&["info".to_string()]).expect("command line");
        let m = map();
        let i = Inputs {
            invocation: &inv,
            command_line: &cl,
            map: &m,
            cwd: Path::new("/home/alice/proj"),
            rc_files: &[],
            pod_env: None,
            startup_time_ms: 0,
            translate_paths: true,
        };
        let p = build(&i).expect("request");
        let a = args_of(&p);
        for want in [
            "--default_override=0:common=--isatty=0",
            "--default_override=0:common=--terminal_columns=132",
            "--default_override=0:common=--emacs",
            "--client_env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--client_cwd=/work/src",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
        assert!(p.translate_stdout && p.translate_stderr);
        let p = build(&Inputs {
            translate_paths: false,
            ..i
        })
        .expect("request");
        assert!(!p.translate_stdout && !p.translate_stderr);

        // Outside the workspace: no pod working directory.
        let err = build(&Inputs {
            cwd: Path::new("/elsewhere"),
            ..i
        })
        .expect_err("outside");
        assert!(matches!(err, RequestError::ClientCwd(_)), "{err}");
    }
}
