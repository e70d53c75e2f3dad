//! Bazel's convenience symlinks (`bazel-bin`, `bazel-out`, `bazel-testlogs`,
//! `bazel-<workspace>`, or whatever `--symlink_prefix` names) seen from both sides.
//!
//! The pod's Bazel creates them in the checkout pointing into `/work/out/...`, which does
//! not exist on the desktop. So jbazel keeps them in two forms:
//! - after every command, the desktop form: the target's `/work/out` prefix becomes the
//!   mirror `R/U/H/out` (`ls bazel-bin/...`, `cat bazel-testlogs/...` work on the desktop);
//! - before every command, the pod form again, exactly what Bazel wrote, so the server's
//!   `//...` never walks into its own output base through a path it does not recognise.
//!
//! Only symlinks directly in the workspace root whose target lies under one of the two
//! output-base paths are touched; each is replaced atomically (a temporary link renamed
//! over it). The decision is pure ([`plan`]); [`flip`] does the I/O.

use std::path::{Component, Path, PathBuf};

use crate::paths::{PathMap, POD_OUT};

/// Which side the links should resolve on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `/work/out/...`: what the pod's Bazel wrote and expects.
    Pod,
    /// `R/U/H/out/...`: what the desktop can follow.
    Desktop,
}

/// A link to replace: its name in the workspace root and its new target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    pub name: String,
    pub target: PathBuf,
}

