//! The plan for people and programs: `supervisor --dry-run`'s text ([`dry_run_human`]) and
//! JSON ([`dry_run_json`]). Pure.

use std::fmt::Write as _;

use serde::Serialize;

use super::{HostFacts, ImageFacts, Mode, MountKind, MountPlan, Need};

/// Quotes one word for a POSIX shell when it needs it (for display only).
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn join_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

impl MountPlan {
    /// The plan for a person.
    pub fn render_human(&self) -> String {
        let mut s = String::new();
        let mode = match (self.mode.mode, self.mode.user_namespace) {
            (Mode::Direct, false) => "direct (new mount namespace)",
            (Mode::Direct, true) => "direct (new user + mount namespace)",
            (Mode::Bwrap, _) => "bwrap (children run under bubblewrap)",
        };
        let _ = writeln!(s, "mode:     {mode}");
        let _ = writeln!(s, "why:      {}", self.mode.reason);
        let _ = writeln!(
            s,
            "user:     {}  repo: {}  session: {}",
            self.user_id,
            self.repo_hash,
            self.session_id.as_deref().unwrap_or("-")
        );
        if let (Some(u), Some(g)) = (&self.uid_map, &self.gid_map) {
            let _ = writeln!(s, "id maps:  uid {u}, gid {g}");
        }
        let _ = writeln!(
            s,
            "mounts (in a new mount namespace; the host's mount table is unchanged):"
        );
        for (i, m) in self.mounts.iter().enumerate() {
            let kind = match m.kind {
                MountKind::MakeRprivate => "make-rprivate",
                MountKind::Tmpfs => "tmpfs",
                MountKind::Bind => "bind",
                MountKind::Hide => "hide",
            };
            let what = match &m.source {
                Some(src) => format!("{} -> {}", src.display(), m.target.display()),
                None => m.target.display().to_string(),
            };
            let _ = writeln!(s, "  {}. {kind:<13} {what}  ({})", i + 1, m.flags.join(","));
        }
        if !self.read_only.is_empty() {
            let paths: Vec<String> = self
                .read_only
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let _ = writeln!(
                s,
                "read-only: {} (the command writes only the output base)",
                join_argv(&paths)
            );
        }
        let _ = writeln!(s, "cwd:      {}", self.cwd);
        let _ = writeln!(
            s,
            "command:  {}\n          (no capabilities: all dropped, bounding set too, no_new_privs)",
            join_argv(&self.command)
        );
        let _ = writeln!(
            s,
            "run as:   uid {} gid {}{}: {}",
            self.run_as.uid,
            self.run_as.gid,
            if self.run_as.switch {
                " (switched to before exec; the supervisor writes out/ as them)"
            } else {
                ""
            },
            self.run_as.reason
        );
        if !self.env.is_empty() {
            let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "env:      {}", join_argv(&env));
        }
        if let Some(server) = &self.server {
            let _ = writeln!(
                s,
                "server:   output base {}, command port 127.0.0.1:{}, idle timeout {} s, system rc {}",
                server.output_base,
                server.command_port,
                server.idle_timeout_secs,
                server.system_bazelrc.display()
            );
            let heap = match server.heap.xmx_mib {
                Some(n) => format!("-Xmx{n}m"),
                None => "no -Xmx".to_owned(),
            };
            let _ = writeln!(s, "heap:     {heap}: {}", server.heap.reason);
            if let Some(w) = &server.heap.warning {
                let _ = writeln!(s, "          warning: {w}");
            }
        }
        let _ = writeln!(s, "bwrap:    {}", join_argv(&self.bwrap_argv));
        s
    }
}

/// The supervisor's capabilities ([`proto::pod::CAPABILITIES`]) as `--dry-run` prints them.
pub fn render_capabilities() -> String {
    let mut s = String::from(
        "the supervisor needs these capabilities (the pod's securityContext; Bazel and its actions get none):\n",
    );
    for (cap, why) in proto::pod::CAPABILITIES {
        let _ = writeln!(s, "  CAP_{cap:<15} {why}");
    }
    s
}

/// `needs` as `--dry-run` prints them.
pub fn render_needs(needs: &[Need]) -> String {
    let mut s = String::from("the pod needs (as seen on this host):\n");
    for n in needs {
        let mark = if n.have { "ok     " } else { "MISSING" };
        let _ = writeln!(s, "  {mark} {}: {}", n.what, n.detail);
    }
    s
}

/// `--dry-run`'s text: the plan, what the pod needs here, and the supervisor's capabilities.
pub fn dry_run_human(plan: &MountPlan, needs: &[Need]) -> String {
    format!(
        "{}{}{}",
        plan.render_human(),
        render_needs(needs),
        render_capabilities()
    )
}

#[derive(Serialize)]
struct DryRun<'a> {
    #[serde(flatten)]
    plan: &'a MountPlan,
    host: &'a HostFacts,
    image: &'a ImageFacts,
    needs: &'a [Need],
    /// What the supervisor itself needs in the pod's securityContext, and why.
    capabilities: Vec<Capability>,
}

#[derive(Serialize)]
struct Capability {
    name: String,
    why: &'static str,
}

/// `--dry-run --format json`: the plan's fields, the host's and image's facts, the needs and
/// the supervisor's capabilities, in one object.
pub fn dry_run_json(
    plan: &MountPlan,
    host: &HostFacts,
    image: &ImageFacts,
    needs: &[Need],
) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&DryRun {
        plan,
        host,
        image,
        needs,
        capabilities: proto::pod::CAPABILITIES
            .iter()
            .map(|(name, why)| Capability {
                name: format!("CAP_{name}"),
                why,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{config, facts};
    use super::super::{plan, Job};
    use super::*;
    use crate::cli::ModeRequest;

    #[test]
    fn human_and_json_renderings() {
        let p = plan(
            &config(Job::Serve),
            ModeRequest::Auto,
            &facts(true, false, true),
            Path::new("bwrap"),
        )
        .expect("plan");
        let h = p.render_human();
        assert!(h.contains("mode:     direct (new mount namespace)"), "{h}");
        assert!(h.contains("-> /work/src  (rec,ro)"), "{h}");
        assert!(
            h.contains("read-only: /work/src (the command writes only the output base)"),
            "{h}"
        );
        assert!(h.contains("bwrap:    /usr/bin/bwrap"), "{h}");
        assert!(h.contains("idle timeout 10800 s"), "{h}");
        assert!(
            h.contains("heap:     -Xmx3072m: 75% of the container's memory limit of 4096 MiB"),
            "{h}"
        );
        let v: serde_json::Value = serde_json::to_value(&p).expect("json");
        assert_eq!(v["mode"], "direct");
        assert_eq!(v["user_namespace"], false);
        assert_eq!(v["mounts"][1]["kind"], "tmpfs");
        assert_eq!(v["mounts"][2]["flags"], serde_json::json!(["rec", "ro"]));
        assert_eq!(v["read_only"], serde_json::json!(["/work/src"]));
        assert_eq!(v["server"]["command_port"], 9001);
        assert_eq!(v["server"]["idle_timeout_secs"], 10_800);
        assert_eq!(v["server"]["heap"]["xmx_mib"], 3072);
        assert_eq!(v["server"]["memory_limit"]["kind"], "limited");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a/b=c"), "a/b=c");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
