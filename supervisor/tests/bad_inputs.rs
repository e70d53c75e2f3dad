//! Refused inputs: a clear error naming the problem, exit code 2, and nothing created or
//! mounted. (A NUL byte cannot travel through execve's env or argv at all; the validation of
//! names with NUL is covered by `config::tests::identity_table`.)

mod common;

use std::os::unix::fs::symlink;
use std::time::Duration;

use common::*;

struct Case {
    name: &'static str,
    user: String,
    hash: String,
    /// Changes the filestore before the run.
    setup: fn(&Filestore),
    /// A fragment the error must contain.
    error: &'static str,
}

fn noop(_: &Filestore) {}

#[test]
fn bad_inputs_are_refused_without_side_effects() {
    let cases = vec![
        Case {
            name: "path traversal in USER_ID",
            user: "../../etc".into(),
            hash: HASH.into(),
            setup: noop,
            error: "invalid user_id",
        },
        Case {
            name: "slash in USER_ID",
            user: "alice/0123456789abcdef0123456789abcdef".into(),
            hash: HASH.into(),
            setup: noop,
            error: "invalid user_id",
        },
        Case {
            name: "path traversal in REPO_HASH",
            user: USER.into(),
            hash: "../../../../../../../../etc/pass".into(),
            setup: noop,
            error: "invalid repo_hash",
        },
        Case {
            name: "upper-case REPO_HASH",
            user: USER.into(),
            hash: HASH.to_uppercase(),
            setup: noop,
            error: "invalid repo_hash",
        },
        Case {
            name: "oversize USER_ID",
            user: "a".repeat(100_000),
            hash: HASH.into(),
            setup: noop,
            error: "invalid user_id: 100000 bytes",
        },
        Case {
            name: "oversize REPO_HASH",
            user: USER.into(),
            hash: "0".repeat(100_000),
            setup: noop,
            error: "invalid repo_hash",
        },
        Case {
            name: "src symlinked to /etc",
            user: USER.into(),
            hash: HASH.into(),
            setup: |fs| {
                std::fs::remove_dir_all(fs.src()).expect("rm src");
                symlink("/etc", fs.src()).expect("symlink");
            },
            error: "outside",
        },
        Case {
            name: "out symlinked into another user's tree",
            user: USER.into(),
            hash: HASH.into(),
            setup: |fs| {
                let bob = fs.root().join("bob").join(HASH).join("out");
                std::fs::create_dir_all(&bob).expect("mkdir bob");
                std::fs::remove_dir_all(fs.out()).expect("rm out");
                symlink(&bob, fs.out()).expect("symlink");
            },
            error: "outside",
        },
        Case {
            name: "user dir symlinked out of the root",
            user: USER.into(),
            hash: HASH.into(),
            setup: |fs| {
                let elsewhere = fs.root().join("elsewhere");
                std::fs::create_dir_all(elsewhere.join(HASH).join("src")).expect("mkdir");
                std::fs::create_dir_all(elsewhere.join(HASH).join("out")).expect("mkdir");
                std::fs::remove_dir_all(fs.root().join(USER)).expect("rm user");
                symlink(&elsewhere, fs.root().join(USER)).expect("symlink");
            },
            error: "outside",
        },
        Case {
            name: "missing src",
            user: USER.into(),
            hash: HASH.into(),
            setup: |fs| std::fs::remove_dir_all(fs.src()).expect("rm src"),
            error: "src dir",
        },
        Case {
            name: "missing out",
            user: USER.into(),
            hash: HASH.into(),
            setup: |fs| std::fs::remove_dir_all(fs.out()).expect("rm out"),
            error: "does not exist",
        },
        Case {
            name: "missing repository",
            user: "nobody-here".into(),
            hash: HASH.into(),
            setup: noop,
            error: "does not exist",
        },
    ];
    for c in cases {
        let fs = Filestore::new();
        (c.setup)(&fs);
        let tree_before = fs.snapshot();
        let mounts_before = relevant_mounts(fs.scratch());
        let work_before = work_mounts();
        for args in [
            &["run", "--", "cat", "/work/src/MARKER"][..],
            &["--mode", "bwrap", "run", "--", "true"][..],
            &[][..],
        ] {
            let mut cmd = fs.supervisor();
            cmd.env(pod_env::USER_ID, &c.user)
                .env(pod_env::REPO_HASH, &c.hash)
                .env("HEALTH_ADDR", format!("127.0.0.1:{}", free_port()))
                .args(args);
            let (status, stdout, stderr) = run_to_end(cmd, Duration::from_secs(20));
            assert_eq!(status.code(), Some(2), "{} {args:?}: {stderr}", c.name);
            assert!(
                stderr.contains("supervisor: error:") && stderr.contains(c.error),
                "{} {args:?}: error should contain {:?}, got:\n{stderr}",
                c.name,
                c.error
            );
            assert!(
                stderr.len() < 2000,
                "{}: the error must not echo huge input",
                c.name
            );
            assert!(!stdout.contains(MARKER.trim()), "{}: nothing ran", c.name);
        }
        assert_eq!(
            fs.snapshot(),
            tree_before,
            "{}: nothing may be created",
            c.name
        );
        assert_eq!(
            relevant_mounts(fs.scratch()),
            mounts_before,
            "{}: nothing mounted",
            c.name
        );
        assert_eq!(
            work_mounts(),
            work_before,
            "{}: nothing mounted on /work",
            c.name
        );
    }
}

#[test]
fn missing_root_and_missing_system_rc() {
    let fs = Filestore::new();
    let mut c = fs.supervisor();
    c.env(pod_env::FILESTORE_ROOT, "/nonexistent/jbazel-filestore")
        .args(["run", "--", "true"]);
    let (status, _, stderr) = run_to_end(c, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/jbazel-filestore"), "{stderr}");
    assert!(!std::path::Path::new("/nonexistent").exists());

    // The Bazel job needs the system rc; it is read before anything else happens.
    let before = fs.snapshot();
    let mut c = fs.supervisor();
    c.env("SYSTEM_BAZELRC", fs.root().join("no-such.bazelrc"))
        .env("HEALTH_ADDR", format!("127.0.0.1:{}", free_port()));
    let (status, _, stderr) = run_to_end(c, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("system bazelrc"), "{stderr}");
    assert_eq!(fs.snapshot(), before, "no jbazel/ dir published");
}

#[test]
fn missing_user_id_is_named() {
    let fs = Filestore::new();
    let mut c = fs.supervisor();
    c.env_remove(pod_env::USER_ID).args(["run", "--", "true"]);
    let (status, _, stderr) = run_to_end(c, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("USER_ID is not set"), "{stderr}");
}

#[test]
fn invalid_idle_timeout_is_refused_before_anything_happens() {
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    let before = fs.snapshot();
    for bad in ["0", "-1", "3h", "99999999999"] {
        let mut c = fs.supervisor();
        c.env(pod_env::IDLE_TIMEOUT_SECS, bad)
            .env("SYSTEM_BAZELRC", &rc)
            .env("HEALTH_ADDR", format!("127.0.0.1:{}", free_port()));
        let (status, _, stderr) = run_to_end(c, Duration::from_secs(20));
        assert_eq!(status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains(&format!("IDLE_TIMEOUT_SECS {bad:?} must be a whole number")),
            "{bad}: {stderr}"
        );
    }
    assert_eq!(fs.snapshot(), before, "no lock, no jbazel/ dir, no server");
}
