//! The pivot, for real (root, CAP_SYS_ADMIN, Debian's bwrap): `supervisor run -- cat
//! /work/src/MARKER` sees the filestore's file, a write to /work/out lands in the host's out
//! dir, and the host's mount table is the same afterwards. Also exit-code passthrough.

mod common;

use std::time::Duration;

use common::*;

fn pivot_round_trip(mode: &str) {
    let fs = Filestore::new();
    let mounts_before = relevant_mounts(fs.scratch());
    let work_before = work_mounts();
    let work_listing_before = work_listing();

    let mut cat = fs.supervisor();
    cat.args(["--mode", mode, "run", "--", "cat", "/work/src/MARKER"]);
    let (status, stdout, stderr) = run_to_end(cat, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{mode}: {stderr}");
    assert_eq!(
        stdout, MARKER,
        "{mode}: cat must print the filestore's MARKER"
    );

    let mut write = fs.supervisor();
    write.args([
        "--mode",
        mode,
        "run",
        "--",
        "sh",
        "-c",
        "echo written-in-$0 > /work/out/from-pod && pwd && test ! -e /work/main",
        mode,
    ]);
    let (status, stdout, stderr) = run_to_end(write, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{mode}: {stderr}");
    assert_eq!(
        stdout.trim(),
        "/work/src",
        "{mode}: the command runs in /work/src"
    );
    let written = std::fs::read_to_string(fs.out().join("from-pod")).expect("written through");
    assert_eq!(written, format!("written-in-{mode}\n"));

    // The log says which mode ran and why.
    assert!(stderr.contains("pivot mode chosen"), "{stderr}");

    assert_eq!(
        relevant_mounts(fs.scratch()),
        mounts_before,
        "{mode}: host mount table changed"
    );
    assert_eq!(
        work_mounts(),
        work_before,
        "{mode}: a mount under /work leaked to the host"
    );
    // Other sessions may add to the host's /work meanwhile; what the pivot could leak is
    // its own mount points.
    for name in ["src", "out"] {
        assert_eq!(
            work_listing().iter().any(|n| n == name),
            work_listing_before.iter().any(|n| n == name),
            "{mode}: the host's /work must not be touched ({name})"
        );
    }
}

/// The checkout is read-only in the command's view, in both modes, whoever owns the tree
/// (root, whose command has no DAC_OVERRIDE but owns the files, or the tree's owner): every
/// kind of write under /work/src fails with EROFS, submounts of src included, and the host's
/// src is unchanged; /work/out stays writable.
fn the_checkout_is_read_only(mode: &str, owner: Option<u32>) {
    let fs = Filestore::new();
    let sub = fs.src().join("sub");
    std::fs::create_dir(&sub).expect("mkdir sub");
    if let Some(uid) = owner {
        fs.own_by(uid);
    }
    let before = tree_snapshot(&fs.src());
    let script = "for op in 'echo x > /work/src/new' 'mkdir /work/src/d' 'rm /work/src/MARKER' \
                  'touch /work/src/MARKER' 'chmod 600 /work/src/MARKER' 'ln -s x /work/src/l' \
                  'echo x > /work/src/sub/new'; do \
                    if err=$(sh -c \"$op\" 2>&1); then echo \"WROTE: $op\"; \
                    else echo \"refused: $err\"; fi; \
                  done; \
                  echo still-writable > /work/out/written && cat /work/out/written";
    // A submount of src (a tmpfs on src/sub), in a private mount namespace of its own so
    // the host's table never sees it: the pivot's recursive bind brings it into the view,
    // where it must be read-only too.
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o mode=0777 none {sub} && exec \"$@\"",
            sub = sub.display()
        ))
        .arg("sh");
    let sup = fs.run_sh(mode, script);
    cmd.arg(sup.get_program()).args(sup.get_args());
    cmd.env_clear()
        .envs(sup.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    let (status, stdout, stderr) = run_to_end(cmd, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{mode}: {stdout}\n{stderr}");
    assert!(!stdout.contains("WROTE"), "{mode} {owner:?}: {stdout}");
    let refusals: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("refused"))
        .collect();
    assert_eq!(refusals.len(), 7, "{mode} {owner:?}: {stdout}");
    for r in &refusals {
        assert!(
            r.ends_with("Read-only file system"),
            "{mode} {owner:?}: not EROFS: {r}"
        );
    }
    assert!(stdout.ends_with("still-writable\n"), "{mode}: {stdout}");
    assert_eq!(
        std::fs::read_to_string(fs.out().join("written")).expect("written through"),
        "still-writable\n"
    );
    assert_eq!(
        tree_snapshot(&fs.src()),
        before,
        "{mode}: the host's src changed"
    );
}

#[test]
fn the_checkout_is_read_only_direct() {
    the_checkout_is_read_only("direct", None);
    the_checkout_is_read_only("direct", Some(OWNER));
}

#[test]
fn the_checkout_is_read_only_bwrap() {
    the_checkout_is_read_only("bwrap", None);
    the_checkout_is_read_only("bwrap", Some(OWNER));
}

#[test]
fn direct_mode_round_trip() {
    pivot_round_trip("direct");
}

#[test]
fn bwrap_mode_round_trip() {
    pivot_round_trip("bwrap");
}

#[test]
fn direct_mode_logs_verification() {
    let fs = Filestore::new();
    let mut c = fs.supervisor();
    c.args([
        "--mode",
        "direct",
        "run",
        "--",
        "grep",
        " /work/src ",
        "/proc/self/mountinfo",
    ]);
    let (status, stdout, stderr) = run_to_end(c, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{stderr}");
    let src = std::fs::canonicalize(fs.src()).expect("canon");
    assert!(
        stdout.contains(&src.display().to_string()),
        "the child's mount table binds the filestore src: {stdout}"
    );
    assert!(
        stderr.contains("verified in /proc/self/mountinfo"),
        "{stderr}"
    );
}

#[test]
fn user_namespace_mode_as_unprivileged_user() {
    let fs = Filestore::new();
    fs.open_up();
    let mounts_before = relevant_mounts(fs.scratch());
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        supervisor_bin(),
    ])
    .args([
        "--mode",
        "direct",
        "run",
        "--",
        "sh",
        "-c",
        "cat /work/src/MARKER; id -u; echo u > /work/out/userns; \
         touch /work/src/userns 2>&1 | sed 's/.*: //'",
    ])
    .env(pod_env::USER_ID, USER)
    .env(pod_env::REPO_HASH, HASH)
    .env(pod_env::FILESTORE_ROOT, fs.root());
    let (status, stdout, stderr) = run_to_end(c, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout,
        format!("{MARKER}0\nRead-only file system\n"),
        "uid 65534 is root inside its namespace, and its checkout is read-only there too"
    );
    assert!(stderr.contains("user_namespace=true"), "{stderr}");
    let meta = std::fs::metadata(fs.out().join("userns")).expect("written");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        65534,
        "files belong to the real uid"
    );
    assert_eq!(relevant_mounts(fs.scratch()), mounts_before);
}

