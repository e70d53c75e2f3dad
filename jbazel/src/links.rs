//! Bazel's convenience symlinks (`bazel-bin`, `bazel-out`, `bazel-testlogs`,
//! `bazel-<workspace>`, or whatever `--symlink_prefix` names) on the desktop.
//!
//! The checkout is read-only in the pod, so the pod's Bazel makes its links in the output
//! base, under [`POD_LINKS`] (see [`crate::symlink_prefix`]: `--symlink_prefix=P` reaches
//! the server as `--symlink_prefix=/work/out/jbazel/links/P`), pointing into `/work/out`.
//! After every command jbazel mirrors them into the desktop's workspace ([`mirror`]): the
//! link `<root>/P<name>` points where the pod's `links/P<name>` does, with `/work/out` made
//! the mirror `R/U/H/out`, so `ls bazel-bin/...` and `cat bazel-testlogs/...` work on the
//! desktop, as with a local Bazel. Bazel's names are kept: `P` + `bin`, `testlogs`,
//! `genfiles`, `out`, `py2`, `py3`, the execution root's link under the desktop's
//! directory name (`P<basename>`, the pod's being `Psrc`), and `bazel-out` for every
//! prefix (Bazel 4.2.3 makes it in the workspace whatever the prefix; the pod's is turned
//! off). A desktop link whose pod link is gone (after `clean`, or a genfiles link Bazel
//! dropped) is removed.
//!
//! The desktop links dangle in the pod (it sees nothing of the filestore beyond `R/U/H`'s
//! src and out), so the server's `//...` never walks into its own output base through
//! them; and the server never writes them.
//!
//! Only names Bazel gives the prefixes jbazel knows are touched; only symlinks, never a
//! file or directory, and only those pointing into the output base (in either form); no
//! link is followed: a name whose parent directory is a symlink is left alone. Each link
//! is replaced atomically (a temporary link renamed over it). The decisions are pure
//! ([`names`], [`mirror_plan`], [`printed_path_rules`]); [`mirror`], [`clean`] and
//! [`remove`] do the I/O.
//!
//! [`flip`] keeps the links' older two-form scheme (pod form `/work/out/...` for a Bazel
//! client writing the checkout, desktop form after): the no-op bench's real client, which
//! shares a writable checkout with jbazel, uses it.

use std::path::{Component, Path, PathBuf};

use crate::paths::{PathMap, POD_OUT};

/// The pod's directory of convenience links: `/work/out/jbazel/links`.
pub const POD_LINKS: &str = "/work/out/jbazel/links";
/// Bazel's product-name link, made whatever the prefix.
pub const PRODUCT_OUT: &str = "bazel-out";
/// The pod's workspace directory name (`/work/src`): its execution-root link is `Psrc`.
const POD_BASE: &str = "src";
/// The links Bazel 4.2.3 names `P<suffix>`, in its order, before `bazel-out`, `Pout` and
/// the execution root's.
const CONFIG_SUFFIXES: [&str; 3] = ["bin", "testlogs", "genfiles"];
/// The Python rules' links, after the execution root's.
const PYTHON_SUFFIXES: [&str; 2] = ["py2", "py3"];

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

/// A desktop link and the pod links it mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkName {
    /// The link in the workspace, relative to its root (`bazel-bin`, `.bazel/bin`).
    pub desktop: String,
    /// The pod's links, relative to [`POD_LINKS`], in preference order: the desktop link
    /// points where the first of them that exists does.
    pub pod: Vec<String>,
}

fn only_names(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Bazel's links of one prefix as (desktop name, pod name), in Bazel's order; a name
/// already taken stays with the first (Bazel skips the execution root's link when the
/// workspace is called `bin`, say).
fn links_of(prefix: &str, desktop_base: Option<&str>) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = CONFIG_SUFFIXES
        .iter()
        .map(|s| (format!("{prefix}{s}"), format!("{prefix}{s}")))
        .collect();
    all.push((PRODUCT_OUT.to_string(), format!("{prefix}out")));
    all.push((format!("{prefix}out"), format!("{prefix}out")));
    if let Some(base) = desktop_base {
        all.push((format!("{prefix}{base}"), format!("{prefix}{POD_BASE}")));
    }
    all.extend(
        PYTHON_SUFFIXES
            .iter()
            .map(|s| (format!("{prefix}{s}"), format!("{prefix}{s}"))),
    );
    let mut out: Vec<(String, String)> = Vec::new();
    for (d, p) in all {
        if only_names(&d) && only_names(&p) && !out.iter().any(|(taken, _)| *taken == d) {
            out.push((d, p));
        }
    }
    out
}

