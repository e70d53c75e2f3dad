//! Pod paths resolved to desktop paths without leaving the user's directories (pure: links
//! are read through [`ReadLink`], so a fake filesystem tests it).

use super::join;
use crate::paths::{PathMap, ReadLink, POD_OUT, POD_SRC};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed at most while resolving one path, as the kernel.
const MAX_HOPS: u32 = 40;

/// Why a path cannot be used on the desktop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Escape {
    /// Not a `/work/src` or `/work/out` path.
    NotPod { path: PathBuf },
    /// A symlink on the way points outside the workspace and the output base.
    Outside { link: PathBuf, target: PathBuf },
    /// `..` climbs above the workspace root or the output base.
    AboveRoot { path: PathBuf },
    /// More than 40 symlinks.
    Loop { path: PathBuf },
}

impl fmt::Display for Escape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Escape::NotPod { path } => write!(
                f,
                "{} is under neither {POD_SRC} nor {POD_OUT}",
                path.display()
            ),
            Escape::Outside { link, target } => write!(
                f,
                "{} is a symlink to {}, outside the workspace and the output base",
                link.display(),
                target.display()
            ),
            Escape::AboveRoot { path } => write!(
                f,
                "{} climbs out of the workspace or the output base",
                path.display()
            ),
            Escape::Loop { path } => {
                write!(f, "too many levels of symbolic links in {}", path.display())
            }
        }
    }
}

/// The desktop spelling of a pod path (`/work/src` -> root, `/work/out` -> mirror), or
/// None for any other path. Whole components only: `/work/srcs` is not a pod path.
pub fn desktop_path(map: &PathMap, pod: &Path) -> Option<PathBuf> {
    [(POD_SRC, &map.desktop_root), (POD_OUT, &map.mirror_out)]
        .into_iter()
        .find_map(|(prefix, desktop)| {
            pod.strip_prefix(prefix)
                .ok()
                .map(|rest| join(desktop, rest))
        })
}

/// Resolves desktop paths link by link without leaving the user's directories (the
/// workspace root, the mirror's `src` and `out`, and their aliases). Each link's target is
/// read once (memoized), so a tree of many files costs one `readlink` per distinct path.
pub struct Resolver<'a> {
    map: &'a PathMap,
    /// Longest first, so the innermost root matches.
    roots: Vec<PathBuf>,
    fs: &'a dyn ReadLink,
    links: HashMap<PathBuf, Option<PathBuf>>,
}

impl<'a> Resolver<'a> {
    pub fn new(map: &'a PathMap, fs: &'a dyn ReadLink) -> Self {
        let mut roots = vec![
            map.desktop_root.clone(),
            map.mirror_src.clone(),
            map.mirror_out.clone(),
        ];
        roots.extend(map.aliases.iter().map(|(p, _)| p.clone()));
        roots.retain(|p| p.is_absolute());
        roots.sort_by(|a, b| {
            b.components()
                .count()
                .cmp(&a.components().count())
                .then_with(|| a.cmp(b))
        });
        roots.dedup();
        Resolver {
            map,
            roots,
            fs,
            links: HashMap::new(),
        }
    }

    /// How many distinct paths were checked for a link.
    pub fn lookups(&self) -> usize {
        self.links.len()
    }

    fn read_link(&mut self, p: &Path) -> Option<PathBuf> {
        if let Some(t) = self.links.get(p) {
            return t.clone();
        }
        let t = self.fs.read_link(p);
        self.links.insert(p.to_path_buf(), t.clone());
        t
    }

    /// The root `path` lies in (lexically), and the rest.
    fn split_root<'p>(&self, path: &'p Path) -> Option<(PathBuf, &'p Path)> {
        self.roots
            .iter()
            .find_map(|r| path.strip_prefix(r).ok().map(|rest| (r.clone(), rest)))
    }

    /// A pod path resolved to a desktop path with no links left below its root.
    pub fn resolve_pod(&mut self, pod: &Path) -> Result<PathBuf, Escape> {
        let desktop = desktop_path(self.map, pod).ok_or_else(|| Escape::NotPod {
            path: pod.to_path_buf(),
        })?;
        self.resolve(&desktop)
    }

    /// A desktop path inside the user's directories, resolved component by component;
    /// a link's absolute pod target is translated first. Err when the walk would leave them.
    pub fn resolve(&mut self, path: &Path) -> Result<PathBuf, Escape> {
        let outside = || Escape::AboveRoot {
            path: path.to_path_buf(),
        };
        let (mut root, rest) = self.split_root(path).ok_or_else(outside)?;
        let mut cur = root.clone();
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, rest);
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                if cur == root {
                    return Err(outside());
                }
                cur.pop();
                continue;
            }
            let candidate = cur.join(&name);
            let Some(target) = self.read_link(&candidate) else {
                cur = candidate;
                continue;
            };
            hops += 1;
            if hops > MAX_HOPS {
                return Err(Escape::Loop {
                    path: path.to_path_buf(),
                });
            }
            if target.is_absolute() {
                let translated = desktop_path(self.map, &target).unwrap_or_else(|| target.clone());
                let Some((r, rest)) = self.split_root(&translated) else {
                    return Err(Escape::Outside {
                        link: candidate,
                        target,
                    });
                };
                root = r.clone();
                cur = r;
                push_components(&mut pending, rest);
            } else {
                push_components(&mut pending, &target);
            }
        }
        Ok(cur)
    }
}

