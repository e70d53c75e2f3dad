//! What the runfiles tests share: a path map, a fake output base, Bazel 4's exec request.

use crate::exec_policy::{self, Program};
use crate::paths::{PathMap, ReadLink};
use proto::command_server::{EnvironmentVariable, ExecRequest};
use std::path::{Path, PathBuf};

pub const OUT: &str = "/fs/alice/0123456789abcdef0123456789abcdef/out";
pub const BIN: &str = "/work/out/execroot/__main__/bazel-out/k8-fastbuild/bin";

pub fn map() -> PathMap {
    PathMap::new(
        Path::new("/home/alice/proj"),
        Path::new("/fs"),
        "alice",
        "0123456789abcdef0123456789abcdef",
    )
}

/// A fake filesystem: only its symlinks.
pub struct Links(pub Vec<(String, String)>);
impl ReadLink for Links {
    fn read_link(&self, path: &Path) -> Option<PathBuf> {
        self.0
            .iter()
            .find(|(l, _)| Path::new(l) == path)
            .map(|(_, t)| PathBuf::from(t))
    }
}

/// The links of a pod output base after `bazel build` of a `sh_binary`.
pub fn output_base() -> Links {
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

pub fn exec_request(wd: &str, script: &str) -> ExecRequest {
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
pub fn program(req: &ExecRequest) -> Program {
    exec_policy::admit("run", &req.argv, &exec_policy::Named::default()).expect("admitted")
}

pub fn argv_of(req: &ExecRequest) -> Vec<String> {
    req.argv
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

pub fn env_of(req: &ExecRequest) -> Vec<(String, String)> {
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