/// Errors replacing a link; each names the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot list the workspace root {}", root.display())]
    List {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot replace the convenience symlink {}", link.display())]
    Replace {
        link: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the convenience symlink {}", link.display())]
    Remove {
        link: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `rest` when `target` is `prefix` or below it, with no `..` or `.` anywhere after it.
fn under<'a>(target: &'a Path, prefix: &Path) -> Option<&'a Path> {
    let rest = target.strip_prefix(prefix).ok()?;
    rest.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(rest)
}

/// The links of `entries` (name, current target) that must change to reach `to`.
pub fn plan(entries: &[(String, PathBuf)], map: &PathMap, to: Form) -> Vec<Flip> {
    let pod_out = Path::new(POD_OUT);
    let (from, into) = match to {
        Form::Pod => (map.mirror_out.as_path(), pod_out),
        Form::Desktop => (pod_out, map.mirror_out.as_path()),
    };
    entries
        .iter()
        .filter_map(|(name, target)| {
            let rest = under(target, from)?;
            Some(Flip {
                name: name.clone(),
                target: if rest.as_os_str().is_empty() {
                    into.to_path_buf()
                } else {
                    into.join(rest)
                },
            })
        })
        .collect()
}

/// The symlinks directly in `root` with their targets (other entries are skipped).
fn symlinks(root: &Path) -> Result<Vec<(String, PathBuf)>, LinkError> {
    let list = std::fs::read_dir(root).map_err(|source| LinkError::List {
        root: root.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in list.flatten() {
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_link {
            continue;
        }
        if let Ok(target) = std::fs::read_link(entry.path()) {
            out.push((name, target));
        }
    }
    Ok(out)
}

/// Puts the convenience links of the workspace `root` in `to` form. Returns how many
/// changed.
pub fn flip(root: &Path, map: &PathMap, to: Form) -> Result<usize, LinkError> {
    let flips = plan(&symlinks(root)?, map, to);
    for f in &flips {
        let link = root.join(&f.name);
        let tmp = root.join(format!(".{}.jbazel-{}", f.name, std::process::id()));
        let replace = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&f.target, &tmp)?;
            std::fs::rename(&tmp, &link)
        };
        if let Err(source) = replace() {
            let _ = std::fs::remove_file(&tmp);
            return Err(LinkError::Replace { link, source });
        }
    }
    Ok(flips.len())
}

/// The links of `entries` that point into the output base, in either form: what Bazel's
/// `clean --expunge` removes (by name, `bazel-*` or the `--symlink_prefix`'s).
pub fn into_output_base(entries: &[(String, PathBuf)], map: &PathMap) -> Vec<String> {
    let pod_out = Path::new(POD_OUT);
    entries
        .iter()
        .filter(|(_, target)| {
            under(target, pod_out).is_some() || under(target, &map.mirror_out).is_some()
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Removes the convenience links of the workspace `root` (see [`into_output_base`]), as
/// Bazel's expunge does when it can finish. Returns how many went.
pub fn remove(root: &Path, map: &PathMap) -> Result<usize, LinkError> {
    let names = into_output_base(&symlinks(root)?, map);
    for name in &names {
        let link = root.join(name);
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LinkError::Remove { link, source }),
        }
    }
    Ok(names.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> PathMap {
        PathMap::new(
            Path::new("/home/a/my repo"),
            Path::new("/fs"),
            "alice",
            "0123456789abcdef0123456789abcdef",
        )
    }

    const OUT: &str = "/fs/alice/0123456789abcdef0123456789abcdef/out";

    fn entries(list: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
        list.iter()
            .map(|(n, t)| (n.to_string(), PathBuf::from(t)))
            .collect()
    }

    #[test]
    fn desktop_form_maps_the_output_base_prefix_only() {
        let e = entries(&[
            (
                "bazel-bin",
                "/work/out/execroot/__main__/bazel-out/k8-fastbuild/bin",
            ),
            ("bazel-out", "/work/out/execroot/__main__/bazel-out"),
            ("bazel-my repo", "/work/out/execroot/__main__"),
            (
                "out-testlogs",
                "/work/out/execroot/__main__/bazel-out/k8-fastbuild/testlogs",
            ),
            ("whole", "/work/out"),
            // Not Bazel's: left alone.
            ("docs", "/work/src/docs"),
            ("elsewhere", "/usr/share"),
            ("relative", "lib"),
            ("sneaky", "/work/outside"),
            ("escape", "/work/out/../../etc"),
            // Already in desktop form.
            (
                "bazel-testlogs",
                "/fs/alice/0123456789abcdef0123456789abcdef/out/x",
            ),
        ]);
        let flips = plan(&e, &map(), Form::Desktop);
        let got: Vec<(&str, String)> = flips
            .iter()
            .map(|f| (f.name.as_str(), f.target.display().to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "bazel-bin",
                    format!("{OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin")
                ),
                ("bazel-out", format!("{OUT}/execroot/__main__/bazel-out")),
                ("bazel-my repo", format!("{OUT}/execroot/__main__")),
                (
                    "out-testlogs",
                    format!("{OUT}/execroot/__main__/bazel-out/k8-fastbuild/testlogs")
                ),
                ("whole", OUT.to_string()),
            ]
        );
    }

    #[test]
    fn pod_form_is_the_inverse() {
        let e = entries(&[
            (
                "bazel-bin",
                &format!("{OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin"),
            ),
            ("bazel-out", "/work/out/execroot/__main__/bazel-out"),
            ("other", "/fs/alice/0123456789abcdef0123456789abcdef/src"),
        ]);
        let flips = plan(&e, &map(), Form::Pod);
        assert_eq!(
            flips,
            vec![Flip {
                name: "bazel-bin".into(),
                target: PathBuf::from("/work/out/execroot/__main__/bazel-out/k8-fastbuild/bin"),
            }]
        );
    }

    #[test]
    fn flip_replaces_links_on_disk_and_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let pod = "/work/out/execroot/__main__/bazel-out/k8-fastbuild/bin";
        std::os::unix::fs::symlink(pod, root.join("bazel-bin")).expect("link");
        std::fs::write(root.join("WORKSPACE"), "").expect("file");
        let m = map();
        assert_eq!(flip(root, &m, Form::Desktop).expect("flip"), 1);
        assert_eq!(
            std::fs::read_link(root.join("bazel-bin")).expect("readlink"),
            PathBuf::from(format!(
                "{OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin"
            ))
        );
        assert_eq!(
            flip(root, &m, Form::Desktop).expect("again"),
            0,
            "idempotent"
        );
        assert_eq!(flip(root, &m, Form::Pod).expect("back"), 1);
        assert_eq!(
            std::fs::read_link(root.join("bazel-bin")).expect("readlink"),
            PathBuf::from(pod)
        );
        let names: Vec<_> = std::fs::read_dir(root)
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary link left: {names:?}");
    }

    #[test]
    fn remove_takes_only_links_into_the_output_base() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).expect("link")
        };
        link(
            "/work/out/execroot/__main__/bazel-out/k8-fastbuild/bin",
            "bazel-bin",
        );
        link(&format!("{OUT}/execroot/__main__"), "bazel-my repo");
        link("/work/out", "out-root");
        link("/work/outside/x", "bazel-lookalike");
        link("/work/out/../../etc", "bazel-escape");
        link("third_party/lib", "lib");
        std::fs::create_dir(root.join("bazel-dir")).expect("dir");
        let m = map();
        let mut gone = into_output_base(&symlinks(root).expect("list"), &m);
        gone.sort();
        assert_eq!(gone, ["bazel-bin", "bazel-my repo", "out-root"]);
        assert_eq!(remove(root, &m).expect("remove"), 3);
        let mut left: Vec<_> = std::fs::read_dir(root)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["bazel-dir", "bazel-escape", "bazel-lookalike", "lib"]
        );
        assert_eq!(remove(root, &m).expect("again"), 0, "idempotent");
    }
}
