//! The view of a binary's runfiles tree (pure): where the binary is ([`locate`]), which
//! manifest entries the desktop can link to and where ([`plan_tree`]), the whole view and
//! its names ([`plan_view`], [`view_key`]).

use super::manifest::{parse_manifest, valid_runfiles_path, Entry};
use super::resolve::{Escape, Resolver};
use super::{bytes, os, RunfilesError};
use crate::paths::{PathMap, POD_OUT};
use md5::{Digest, Md5};
use proto::command_server::ExecRequest;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, PathBuf};

/// Part of every view's content hash: a new layout never reuses an old view.
const LAYOUT: &[u8] = b"jbazel-runfiles-view-1";
/// Suffix of a runfiles directory.
const RUNFILES: &str = ".runfiles";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runfiles::fixtures::*;

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
}