/// Pushes the components of a relative path so that they pop in order (`.` dropped).
fn push_components(stack: &mut Vec<OsString>, rel: &Path) {
    for c in rel.components().rev() {
        match c {
            Component::Normal(n) => stack.push(n.to_os_string()),
            Component::ParentDir => stack.push("..".into()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runfiles::fixtures::*;

    #[test]
    fn resolve_table() {
        let m = map();
        let fs = output_base();
        let mut res = Resolver::new(&m, &fs);
        let ok = |s: &str| Ok(PathBuf::from(s));
        let cases: Vec<(String, Result<PathBuf, Escape>)> = vec![
            (
                "/work/src/runfiles/data.txt".into(),
                ok("/home/alice/proj/runfiles/data.txt"),
            ),
            ("/work/src".into(), ok("/home/alice/proj")),
            (
                format!("{BIN}/runfiles/generated.txt"),
                Ok(PathBuf::from(format!(
                    "{OUT}/execroot/__main__/bazel-out/k8-fastbuild/bin/runfiles/generated.txt"
                ))),
            ),
            // A sh_binary is a link to its source; a package link in the execroot.
            (
                format!("{BIN}/runfiles/show_data"),
                ok("/home/alice/proj/runfiles/show_data.sh"),
            ),
            (
                "/work/out/execroot/__main__/runfiles/data.txt".into(),
                ok("/home/alice/proj/runfiles/data.txt"),
            ),
            // Two links and a relative one.
            (
                "/work/out/execroot/__main__/external/local/runfiles/x".into(),
                ok("/home/alice/proj/runfiles/x"),
            ),
            // A desktop path inside the workspace is fine.
            (
                "/work/out/to_home/greet.h".into(),
                ok("/home/alice/proj/lib/greet.h"),
            ),
            // Outside: the pod's install base, /etc, `..` above the output base.
            (
                "/work/out/external/bazel_tools/tools/bash/runfiles/runfiles.bash".into(),
                Err(Escape::Outside {
                    link: PathBuf::from(format!("{OUT}/external/bazel_tools")),
                    target: PathBuf::from("/usr/share/bazel/embedded_tools"),
                }),
            ),
            (
                "/work/out/to_etc".into(),
                Err(Escape::Outside {
                    link: PathBuf::from(format!("{OUT}/to_etc")),
                    target: PathBuf::from("/etc/passwd"),
                }),
            ),
            (
                "/work/out/external/up/x".into(),
                Err(Escape::AboveRoot {
                    path: PathBuf::from(format!("{OUT}/external/up/x")),
                }),
            ),
            (
                "/work/out/../../etc/passwd".into(),
                Err(Escape::AboveRoot {
                    path: PathBuf::from(format!("{OUT}/../../etc/passwd")),
                }),
            ),
            (
                "/work/out/loop/x".into(),
                Err(Escape::Loop {
                    path: PathBuf::from(format!("{OUT}/loop/x")),
                }),
            ),
            // Not pod paths.
            (
                "/usr/bin/python3".into(),
                Err(Escape::NotPod {
                    path: PathBuf::from("/usr/bin/python3"),
                }),
            ),
            (
                "/work/srcs/x".into(),
                Err(Escape::NotPod {
                    path: PathBuf::from("/work/srcs/x"),
                }),
            ),
            (
                "relative/x".into(),
                Err(Escape::NotPod {
                    path: PathBuf::from("relative/x"),
                }),
            ),
        ];
        for (pod, want) in cases {
            assert_eq!(res.resolve_pod(Path::new(&pod)), want, "{pod}");
        }
    }

    #[test]
    fn resolve_reads_each_link_once() {
        struct Counting(std::cell::Cell<usize>);
        impl ReadLink for Counting {
            fn read_link(&self, _: &Path) -> Option<PathBuf> {
                self.0.set(self.0.get() + 1);
                None
            }
        }
        let m = map();
        let fs = Counting(std::cell::Cell::new(0));
        let mut res = Resolver::new(&m, &fs);
        for i in 0..100 {
            let p = format!("{BIN}/pkg/f{i}");
            assert!(res.resolve_pod(Path::new(&p)).is_ok());
        }
        // execroot, __main__, bazel-out, k8-fastbuild, bin, pkg + 100 files.
        assert_eq!(fs.0.get(), 106);
        assert_eq!(res.lookups(), 106);
    }

    #[test]
    fn aliases_are_roots_too() {
        let mut m = map();
        m.aliases
            .push((PathBuf::from("/data/fs/alice/h/out"), POD_OUT));
        let fs = Links(vec![(format!("{OUT}/x"), "/data/fs/alice/h/out/y".into())]);
        let mut res = Resolver::new(&m, &fs);
        assert_eq!(
            res.resolve_pod(Path::new("/work/out/x/z")),
            Ok(PathBuf::from("/data/fs/alice/h/out/y/z"))
        );
    }
}