#[test]
fn exit_codes_pass_through() {
    let fs = Filestore::new();
    // (mode, shell snippet, expected exit code)
    let cases = [
        ("direct", "exit 7", 7),
        ("bwrap", "exit 7", 7),
        ("direct", "kill -TERM $$", 143),
        ("direct", "kill -KILL $$", 137),
        ("bwrap", "kill -TERM $$", 143),
    ];
    for (mode, snippet, want) in cases {
        let c = fs.run_sh(mode, snippet);
        let (status, _, stderr) = run_to_end(c, Duration::from_secs(30));
        assert_eq!(status.code(), Some(want), "{mode} {snippet:?}: {stderr}");
    }
    let mut missing = fs.supervisor();
    missing.args(["run", "--", "/nonexistent/cmd"]);
    let (status, _, stderr) = run_to_end(missing, Duration::from_secs(30));
    assert_eq!(status.code(), Some(127), "{stderr}");
    assert!(stderr.contains("/nonexistent/cmd"), "{stderr}");
}

/// What a hostile build sees from inside the view, in both modes: the filestore root is
/// empty (another user's tree next to ours is gone), no capability is left, and mount,
/// unshare and a way back through /proc/1/root all fail.
fn hostile_build_is_contained(mode: &str, owner: Option<u32>) {
    let fs = Filestore::new();
    if let Some(uid) = owner {
        fs.own_by(uid);
    }
    let bob = fs.root().join("bob").join(HASH).join("src");
    std::fs::create_dir_all(&bob).expect("bob's tree");
    std::fs::write(bob.join("secret"), "bob's").expect("bob's file");
    let root = fs.root();
    let script = format!(
        "echo caps=$(grep CapEff /proc/self/status | tr -s ' \\t' ' ' | cut -d' ' -f2); \
         echo root=$(ls -A {root} | wc -l); \
         cat {root}/bob/{HASH}/src/secret 2>/dev/null && echo LEAK-read; \
         echo x > {root}/planted 2>/dev/null && echo LEAK-write; \
         mount -t tmpfs none /work/out 2>/dev/null && echo LEAK-mount; \
         umount {root} 2>/dev/null && echo LEAK-umount; \
         unshare -m true 2>/dev/null && echo LEAK-unshare; \
         ls /proc/1/root{root}/bob 2>/dev/null && echo LEAK-proc1; \
         cat /work/src/MARKER",
        root = root.display()
    );
    let cmd = fs.run_sh(mode, &script);
    let (status, stdout, stderr) = run_to_end(cmd, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{mode}: {stderr}");
    assert!(stdout.contains("caps=0000000000000000"), "{mode}: {stdout}");
    assert!(
        stdout.contains("root=0"),
        "{mode}: R must look empty: {stdout}"
    );
    assert!(!stdout.contains("LEAK"), "{mode}: {stdout}");
    assert!(
        stdout.ends_with(MARKER),
        "{mode}: its own tree stays: {stdout}"
    );
    assert!(!fs.root().join("planted").exists());
}

#[test]
fn a_hostile_build_sees_only_its_tree_and_has_no_capabilities_direct() {
    hostile_build_is_contained("direct", None);
}

#[test]
fn a_hostile_build_of_a_user_owned_tree_sees_only_its_tree_direct() {
    hostile_build_is_contained("direct", Some(OWNER));
}

#[test]
fn a_hostile_build_of_a_user_owned_tree_sees_only_its_tree_bwrap() {
    hostile_build_is_contained("bwrap", Some(OWNER));
}

#[test]
fn a_hostile_build_sees_only_its_tree_and_has_no_capabilities_bwrap() {
    hostile_build_is_contained("bwrap", None);
}

/// The uid a test tree is given: one with no passwd entry in the image.
const OWNER: u32 = 54321;

/// A tree owned by a non-root uid: the hostile command runs as that uid and gid (real,
/// effective, saved and filesystem ids), with no capability in any set and no other group;
/// what it creates belongs to the owner, and it cannot write a root-owned file of the image
/// (here, one beside the filestore: visible in the view, not part of the user's tree).
fn hostile_build_runs_as_the_owner(mode: &str) {
    use std::os::unix::fs::MetadataExt;
    let fs = Filestore::new();
    let root_file = fs.scratch().join("image-file");
    std::fs::write(&root_file, "root's\n").expect("root's file");
    let root_dir = fs.scratch().join("image-dir");
    std::fs::create_dir(&root_dir).expect("root's dir");
    fs.own_by(OWNER);
    let script = format!(
        "grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|CapBnd):' /proc/self/status; \
         echo made > /work/out/made-by-build && mkdir /work/out/dir-by-build; \
         echo x >> {f} 2>/dev/null && echo LEAK-write-root-file; \
         touch {d}/planted 2>/dev/null && echo LEAK-create-in-root-dir; \
         chmod 777 {f} 2>/dev/null && echo LEAK-chmod; \
         cat /work/src/MARKER",
        f = root_file.display(),
        d = root_dir.display()
    );
    let cmd = fs.run_sh(mode, &script);
    let (status, stdout, stderr) = run_to_end(cmd, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{mode}: {stdout}\n{stderr}");
    let lines: Vec<String> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for want in [
        format!("Uid: {OWNER} {OWNER} {OWNER} {OWNER}"),
        format!("Gid: {OWNER} {OWNER} {OWNER} {OWNER}"),
        format!("Groups: {OWNER}"),
        "CapEff: 0000000000000000".to_owned(),
        "CapPrm: 0000000000000000".to_owned(),
        "CapBnd: 0000000000000000".to_owned(),
    ] {
        assert!(
            lines.contains(&want),
            "{mode}: {want:?} missing in {lines:?}"
        );
    }
    assert!(!stdout.contains("LEAK"), "{mode}: {stdout}");
    assert!(stdout.ends_with(MARKER), "{mode}: {stdout}");
    for made in ["made-by-build", "dir-by-build"] {
        let m = std::fs::symlink_metadata(fs.out().join(made)).expect("made");
        assert_eq!((m.uid(), m.gid()), (OWNER, OWNER), "{mode}: {made}");
    }
    assert_eq!(
        std::fs::read_to_string(&root_file).expect("read"),
        "root's\n"
    );
    assert!(!root_dir.join("planted").exists());
    assert!(
        stderr.contains("the command runs as") && stderr.contains("switch=true"),
        "{mode}: {stderr}"
    );
}

#[test]
fn a_hostile_build_runs_as_the_tree_owner_direct() {
    hostile_build_runs_as_the_owner("direct");
}

#[test]
fn a_hostile_build_runs_as_the_tree_owner_bwrap() {
    hostile_build_runs_as_the_owner("bwrap");
}

/// A root-owned tree keeps uid 0, and still no capability in any set (bwrap mode too: its
/// helper empties the bounding set that bwrap alone leaves full).
#[test]
fn a_root_owned_tree_runs_as_root_with_no_capability() {
    for mode in ["direct", "bwrap"] {
        let fs = Filestore::new();
        let cmd = fs.run_sh(
            mode,
            "grep -E '^(Uid|CapEff|CapPrm|CapBnd):' /proc/self/status",
        );
        let (status, stdout, stderr) = run_to_end(cmd, Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{mode}: {stderr}");
        let lines: Vec<String> = stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "Uid: 0 0 0 0",
                "CapPrm: 0000000000000000",
                "CapEff: 0000000000000000",
                "CapBnd: 0000000000000000"
            ],
            "{mode}"
        );
    }
}

/// The supervisor (root) forwards SIGTERM to a command that runs as the owner, another uid:
/// it needs CAP_KILL for that. The command's trap exits 42; a command the signal never
/// reached ends by itself after 30 s with 0.
#[test]
fn sigterm_reaches_a_command_of_the_tree_owner() {
    for mode in ["direct", "bwrap"] {
        let fs = Filestore::new();
        fs.own_by(OWNER);
        let ready = fs.out().join("ready");
        let cmd = fs.run_sh(
            mode,
            "trap 'exit 42' TERM; echo up > /work/out/ready; \
             for i in $(seq 300); do sleep 0.1; done",
        );
        let log = fs.scratch().join("run.log");
        let mut sup = Running::start(cmd, log, fs.out(), 0, 0);
        assert!(
            wait_until(Duration::from_secs(20), || ready.exists()),
            "{mode}: the command did not start:\n{}",
            sup.logs()
        );
        signal(sup.pid(), nix::sys::signal::Signal::SIGTERM);
        let status = wait_child(&mut sup.child, Duration::from_secs(40))
            .unwrap_or_else(|| panic!("{mode}: no exit:\n{}", sup.logs()));
        assert_eq!(status.code(), Some(42), "{mode}: {}", sup.logs());
        assert!(!sup.logs().contains("forwarding failed"), "{}", sup.logs());
    }
}
