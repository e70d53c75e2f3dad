//! The exec request the desktop runs (pure): the admitted program's pod paths made desktop
//! paths, through a view ([`view_request`]) or without one ([`plain_request`]).

use super::plan::{Located, View};
use super::resolve::{desktop_path, Resolver};
use super::{bytes, os, RunfilesError};
use crate::exec_policy::Program;
use crate::paths::{self, PathMap, Rewriter, POD_OUT, POD_SRC};
use proto::command_server::{EnvironmentVariable, ExecRequest};
use std::path::{Path, PathBuf};

/// The variables jbazel sets to the view (any value the server sent is replaced).
pub const RUNFILES_VARS: [&str; 3] = ["RUNFILES_DIR", "RUNFILES_MANIFEST_FILE", "JAVA_RUNFILES"];

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
    /// the mirror ([`crate::exec_policy::check_resolved`]).
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

#[cfg(test)]
mod tests {
    use super::super::plan::plan_view;
    use super::super::plan::{locate, view_key};
    use super::*;
    use crate::exec_policy;
    use crate::runfiles::fixtures::*;

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
}
