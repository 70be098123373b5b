//! The image's contract, proven without an image (no container runtime builds or pulls one on
//! the machines these tests run on): the binary built exactly as the Dockerfile builds it
//! (`deploy/image/build.sh`), run as the image's user in a root filesystem holding only what the
//! image holds (`deploy/image/rootfs.sh`, the one script the Dockerfile's final stage copies
//! from) plus what a container runtime and the Job mount (`/etc/hosts`, the tenants file, the
//! pgpass copy, the reports volume), against the harness's PostgreSQL by 127.0.0.1 and by a
//! host name from that root's `/etc/hosts`, as a two-pod Indexed Job.
//!
//! The binary is `ORGCTL_IMAGE_BINARY`, or where `deploy/image/build.sh` puts it for this
//! machine's architecture. A missing or stale one is a failure, never a skip: `.ci/run` builds it
//! first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{server, TestDb, PASSWORD};

/// The image's user and group (the Dockerfile's USER, job.yaml's runAsUser).
const IMAGE_USER: &str = "65532:65532";
/// Where the image's entrypoint is.
const ENTRYPOINT: &str = "/usr/local/bin/orgctl";
/// A name only the root's /etc/hosts knows.
const DB_HOST: &str = "tenant-db.orgctl-image.test";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    match std::fs::read_to_string(p) {
        Ok(s) => s,
        Err(e) => panic!("read {}: {e}", p.display()),
    }
}

/// The newest modification time among the files the binary is built from.
fn newest_source() -> std::time::SystemTime {
    fn walk(p: &Path, newest: &mut std::time::SystemTime) {
        let Ok(md) = std::fs::metadata(p) else {
            return;
        };
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    walk(&e.path(), newest);
                }
            }
        } else if let Ok(t) = md.modified() {
            *newest = (*newest).max(t);
        }
    }
    let mut newest = std::time::UNIX_EPOCH;
    for rel in ["src", "migrations", "Cargo.toml", "Cargo.lock", "build.rs"] {
        walk(&repo().join(rel), &mut newest);
    }
    newest
}

/// The binary built as the Dockerfile builds it, fresh: `ORGCTL_IMAGE_BINARY` when set (a
/// build made elsewhere, checked to be newer than the sources), else `deploy/image/build.sh`'s
/// own build, run here (once per test process) when it is missing or older than the sources —
/// so `cargo test` alone is the whole set-up. Cargo rebuilds only what changed.
fn image_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let how = "the image's binary is built by `deploy/image/build.sh` (as the Dockerfile does): it \
               needs the musl target and linker (`rustup target add $(uname -m)-unknown-linux-musl`, \
               `apt-get install musl-tools`; .ci/run installs both)";
    let fresh = |bin: &Path| {
        std::fs::metadata(bin)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= newest_source())
    };
    if let Some(p) = std::env::var_os("ORGCTL_IMAGE_BINARY") {
        let bin = PathBuf::from(p);
        assert!(
            fresh(&bin),
            "ORGCTL_IMAGE_BINARY={} is missing or older than the sources: {how}",
            bin.display()
        );
        return bin;
    }
    let built = BUILT.get_or_init(|| {
        let bin = repo().join(format!(
            "target/{}-unknown-linux-musl/release/orgctl",
            std::env::consts::ARCH
        ));
        if fresh(&bin) {
            return Ok(bin);
        }
        eprintln!("image test: building the image's binary (deploy/image/build.sh) …");
        let out = std::process::Command::new("sh")
            .arg(repo().join("deploy/image/build.sh"))
            .current_dir(repo())
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("could not run deploy/image/build.sh: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            return Err(format!(
                "deploy/image/build.sh failed ({}):\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        let rel = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(repo().join(rel))
    });
    match built {
        Ok(bin) => bin.clone(),
        Err(e) => panic!("{e}\n{how}"),
    }
}

/// A scratch directory that goes away with the test.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(p: &Path, s: &str) {
    if let Some(d) = p.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    if let Err(e) = std::fs::write(p, s) {
        panic!("write {}: {e}", p.display());
    }
}

/// Hand a path to the image's user (as the Job's volumes are: fsGroup, the init container's copy).
fn give_to_image_user(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)) {
        panic!("chmod {}: {e}", p.display());
    }
    if orgctl::testing::sys::is_root() {
        if let Err(e) = std::os::unix::fs::chown(p, Some(65532), Some(65532)) {
            panic!("chown {}: {e}", p.display());
        }
    }
}

/// An image root for `binary`: `deploy/image/rootfs.sh`, then what the runtime and the Job add.
fn image_root(tag: &str, binary: &Path) -> Dir {
    let dir = Dir(std::env::temp_dir().join(format!("orgctl-image-{}-{tag}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let out = Command::new("sh")
        .arg(repo().join("deploy/image/rootfs.sh"))
        .arg(&dir.0)
        .arg(binary)
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "deploy/image/rootfs.sh failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("could not run deploy/image/rootfs.sh: {e}"),
    }
    // The root is traversable by the image's user (a runtime's root is).
    give_to_image_user(&dir.0, 0o755);
    if orgctl::testing::sys::is_root() {
        let _ = std::os::unix::fs::chown(&dir.0, Some(0), Some(0));
    }
    // The runtime's /etc/hosts (Kubernetes writes the pod's own; here the database's name).
    write(
        &dir.0.join("etc/hosts"),
        &format!("127.0.0.1\tlocalhost\n127.0.0.1\t{DB_HOST}\n"),
    );
    dir
}

/// A host program by name (the command's own environment is cleared, PATH included).
fn host_program(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("the empty root cannot be made on this machine: no `{name}` program")
        })
}