/// The links to mirror for `prefixes` (lowest precedence first, as
/// [`crate::symlink_prefix::Rewritten::prefixes`]) in a workspace directory called
/// `desktop_base`. A desktop name several prefixes give (`bazel-out`) mirrors the pod link
/// of the highest-precedence prefix that has one.
pub fn names(prefixes: &[String], desktop_base: Option<&str>) -> Vec<LinkName> {
    let mut out: Vec<LinkName> = Vec::new();
    for prefix in prefixes.iter().rev() {
        for (desktop, pod) in links_of(prefix, desktop_base) {
            match out.iter_mut().find(|n| n.desktop == desktop) {
                Some(n) if !n.pod.contains(&pod) => n.pod.push(pod),
                Some(_) => {}
                None => out.push(LinkName {
                    desktop,
                    pod: vec![pod],
                }),
            }
        }
    }
    out
}

/// What is at a name, not following links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Absent,
    Link(PathBuf),
    /// Not a symlink, below something that is not a directory, or unreadable.
    Other,
}

/// A change to the desktop's links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace the link `name` (relative to the root) with `target`.
    Link { name: String, target: PathBuf },
    /// Remove the link `name`.
    Remove { name: String },
}

/// Whether a link's target lies in the output base, in either form.
fn into_the_output_base(target: &Path, map: &PathMap) -> bool {
    under(target, Path::new(POD_OUT)).is_some() || under(target, &map.mirror_out).is_some()
}

/// The changes that make the desktop's links (`desktop`) mirror the pod's (`pod`), both
/// read by name.
pub fn mirror_plan(
    names: &[LinkName],
    pod: &dyn Fn(&str) -> Entry,
    desktop: &dyn Fn(&str) -> Entry,
    map: &PathMap,
) -> Vec<Change> {
    let pod_out = Path::new(POD_OUT);
    let mut changes = Vec::new();
    'names: for n in names {
        let mut want = None;
        for source in &n.pod {
            match pod(source) {
                Entry::Link(t) => {
                    if let Some(rest) = under(&t, pod_out) {
                        want = Some(if rest.as_os_str().is_empty() {
                            map.mirror_out.clone()
                        } else {
                            map.mirror_out.join(rest)
                        });
                        break;
                    }
                }
                Entry::Absent => {}
                // Cannot tell what the pod has: leave the desktop as it is.
                Entry::Other => continue 'names,
            }
        }
        let name = n.desktop.clone();
        match (want, desktop(&n.desktop)) {
            (Some(w), Entry::Link(have)) if have == w => {}
            (Some(target), Entry::Absent) => changes.push(Change::Link { name, target }),
            (Some(target), Entry::Link(have)) if into_the_output_base(&have, map) => {
                changes.push(Change::Link { name, target })
            }
            (None, Entry::Link(have)) if into_the_output_base(&have, map) => {
                changes.push(Change::Remove { name })
            }
            _ => {}
        }
    }
    changes
}

/// Rules for [`crate::paths::Rewriter`], before the `/work/out` one: a path Bazel prints
/// through a pod link (`/work/out/jbazel/links/bazel-bin/app/hello`, for a target built)
/// becomes the same path through the desktop's link, relative when the working directory
/// is the workspace root (`bazel-bin/app/hello`), absolute below it, as Bazel prints it
/// locally. Longest first.
pub fn printed_path_rules(
    names: &[LinkName],
    root: &Path,
    cwd_is_root: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let mut pods: Vec<&String> = names.iter().flat_map(|n| &n.pod).collect();
    pods.sort();
    pods.dedup();
    let mut rules: Vec<(Vec<u8>, Vec<u8>)> = pods
        .into_iter()
        .filter_map(|pod| {
            // The desktop link of the same name if it mirrors this one, else the first that
            // does (the execution root's `Psrc` is `P<basename>` on the desktop).
            let desktop = names
                .iter()
                .find(|n| n.desktop == *pod && n.pod.contains(pod))
                .or_else(|| names.iter().find(|n| n.pod.contains(pod)))?;
            let to = if cwd_is_root {
                desktop.desktop.as_bytes().to_vec()
            } else {
                root.join(&desktop.desktop).as_os_str().as_bytes().to_vec()
            };
            Some((format!("{POD_LINKS}/{pod}").into_bytes(), to))
        })
        .collect();
    rules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    rules
}

