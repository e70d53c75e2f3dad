//! `--dry-run`: the plan for several configs, as a person and as a program sees it, with no
//! side effects (no file, no mount), as root and as an unprivileged user.

mod common;

use std::time::Duration;

use common::*;

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    /// Run as nobody (uid 65534) through setpriv: no root, no capabilities.
    unprivileged: bool,
    mode: &'static str,
    user_namespace: bool,
    command0: &'static str,
    server: bool,
}

#[test]
fn dry_run_json_table() {
    let cases = [
        Case {
            name: "auto as root: direct, mount namespace only",
            args: &["--dry-run", "--format", "json"],
            unprivileged: false,
            mode: "direct",
            user_namespace: false,
            command0: "bazel",
            server: true,
        },
        Case {
            name: "forced bwrap, run a command",
            args: &[
                "--dry-run",
                "--format",
                "json",
                "--mode",
                "bwrap",
                "run",
                "--",
                "cat",
                "/work/src/MARKER",
            ],
            unprivileged: false,
            mode: "bwrap",
            user_namespace: false,
            command0: "cat",
            server: false,
        },
        Case {
            name: "auto unprivileged: direct in a user namespace",
            args: &["--dry-run", "--format", "json"],
            unprivileged: true,
            mode: "direct",
            user_namespace: true,
            command0: "bazel",
            server: true,
        },
        Case {
            name: "unprivileged, bwrap requested, flags after the subcommand",
            args: &[
                "run",
                "--mode",
                "bwrap",
                "--dry-run",
                "--format",
                "json",
                "--",
                "true",
            ],
            unprivileged: true,
            mode: "bwrap",
            user_namespace: false,
            command0: "true",
            server: false,
        },
    ];
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    fs.open_up();
    std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod rc");
    let before_tree = fs.snapshot();
    let before_mounts = relevant_mounts(fs.scratch());
    for c in cases {
        let mut cmd = if c.unprivileged {
            let mut s = std::process::Command::new("setpriv");
            s.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                supervisor_bin(),
            ]);
            s
        } else {
            std::process::Command::new(supervisor_bin())
        };
        cmd.args(c.args)
            .env(pod_env::USER_ID, USER)
            .env(pod_env::REPO_HASH, HASH)
            .env(pod_env::SESSION_ID, "s-1")
            .env(pod_env::FILESTORE_ROOT, fs.root())
            .env("SYSTEM_BAZELRC", &rc)
            .env("BAZEL_COMMAND_PORT", "9123");
        let (status, stdout, stderr) = run_to_end(cmd, Duration::from_secs(20));
        assert!(status.success(), "{}: {status:?}\n{stderr}", c.name);
        let v: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {stdout}", c.name));
        assert_eq!(v["mode"], c.mode, "{}: {v}", c.name);
        assert_eq!(v["user_namespace"], c.user_namespace, "{}", c.name);
        assert!(
            !v["reason"].as_str().unwrap_or("").is_empty(),
            "{}: a reason",
            c.name
        );
        assert_eq!(v["command"][0], c.command0, "{}", c.name);
        assert_eq!(v["cwd"], "/work/src");
        let src = std::fs::canonicalize(fs.src()).expect("canon");
        assert_eq!(
            v["mounts"][2]["source"],
            src.display().to_string(),
            "{}",
            c.name
        );
        assert_eq!(v["mounts"][2]["target"], "/work/src");
        assert_eq!(v["mounts"][3]["target"], "/work/out");
        assert_eq!(v["mounts"][1]["kind"], "tmpfs");
        // The checkout is read-only in the view; the output base is not.
        assert_eq!(v["mounts"][2]["flags"], serde_json::json!(["rec", "ro"]));
        assert_eq!(v["mounts"][3]["flags"], serde_json::json!(["rec"]));
        assert_eq!(
            v["read_only"],
            serde_json::json!(["/work/src"]),
            "{}",
            c.name
        );
        let bwrap: Vec<String> = serde_json::from_value(v["bwrap_argv"].clone()).expect("argv");
        assert!(
            bwrap
                .windows(3)
                .any(|w| w[0] == "--ro-bind" && w[2] == "/work/src"),
            "{}",
            c.name
        );
        assert!(
            bwrap
                .windows(3)
                .any(|w| w[0] == "--bind" && w[2] == "/work/out"),
            "{}",
            c.name
        );
        assert_eq!(
            bwrap.last().map(String::as_str),
            v["command"]
                .as_array()
                .and_then(|a| a.last())
                .and_then(|x| x.as_str())
        );
        assert_eq!(v["server"].is_object(), c.server, "{}", c.name);
        if c.server {
            assert_eq!(v["server"]["command_port"], 9123, "{}", c.name);
            assert!(
                v["command"]
                    .as_array()
                    .expect("cmd")
                    .iter()
                    .any(|a| a == "--command_port=9123"),
                "{}",
                c.name
            );
        }
        assert_eq!(v["host"]["cap_sys_admin"], !c.unprivileged, "{}", c.name);
    }
    assert_eq!(
        fs.snapshot(),
        before_tree,
        "dry runs must not create anything"
    );
    assert_eq!(
        relevant_mounts(fs.scratch()),
        before_mounts,
        "dry runs must not mount anything"
    );
}