/// The entrypoint in `root`, as the image's user, with `env` only (a container's environment).
fn run_in_root(root: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = if orgctl::testing::sys::is_root() {
        let mut c = Command::new(host_program("chroot"));
        c.arg(format!("--userspec={IMAGE_USER}")).arg(root);
        c
    } else {
        // Without root: a user namespace where we are root, then chroot (as uid 0 in it).
        let mut c = Command::new(host_program("unshare"));
        c.args(["--user", "--map-root-user", "chroot"]).arg(root);
        c
    };
    cmd.arg(ENTRYPOINT)
        .args(args)
        .env_clear()
        .env("HOME", "/home/nonroot")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.output() {
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            // chroot/unshare say so themselves when the root cannot be entered (exit 125-127).
            assert!(
                !(stderr.contains("chroot: cannot change root")
                    || stderr.contains("unshare: unshare failed")
                    || stderr.contains("chroot: cannot set")),
                "the empty root cannot be made on this machine (chroot needs root, or \
                 unprivileged user namespaces): {stderr}"
            );
            o
        }
        Err(e) => panic!(
            "the empty root cannot be made on this machine: could not run chroot/unshare: {e}"
        ),
    }
}

/// The Dockerfile's final stage is `scratch` plus rootfs.sh's output, as the image's user, with
/// the entrypoint this test runs: what the test's root holds is what the image holds.
#[test]
fn the_dockerfile_image_is_exactly_rootfs_sh_on_scratch() {
    let df = read(&repo().join("Dockerfile"));
    let lines: Vec<&str> = df
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "a multi-stage Dockerfile: {froms:?}");
    let build = &lines[froms[0]..froms[froms.len() - 1]];
    let last = &lines[froms[froms.len() - 1]..];
    assert_eq!(last[0], "FROM scratch", "the final stage is scratch");
    let copies: Vec<&&str> = last.iter().filter(|l| l.starts_with("COPY ")).collect();
    assert_eq!(
        copies,
        [&"COPY --from=build /rootfs/ /"],
        "the image holds rootfs.sh's output and nothing else (add files in deploy/image/rootfs.sh, \
         where the empty-root test sees them)"
    );
    assert!(
        last.iter().any(|l| *l == format!("USER {IMAGE_USER}")),
        "USER {IMAGE_USER}"
    );
    assert!(
        last.iter()
            .any(|l| *l == format!("ENTRYPOINT [\"{ENTRYPOINT}\"]")),
        "ENTRYPOINT {ENTRYPOINT}"
    );
    // A build without --build-arg labels the version it builds.
    assert!(
        last.iter()
            .any(|l| *l == format!("ARG ORGCTL_VERSION={}", env!("CARGO_PKG_VERSION"))),
        "the Dockerfile's default ORGCTL_VERSION is Cargo.toml's version"
    );
    for label in ["source", "version", "revision"] {
        assert!(
            df.contains(&format!("org.opencontainers.image.{label}=")),
            "OCI label {label}"
        );
    }
    let build_text = build.join("\n");
    assert!(
        build_text.contains("deploy/image/build.sh")
            && build_text.contains("deploy/image/rootfs.sh /rootfs"),
        "the build stage builds with deploy/image/build.sh and lays out /rootfs with rootfs.sh"
    );
    let script = read(&repo().join("deploy/image/build.sh"));
    assert!(
        script.contains("cargo build --release --locked --target \"$target\"")
            && script.contains("-unknown-linux-musl"),
        "build.sh: a locked static musl release build"
    );
    // The Job runs as the image's user.
    let job = read(&repo().join("deploy/kubernetes/job.yaml"));
    for want in [
        "runAsUser: 65532",
        "runAsGroup: 65532",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "mountPath: /tmp",
        // The pgpass file the run below uses: the init container's 0600 copy.
        "value: /run/orgctl/pgpass",
        "chmod 0600 /run/orgctl/pgpass",
        "mountPath: /reports",
    ] {
        assert!(job.contains(want), "job.yaml: {want}");
    }
}