/// What is at `base/rel`, following no link: a parent that is a symlink makes it
/// [`Entry::Other`].
fn entry(base: &Path, rel: &str) -> Entry {
    use std::io::ErrorKind::NotFound;
    let mut path = base.to_path_buf();
    let parts: Vec<Component> = Path::new(rel).components().collect();
    let Some((last, parents)) = parts.split_last() else {
        return Entry::Other;
    };
    for p in parents {
        path.push(p);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Err(e) if e.kind() == NotFound => return Entry::Absent,
            _ => return Entry::Other,
        }
    }
    path.push(last);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == NotFound => Entry::Absent,
        Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&path) {
            Ok(t) => Entry::Link(t),
            Err(_) => Entry::Other,
        },
        _ => Entry::Other,
    }
}

/// Creates the missing parent directories of `root/rel`; refuses one that is not a real
/// directory (a symlink is not followed).
fn make_parents(root: &Path, rel: &str) -> std::io::Result<()> {
    let parts: Vec<Component> = Path::new(rel).components().collect();
    let mut dir = root.to_path_buf();
    for p in parts.iter().take(parts.len().saturating_sub(1)) {
        dir.push(p);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !std::fs::symlink_metadata(&dir)?.is_dir() {
                    return Err(std::io::Error::other(format!(
                        "{} is not a directory",
                        dir.display()
                    )));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Points the link `link` at `target`, atomically.
fn replace_link(link: &Path, target: &Path) -> std::io::Result<()> {
    let name = link.file_name().unwrap_or_default().to_string_lossy();
    let tmp = link.with_file_name(format!(".{name}.jbazel-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let made = std::os::unix::fs::symlink(target, &tmp).and_then(|()| std::fs::rename(&tmp, link));
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// What [`mirror`] or [`clean`] did.
#[derive(Debug, Default)]
pub struct Mirrored {
    /// Desktop links created, replaced or removed.
    pub changed: usize,
    /// The links that could not be changed (the others were).
    pub errors: Vec<LinkError>,
}

/// The pod's links directory as the desktop sees it (`R/U/H/out/jbazel/links`).
pub fn desktop_links_dir(map: &PathMap) -> PathBuf {
    map.mirror_out.join(proto::mirror::LINKS_DIR)
}

/// Makes the desktop's links of `names` in the workspace `root` mirror the pod's (see the
/// module's documentation). Run after every command.
pub fn mirror(root: &Path, map: &PathMap, names: &[LinkName]) -> Mirrored {
    let pod_dir = desktop_links_dir(map);
    let plan = mirror_plan(
        names,
        &|rel| entry(&pod_dir, rel),
        &|rel| entry(root, rel),
        map,
    );
    let mut done = Mirrored::default();
    for change in plan {
        let result = match &change {
            Change::Link { name, target } => {
                let link = root.join(name);
                make_parents(root, name)
                    .and_then(|()| replace_link(&link, target))
                    .map_err(|source| LinkError::Replace { link, source })
            }
            Change::Remove { name } => {
                let link = root.join(name);
                match std::fs::remove_file(&link) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(source) => Err(LinkError::Remove { link, source }),
                }
            }
        };
        match result {
            Ok(()) => done.changed += 1,
            Err(e) => done.errors.push(e),
        }
    }
    done
}

/// After a `clean` the server ran with `--symlink_prefix=/` (Bazel 4.2.3's `clean` would
/// try to remove `bazel-out` from the read-only checkout): removes the pod's links of
/// `names` itself, mirrors (so the desktop's go too), and removes the directories a
/// prefix made on the desktop once empty, as Bazel's `clean` does.
pub fn clean(root: &Path, map: &PathMap, names: &[LinkName]) -> Mirrored {
    let pod_dir = desktop_links_dir(map);
    let mut errors = Vec::new();
    for source in names.iter().flat_map(|n| &n.pod) {
        if let Entry::Link(_) = entry(&pod_dir, source) {
            let link = pod_dir.join(source);
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => errors.push(LinkError::Remove { link, source }),
            }
        }
    }
    let mut done = mirror(root, map, names);
    errors.append(&mut done.errors);
    done.errors = errors;
    for n in names {
        let mut dir = Path::new(&n.desktop).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            let path = root.join(d);
            let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if !is_dir || std::fs::remove_dir(&path).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
    done
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

    fn s(a: &[&str]) -> Vec<String> {
        a.iter().map(|x| x.to_string()).collect()
    }

    fn name(desktop: &str, pod: &[&str]) -> LinkName {
        LinkName {
            desktop: desktop.into(),
            pod: s(pod),
        }
    }

    #[test]
    fn pod_links_is_the_mirror_layouts_links_dir() {
        assert_eq!(POD_LINKS, format!("{POD_OUT}/{}", proto::mirror::LINKS_DIR));
        assert_eq!(
            Path::new(crate::paths::POD_SRC).file_name(),
            Some(std::ffi::OsStr::new(POD_BASE))
        );
    }

    #[test]
    fn names_table() {
        let cases: &[(&[&str], Option<&str>, Vec<LinkName>)] = &[
            (
                &["bazel-"],
                Some("my repo"),
                vec![
                    name("bazel-bin", &["bazel-bin"]),
                    name("bazel-testlogs", &["bazel-testlogs"]),
                    name("bazel-genfiles", &["bazel-genfiles"]),
                    name("bazel-out", &["bazel-out"]),
                    name("bazel-my repo", &["bazel-src"]),
                    name("bazel-py2", &["bazel-py2"]),
                    name("bazel-py3", &["bazel-py3"]),
                ],
            ),
            // The workspace directory `bin`: Bazel skips the execution root's link.
            (
                &["bazel-"],
                Some("bin"),
                vec![
                    name("bazel-bin", &["bazel-bin"]),
                    name("bazel-testlogs", &["bazel-testlogs"]),
                    name("bazel-genfiles", &["bazel-genfiles"]),
                    name("bazel-out", &["bazel-out"]),
                    name("bazel-py2", &["bazel-py2"]),
                    name("bazel-py3", &["bazel-py3"]),
                ],
            ),
            // Highest precedence first; `bazel-out` mirrors `.bazel/out`, else `bazel-out`.
            (
                &["bazel-", ".bazel/"],
                None,
                vec![
                    name(".bazel/bin", &[".bazel/bin"]),
                    name(".bazel/testlogs", &[".bazel/testlogs"]),
                    name(".bazel/genfiles", &[".bazel/genfiles"]),
                    name("bazel-out", &[".bazel/out", "bazel-out"]),
                    name(".bazel/out", &[".bazel/out"]),
                    name(".bazel/py2", &[".bazel/py2"]),
                    name(".bazel/py3", &[".bazel/py3"]),
                    name("bazel-bin", &["bazel-bin"]),
                    name("bazel-testlogs", &["bazel-testlogs"]),
                    name("bazel-genfiles", &["bazel-genfiles"]),
                    name("bazel-py2", &["bazel-py2"]),
                    name("bazel-py3", &["bazel-py3"]),
                ],
            ),
            // The empty prefix: `bin`, ..., and a workspace called `bazel-out` loses its
            // link to the product's.
            (
                &[""],
                Some("bazel-out"),
                vec![
                    name("bin", &["bin"]),
                    name("testlogs", &["testlogs"]),
                    name("genfiles", &["genfiles"]),
                    name("bazel-out", &["out"]),
                    name("out", &["out"]),
                    name("py2", &["py2"]),
                    name("py3", &["py3"]),
                ],
            ),
            // Names leaving the root are never made, whatever the caller passed.
            (&["../x-", "/abs-"], None, vec![]),
        ];
        for (prefixes, base, want) in cases {
            assert_eq!(names(&s(prefixes), *base), *want, "{prefixes:?} {base:?}");
        }
    }

    fn lookup<'a>(list: &'a [(&'a str, Entry)]) -> impl Fn(&str) -> Entry + 'a {
        move |n| {
            list.iter()
                .find(|(k, _)| *k == n)
                .map_or(Entry::Absent, |(_, e)| e.clone())
        }
    }

    fn link(t: &str) -> Entry {
        Entry::Link(PathBuf::from(t))
    }

    #[test]
    fn mirror_plan_table() {
        let m = map();
        let ex = "/work/out/execroot/__main__";
        let bin = format!("{ex}/bazel-out/k8-fastbuild/bin");
        let pod = [
            ("bazel-bin", link(&bin)),
            (
                "bazel-testlogs",
                link(&format!("{ex}/bazel-out/k8-fastbuild/testlogs")),
            ),
            ("bazel-out", link(&format!("{ex}/bazel-out"))),
            ("bazel-src", link(ex)),
            // A link the pod planted outside its output base counts as none.
            ("bazel-py2", link("/etc")),
            ("bazel-py3", Entry::Other),
        ];
        let desktop = [
            // Already mirrored: nothing to do.
            (
                "bazel-testlogs",
                link(&format!(
                    "{OUT}/execroot/__main__/bazel-out/k8-fastbuild/testlogs"
                )),
            ),
            // The older pod form: replaced.
            ("bazel-out", link(&format!("{ex}/bazel-out"))),
            // A stale link into the output base whose pod link is gone: removed.
            (
                "bazel-genfiles",
                link(&format!("{OUT}/execroot/__main__/bazel-out/x/bin")),
            ),
            // The user's: a directory, and a link elsewhere, left alone.
            ("bazel-my repo", Entry::Other),
            ("bazel-py2", link("/usr/share")),
            // The pod's state unknown: left alone.
            ("bazel-py3", link(&format!("{OUT}/x"))),
        ];
        let plan = mirror_plan(
            &names(&s(&["bazel-"]), Some("my repo")),
            &lookup(&pod),
            &lookup(&desktop),
            &m,
        );
        assert_eq!(
            plan,
            vec![
                Change::Link {
                    name: "bazel-bin".into(),
                    target: PathBuf::from(format!(
                        "{OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin"
                    )),
                },
                Change::Remove {
                    name: "bazel-genfiles".into()
                },
                Change::Link {
                    name: "bazel-out".into(),
                    target: PathBuf::from(format!("{OUT}/execroot/__main__/bazel-out")),
                },
            ]
        );
    }

    #[test]
    fn mirror_plan_prefers_the_highest_precedence_pod_link() {
        let m = map();
        let names = names(&s(&["bazel-", "x-"]), None);
        let product = |pod: &[(&str, Entry)]| {
            mirror_plan(&names, &lookup(pod), &|_| Entry::Absent, &m)
                .into_iter()
                .find(|c| matches!(c, Change::Link { name, .. } if name == PRODUCT_OUT))
        };
        let both = [
            ("x-out", link("/work/out/execroot/x/bazel-out")),
            ("bazel-out", link("/work/out/execroot/old/bazel-out")),
        ];
        assert_eq!(
            product(&both),
            Some(Change::Link {
                name: PRODUCT_OUT.into(),
                target: PathBuf::from(format!("{OUT}/execroot/x/bazel-out")),
            })
        );
        assert_eq!(
            product(&both[1..]),
            Some(Change::Link {
                name: PRODUCT_OUT.into(),
                target: PathBuf::from(format!("{OUT}/execroot/old/bazel-out")),
            })
        );
        assert_eq!(product(&[]), None);
    }

    #[test]
    fn printed_paths_go_through_the_desktop_links() {
        let root = Path::new("/home/a/my repo");
        let names = names(&s(&["bazel-"]), Some("my repo"));
        let text = "Target //app:hello up-to-date:\n  /work/out/jbazel/links/bazel-bin/app/hello\n\
                    ext /work/out/jbazel/links/bazel-src/external/x\n\
                    raw /work/out/execroot/__main__/bazel-out\n";
        let rewrite = |cwd_is_root| {
            let mut rules = printed_path_rules(&names, root, cwd_is_root);
            assert!(
                rules.windows(2).all(|w| w[0].0.len() >= w[1].0.len()),
                "longest first"
            );
            rules.push((POD_OUT.into(), OUT.into()));
            crate::paths::Rewriter::new(rules).rewrite_str(text)
        };
        assert_eq!(
            rewrite(true),
            format!(
                "Target //app:hello up-to-date:\n  bazel-bin/app/hello\n\
                 ext bazel-my repo/external/x\n\
                 raw {OUT}/execroot/__main__/bazel-out\n"
            )
        );
        assert_eq!(
            rewrite(false),
            format!(
                "Target //app:hello up-to-date:\n  /home/a/my repo/bazel-bin/app/hello\n\
                 ext /home/a/my repo/bazel-my repo/external/x\n\
                 raw {OUT}/execroot/__main__/bazel-out\n"
            )
        );
    }

    /// A workspace `ws` and a filestore `fs` in a temporary directory, with the map
    /// between them.
    fn on_disk() -> (tempfile::TempDir, PathBuf, PathMap) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("ws");
        std::fs::create_dir(&root).expect("ws");
        let m = PathMap::new(
            &root,
            &dir.path().join("fs"),
            "alice",
            "0123456789abcdef0123456789abcdef",
        );
        std::fs::create_dir_all(desktop_links_dir(&m)).expect("links dir");
        (dir, root, m)
    }

    fn pod_link(m: &PathMap, rel: &str, target: &str) {
        let path = desktop_links_dir(m).join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, path).expect("pod link");
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in walk(dir) {
            let rel = e.strip_prefix(dir).expect("under").display().to_string();
            match std::fs::read_link(&e) {
                Ok(t) => out.push(format!("{rel} -> {}", t.display())),
                Err(_) => out.push(rel),
            }
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("list").flatten() {
            let p = e.path();
            out.push(p.clone());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            }
        }
        out
    }

    #[test]
    fn mirror_and_clean_on_disk() {
        let (dir, root, m) = on_disk();
        let ex = "/work/out/execroot/__main__";
        let out = m.mirror_out.display().to_string();
        pod_link(&m, "bazel-bin", &format!("{ex}/bazel-out/k8-fastbuild/bin"));
        pod_link(&m, "bazel-out", &format!("{ex}/bazel-out"));
        pod_link(&m, "bazel-src", ex);
        pod_link(&m, ".bazel/bin", &format!("{ex}/bazel-out/k8-opt/bin"));
        pod_link(&m, "lnk/bin", &format!("{ex}/bazel-out/k8-opt/bin"));
        // The desktop: a stale link, a file of the user's, a directory link.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("elsewhere");
        std::os::unix::fs::symlink(format!("{out}/gone"), root.join("bazel-genfiles"))
            .expect("stale");
        std::fs::write(root.join("bazel-testlogs"), "mine").expect("file");
        std::os::unix::fs::symlink(&elsewhere, root.join("lnk")).expect("dir link");

        let n = names(&s(&["bazel-", ".bazel/", "lnk/"]), Some("ws"));
        let done = mirror(&root, &m, &n);
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        assert_eq!(
            done.changed, 5,
            "bin, out, ws, .bazel/bin, and genfiles removed"
        );
        assert_eq!(
            listing(&root),
            s(&[
                ".bazel",
                &format!(".bazel/bin -> {out}/execroot/__main__/bazel-out/k8-opt/bin"),
                &format!("bazel-bin -> {out}/execroot/__main__/bazel-out/k8-fastbuild/bin"),
                &format!("bazel-out -> {out}/execroot/__main__/bazel-out"),
                "bazel-testlogs",
                &format!("bazel-ws -> {out}/execroot/__main__"),
                &format!("lnk -> {}", elsewhere.display()),
            ])
        );
        assert!(
            listing(&elsewhere).is_empty(),
            "lnk/bin is not made through the directory link lnk"
        );
        let again = mirror(&root, &m, &n);
        assert_eq!(again.changed, 0, "idempotent");

        let cleaned = clean(&root, &m, &n);
        assert_eq!(cleaned.changed, 4, "{:?}", cleaned.errors);
        assert_eq!(
            listing(&root),
            s(&["bazel-testlogs", &format!("lnk -> {}", elsewhere.display())])
        );
        // The pod's links of the prefixes are gone; the prefixes' directories stay there, as
        // Bazel leaves them.
        assert_eq!(listing(&desktop_links_dir(&m)), s(&[".bazel", "lnk"]));
        assert_eq!(mirror(&root, &m, &n).changed, 0);
    }

    #[test]
    fn an_empty_or_missing_links_dir_removes_only_links_into_the_output_base() {
        let (_dir, root, m) = on_disk();
        std::fs::remove_dir(desktop_links_dir(&m)).expect("rmdir");
        let out = m.mirror_out.display().to_string();
        std::os::unix::fs::symlink(format!("{out}/execroot/x"), root.join("bazel-bin"))
            .expect("link");
        std::os::unix::fs::symlink("/work/out/execroot/x", root.join("bazel-out"))
            .expect("pod form");
        std::os::unix::fs::symlink("/work/outside", root.join("bazel-testlogs"))
            .expect("lookalike");
        let done = mirror(&root, &m, &names(&s(&["bazel-"]), Some("ws")));
        assert_eq!(done.changed, 2, "{:?}", done.errors);
        assert_eq!(listing(&root), s(&["bazel-testlogs -> /work/outside"]));
    }
}