#[test]
fn dry_run_human_shows_mounts_mode_and_bwrap() {
    let fs = Filestore::new();
    let mut cmd = fs.supervisor();
    cmd.args(["--dry-run", "run", "--", "cat", "/work/src/MARKER"]);
    let before = fs.snapshot();
    let (status, stdout, stderr) = run_to_end(cmd, Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
    let src = std::fs::canonicalize(fs.src()).expect("canon");
    for want in [
        "mode:     direct".to_owned(),
        "why:      auto: CAP_SYS_ADMIN".to_owned(),
        format!("{} -> /work/src  (rec,ro)", src.display()),
        "read-only: /work/src (the command writes only the output base)".to_owned(),
        "tmpfs -> /work".to_owned(),
        "command:  cat /work/src/MARKER".to_owned(),
        "bwrap:    ".to_owned(),
    ] {
        assert!(stdout.contains(&want), "missing {want:?} in:\n{stdout}");
    }
    assert_eq!(fs.snapshot(), before);
}

/// On a desktop: not root, no image files (the system rc is absent). The plan still prints,
/// exit 0, and the list of what the pod needs names the missing rc; nothing is created.
#[test]
fn dry_run_on_a_desktop_names_what_the_pod_would_need() {
    let fs = Filestore::new();
    fs.open_up();
    let missing_rc = fs.root().join("no-such-dir/system.bazelrc");
    let before = fs.snapshot();
    let before_mounts = relevant_mounts(fs.scratch());
    for format in ["human", "json"] {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(supervisor_bin())
            .args(["--dry-run", "--format", format])
            .env(pod_env::USER_ID, USER)
            .env(pod_env::REPO_HASH, HASH)
            .env(pod_env::FILESTORE_ROOT, fs.root())
            .env("SYSTEM_BAZELRC", &missing_rc);
        let (status, stdout, stderr) = run_to_end(cmd, Duration::from_secs(20));
        assert!(status.success(), "{format}: {status:?}\n{stderr}");
        let rc_need = format!("system bazelrc {}", missing_rc.display());
        if format == "human" {
            assert!(
                stdout.contains("mounts (in a new mount namespace"),
                "{stdout}"
            );
            assert!(
                stdout.contains(&format!("MISSING {rc_need}: ")),
                "the missing rc is named:\n{stdout}"
            );
        } else {
            let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
            let needs = v["needs"].as_array().expect("needs");
            let rc = needs
                .iter()
                .find(|n| n["what"] == rc_need.as_str())
                .unwrap_or_else(|| panic!("no rc need in {v}"));
            assert_eq!(rc["have"], false, "{rc}");
            assert_eq!(
                v["image"]["bazel_found"], true,
                "Debian's bazel is on PATH: {v}"
            );
        }
    }
    assert!(!missing_rc.exists() && !missing_rc.parent().expect("parent").exists());
    assert_eq!(fs.snapshot(), before, "a dry run creates nothing");
    assert_eq!(
        relevant_mounts(fs.scratch()),
        before_mounts,
        "a dry run mounts nothing"
    );
}

/// The server's settings from the environment: the heap from the container's memory limit
/// (a cgroup v2 layout under CGROUP_ROOT), the idle timeout, for a person and for a program.
#[test]
fn dry_run_prints_the_heap_and_idle_decisions() {
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    let cgroup = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        cgroup.path().join("memory.max"),
        format!("{}\n", 4u64 << 30),
    )
    .expect("limit");
    let unlimited = tempfile::tempdir().expect("tempdir");
    std::fs::write(unlimited.path().join("memory.max"), "max\n").expect("limit");
    let before = fs.snapshot();
    // (cgroup root, human line, JSON xmx)
    let cases = [
        (
            cgroup.path(),
            "heap:     -Xmx3072m: 75% of the container's memory limit of 4096 MiB",
            serde_json::json!(3072),
        ),
        (
            unlimited.path(),
            "heap:     no -Xmx: the JVM's default: no container memory limit",
            serde_json::Value::Null,
        ),
    ];
    for (root, line, xmx) in cases {
        for format in ["human", "json"] {
            let mut cmd = fs.supervisor();
            cmd.args(["--dry-run", "--format", format])
                .env("SYSTEM_BAZELRC", &rc)
                .env("CGROUP_ROOT", root)
                .env(pod_env::IDLE_TIMEOUT_SECS, "600");
            let (status, stdout, stderr) = run_to_end(cmd, Duration::from_secs(20));
            assert!(status.success(), "{format}: {status:?}\n{stderr}");
            if format == "human" {
                assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
                assert!(stdout.contains("idle timeout 600 s"), "{stdout}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
                assert_eq!(v["server"]["heap"]["xmx_mib"], xmx, "{v}");
                assert_eq!(v["server"]["idle_timeout_secs"], 600, "{v}");
                let has_flag = v["command"]
                    .as_array()
                    .expect("command")
                    .iter()
                    .any(|a| a.as_str().is_some_and(|a| a.contains("-Xmx")));
                assert_eq!(has_flag, !xmx.is_null(), "{v}");
            }
        }
    }
    assert_eq!(fs.snapshot(), before, "a dry run creates nothing");
}

/// The dry run says who Bazel runs as (the tree's owner), with which environment, and the
/// capabilities the supervisor itself needs, in both formats; it creates nothing (no home).
#[test]
fn dry_run_shows_the_owner_and_the_supervisors_capabilities() {
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    fs.own_by(54321);
    let home = std::path::Path::new("/tmp/dry-run-parent-does-not-exist");
    let before = fs.snapshot();
    for format in ["human", "json"] {
        let mut cmd = fs.supervisor();
        cmd.env("SYSTEM_BAZELRC", &rc)
            .env("BAZEL_HOME_PARENT", home)
            .args(["--dry-run", "--format", format]);
        let (status, stdout, stderr) = run_to_end(cmd, Duration::from_secs(20));
        assert!(status.success(), "{format}: {stderr}");
        if format == "human" {
            for want in [
                "run as:   uid 54321 gid 54321 (switched to before exec",
                "env:      HOME=/tmp/dry-run-parent-does-not-exist/jbazel-home-54321",
                "--output_user_root=/tmp/dry-run-parent-does-not-exist/jbazel-home-54321/bazel",
                "CAP_KILL",
                "CAP_SETPCAP",
            ] {
                assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
            }
        } else {
            let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
            assert_eq!(v["run_as"]["uid"], 54321, "{v}");
            assert_eq!(v["run_as"]["switch"], true, "{v}");
            let caps: Vec<&str> = v["capabilities"]
                .as_array()
                .expect("capabilities")
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            assert!(
                caps.contains(&"CAP_SYS_ADMIN") && caps.contains(&"CAP_SETUID"),
                "{caps:?}"
            );
            assert!(v["capabilities"][0]["why"]
                .as_str()
                .is_some_and(|w| !w.is_empty()));
        }
    }
    assert_eq!(fs.snapshot(), before, "a dry run creates nothing");
    assert!(!home.exists());
}