/// A binary that needs what the image does not carry (the test build links glibc dynamically:
/// its loader and libc are not in the root) does not run there: the root really is empty.
#[test]
fn a_binary_needing_what_the_image_lacks_does_not_run_in_its_root() {
    let root = image_root("glibc", Path::new(env!("CARGO_BIN_EXE_orgctl")));
    let o = run_in_root(&root.0, &["--version"], &[]);
    // 127: chroot could not execute it (its loader is not there), not an orgctl failure.
    assert_eq!(
        o.status.code(),
        Some(127),
        "a dynamically linked binary in the image's root: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn applied(report: &str) -> Vec<(String, String)> {
    report
        .lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(v) => v,
            Err(e) => panic!("report line is not JSON ({e}): {l}"),
        })
        .filter(|v| v["kind"] == "tenant")
        .map(|v| {
            (
                v["tenant"].as_str().unwrap_or("?").to_string(),
                v["status"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

#[test]
fn the_image_root_runs_a_sharded_backfill_by_address_and_by_host_name() {
    let bin = image_binary();
    let root = image_root("run", &bin);
    let r = &root.0;

    let o = run_in_root(r, &["--version"], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "--version in the image's root: {}{}",
        out,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.starts_with(&format!("orgctl {}\n", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    // The man pages and completions are in the image.
    for p in [
        "usr/local/share/man/man1/orgctl.1",
        "usr/local/share/man/man1/orgctl-backfill-run.1",
        "usr/local/share/orgctl/completions/orgctl.bash",
        "usr/local/share/orgctl/completions/_orgctl",
        "usr/local/share/orgctl/completions/orgctl.fish",
    ] {
        assert!(r.join(p).is_file(), "{p} in the image");
    }

    // Four tenants: two by address, two by the name only the root's /etc/hosts resolves.
    let dbs: Vec<TestDb> = (0..4).map(|_| TestDb::sample()).collect();
    let port = server().port;
    let tenants: String = dbs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let host = if i % 2 == 0 { "127.0.0.1" } else { DB_HOST };
            format!(
                "img-{i} postgres://postgres@{host}:{port}/{} org_id=image-org-{i}\n",
                d.name
            )
        })
        .collect();
    // The ConfigMap, and the pgpass copy the Job's init container makes (0600, the user's own).
    write(&r.join("config/tenants.txt"), &tenants);
    let pgpass = r.join("run/orgctl/pgpass");
    write(
        &pgpass,
        &format!(
            "127.0.0.1:{port}:*:postgres:{PASSWORD}\n{DB_HOST}:{port}:*:postgres:{PASSWORD}\n"
        ),
    );
    give_to_image_user(&pgpass, 0o600);
    // The reports emptyDir, writable by the pod's group (fsGroup).
    let reports = r.join("reports");
    if let Err(e) = std::fs::create_dir_all(&reports) {
        panic!("{e}");
    }
    give_to_image_user(&reports, 0o770);

    // The Secret's own file, as the kubelet mounts it for a non-root pod (root-owned, 0440 for
    // fsGroup): sqlx ignores a group-readable pgpass, so without the init container's copy
    // there is no password.
    if orgctl::testing::sys::is_root() {
        let mounted = r.join("secrets/pgpass");
        write(&mounted, &read(&pgpass));
        give_to_image_user(&mounted, 0o440);
        let _ = std::os::unix::fs::chown(&mounted, Some(0), Some(65532));
        let o = run_in_root(
            r,
            &["status"],
            &[
                ("PGPASSFILE", "/secrets/pgpass"),
                (
                    "DATABASE_URL",
                    &format!("postgres://postgres@127.0.0.1:{port}/{}", dbs[0].name),
                ),
            ],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("authentication failed"), "{stderr}");
    }

    // Two pods of an Indexed Job with --shards 2, as job.yaml runs them: one writes its report
    // into the image's own /tmp (as a container without volumes would), one into the Job's
    // reports volume.
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..2 {
        let report = if i == 0 {
            "/tmp/report-0.jsonl".to_string()
        } else {
            format!("/reports/report-{i}.jsonl")
        };
        let index = i.to_string();
        let o = run_in_root(
            r,
            &[
                "backfill",
                "run",
                "--tenants",
                "/config/tenants.txt",
                "--shards",
                "2",
                "--run-id",
                "image-run-1",
                "--model",
                "m",
                "--concurrency",
                "2",
                "--yes",
                "--report",
                &report,
            ],
            &[
                ("PGPASSFILE", "/run/orgctl/pgpass"),
                ("JOB_COMPLETION_INDEX", &index),
            ],
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(0),
            "pod {i} in the image's root:\n{stdout}\n{stderr}"
        );
        assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
        for (t, s) in applied(&read(&r.join(report.trim_start_matches('/')))) {
            seen.entry(t).or_default().push(s);
        }
    }
    let want: BTreeMap<String, Vec<String>> = (0..4)
        .map(|i| (format!("img-{i}"), vec!["applied".to_string()]))
        .collect();
    assert_eq!(
        seen, want,
        "every tenant applied once, by address and by host name"
    );
    for d in &dbs {
        assert_eq!(
            d.scalar("SELECT status FROM orgctl.backfill_runs WHERE run_id = 'image-run-1'"),
            "applied",
            "{}",
            d.name
        );
        // The OS user comes from the image's /etc/passwd (USER is not set in a container).
        if orgctl::testing::sys::is_root() {
            assert_eq!(
                d.scalar("SELECT string_agg(DISTINCT os_user, ',') FROM orgctl.audit_log"),
                "nonroot",
                "{}",
                d.name
            );
        }
    }
}
