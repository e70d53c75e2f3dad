//! What jbazel does with a server's exec request (no Bazel, no root: a stand-in server
//! answers). It executes only `run`'s binary, from the workspace or the mirror; anything
//! else ends in exit 37 with nothing executed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use support::stand_in::{exec_request, Answer, StandIn};
use support::{describe, text};

fn jbazel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jbazel"))
}

fn run(srv: &StandIn, args: &[&str]) -> Output {
    srv.jbazel(&jbazel_bin(), args)
        .output()
        .expect("spawn jbazel")
}

/// A script in the mirror's output base that records its arguments in `record`.
fn script_in_out(srv: &StandIn, rel: &str, record: &Path) -> String {
    let path = srv.out.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"ran: $*\"\necho \"$*\" > '{}'\n",
            record.display()
        ),
    )
    .expect("write script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    format!("/work/out/{rel}")
}

#[test]
fn an_exec_request_after_build_is_refused_and_nothing_runs() {
    let srv = StandIn::start().expect("stand-in server");
    let canary = srv.tmp.path().join("canary");
    let touch = format!("touch {}", canary.display());
    srv.answer(Answer {
        exit_code: 0,
        exec_request: Some(exec_request("/work/src", &["/bin/sh", "-c", &touch])),
    });
    let o = run(&srv, &["build", "//x"]);
    assert_eq!(o.status.code(), Some(37), "{}", describe(&o));
    assert!(!canary.exists(), "the canary was touched\n{}", describe(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("refusing to execute touch") && err.contains("after 'build'"),
        "{}",
        describe(&o)
    );
    assert_eq!(srv.runs().len(), 1, "the command reached the stand-in");
}

#[test]
fn run_executes_only_a_binary_of_the_workspace_or_the_mirror() {
    let srv = StandIn::start().expect("stand-in server");
    let canary = srv.tmp.path().join("canary");
    let record = srv.tmp.path().join("record");

    // `run` answered with a shell command: refused.
    let touch = format!("touch {}", canary.display());
    srv.answer(Answer {
        exit_code: 0,
        exec_request: Some(exec_request("/work/src", &["/bin/sh", "-c", &touch])),
    });
    let o = run(&srv, &["run", "//x"]);
    assert_eq!(o.status.code(), Some(37), "{}", describe(&o));
    assert!(!canary.exists(), "the canary was touched\n{}", describe(&o));
    assert!(
        text(&o.stderr).contains("refusing to execute touch after 'run'"),
        "{}",
        describe(&o)
    );

    // Shell syntax after a binary of the mirror: refused.
    let hello = script_in_out(&srv, "bin/hello.sh", &record);
    let line = format!("{hello} a; touch {}", canary.display());
    srv.answer(Answer {
        exit_code: 0,
        exec_request: Some(exec_request("/work/src", &["/bin/bash", "-c", &line])),
    });
    let o = run(&srv, &["run", "//x"]);
    assert_eq!(o.status.code(), Some(37), "{}", describe(&o));
    assert!(!canary.exists() && !record.exists(), "{}", describe(&o));

    // Bazel's own request for a binary of the mirror: executed, its arguments as Bazel
    // quoted them, its exit code passed through.
    let line = format!("{hello} a 'b c'");
    srv.answer(Answer {
        exit_code: 0,
        exec_request: Some(exec_request("/work/src", &["/bin/bash", "-c", &line])),
    });
    let o = run(&srv, &["run", "//x"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(text(&o.stdout), "ran: a b c\n", "{}", describe(&o));
    assert_eq!(std::fs::read_to_string(&record).expect("record"), "a b c\n");
    std::fs::remove_file(&record).expect("rm record");

    // A binary of the mirror that is a link to a desktop program: refused.
    std::os::unix::fs::symlink("/usr/bin/touch", srv.out.join("bin/touch")).expect("symlink");
    let line = format!("/work/out/bin/touch {}", canary.display());
    srv.answer(Answer {
        exit_code: 0,
        exec_request: Some(exec_request("/work/src", &["/bin/bash", "-c", &line])),
    });
    let o = run(&srv, &["run", "//x"]);
    assert_eq!(o.status.code(), Some(37), "{}", describe(&o));
    assert!(!canary.exists(), "{}", describe(&o));
    assert!(
        text(&o.stderr).contains("/usr/bin/touch"),
        "{}",
        describe(&o)
    );

    // `--run_under=<desktop tool>`: Bazel nests a shell running "<value> <binary> <args>".
    // Run only when the user passed that very value.
    let inner = format!("env JBAZEL_T=1 {hello} x ");
    let line = format!("/bin/bash -c '{inner}'");
    srv.answer(Answer {
        exit_code: 0,
        exec_request: Some(exec_request("/work/src", &["/bin/bash", "-c", &line])),
    });
    let o = run(&srv, &["run", "//x"]);
    assert_eq!(o.status.code(), Some(37), "{}", describe(&o));
    assert!(!record.exists(), "{}", describe(&o));
    assert!(
        text(&o.stderr).contains("the user did not pass --run_under"),
        "{}",
        describe(&o)
    );
    let o = run(&srv, &["run", "--run_under=env JBAZEL_T=1", "//x"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(text(&o.stdout), "ran: x\n", "{}", describe(&o));

    // `run --script_path`: Bazel writes a script and asks for no exec.
    let o = run(
        &srv,
        &[
            "run",
            "--script_path=/tmp/s",
            "--run_under=env JBAZEL_T=1",
            "//x",
        ],
    );
    assert_eq!(o.status.code(), Some(37), "{}", describe(&o));
    assert!(
        text(&o.stderr).contains("--script_path"),
        "{}",
        describe(&o)
    );
}
