//! deploy/kubernetes/: the manifests say what the code relies on, and a simulated Indexed Job
//! (N processes with JOB_COMPLETION_INDEX 0..N-1) applies every tenant exactly once, over
//! tenants spread across three local servers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::harness::{server, Cmd, PrivateServer, TestDb, PASSWORD};

/// The budget one tenant's apply must fit in (README "Kubernetes"): the pod's grace period
/// must be longer, so SIGTERM lets in-flight tenants finish.
const ONE_TENANT_APPLY_BUDGET_SECS: u64 = 300;

fn manifest(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(name);
    match std::fs::read_to_string(&p) {
        Ok(s) => s,
        Err(e) => panic!("read {}: {e}", p.display()),
    }
}

/// The value of the first `key: value` line (comments and quotes stripped).
fn value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_string())
}

/// The container's args (the `- x` items under `args:`), unquoted.
fn args(job: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in job.lines() {
        let t = l.trim();
        if t == "args:" {
            inside = true;
            continue;
        }
        if inside {
            match t.strip_prefix("- ") {
                Some(v) if !v.contains(':') || v.starts_with('/') => {
                    out.push(v.trim_matches('"').to_string())
                }
                _ => break,
            }
        }
    }
    out
}

#[test]
fn the_job_manifest_is_indexed_with_as_many_pods_as_shards_and_no_password() {
    let job = manifest("job.yaml");
    assert_eq!(value(&job, "kind").as_deref(), Some("Job"));
    assert_eq!(
        value(&job, "completionMode").as_deref(),
        Some("Indexed"),
        "orgctl takes its shard from JOB_COMPLETION_INDEX, which only Indexed Jobs set"
    );
    let a = args(&job);
    assert_eq!(&a[..2], ["backfill", "run"], "{a:?}");
    let after = |flag: &str| {
        a.iter()
            .position(|x| x == flag)
            .and_then(|i| a.get(i + 1))
            .cloned()
    };
    let shards = after("--shards").unwrap_or_else(|| panic!("no --shards in {a:?}"));
    assert_eq!(value(&job, "completions"), Some(shards.clone()));
    assert_eq!(value(&job, "parallelism"), Some(shards.clone()));
    assert!(
        a.iter().any(|x| x == "--yes"),
        "a pod has no terminal to confirm on"
    );
    assert!(
        after("--run-id").is_some(),
        "a retried pod must resume the same run"
    );
    assert_eq!(after("--tenants").as_deref(), Some("/config/tenants.txt"));
    assert!(
        job.contains("mountPath: /config"),
        "tenants file mounted at /config"
    );
    let grace: u64 = value(&job, "terminationGracePeriodSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        grace > ONE_TENANT_APPLY_BUDGET_SECS,
        "grace period {grace}s must outlast one tenant's apply"
    );
    // The env names are ones orgctl (sqlx) reads.
    let env_names: Vec<&str> = job
        .lines()
        .skip_while(|l| l.trim() != "env:")
        .map_while(|l| {
            let t = l.trim();
            (t == "env:" || t.starts_with("- name:") || t.starts_with("value")).then_some(t)
        })
        .filter_map(|t| t.strip_prefix("- name:").map(str::trim))
        .collect();
    assert_eq!(
        env_names,
        ["PGPASSFILE"],
        "env orgctl reads (sqlx's pgpass)"
    );
    assert!(!job.contains("PGPASSWORD"), "no password in the Job");
    let cm = manifest("configmap.yaml");
    assert_eq!(value(&cm, "kind").as_deref(), Some("ConfigMap"));
    for m in [&job, &cm, &manifest("secret.yaml")] {
        // A URL with user:password@ is the one way a password could sit in a tenants line.
        for l in m.lines().filter(|l| l.contains("://")) {
            let auth = l.split("://").nth(1).unwrap_or("").split('@').next();
            assert!(!auth.unwrap_or("").contains(':'), "password in a URL: {l}");
        }
        assert!(!m.contains(PASSWORD));
    }
    // The secret's pgpass lines are commented placeholders only.
    let secret = manifest("secret.yaml");
    assert!(secret
        .lines()
        .skip_while(|l| !l.contains("pgpass: |"))
        .skip(1)
        .all(|l| l.trim().is_empty() || l.trim().starts_with('#')));
}

fn statuses(doc: &Value) -> BTreeMap<String, String> {
    doc["tenants"]
        .as_array()
        .unwrap_or_else(|| panic!("no tenants in {doc}"))
        .iter()
        .map(|t| {
            (
                t["tenant"].as_str().unwrap_or("?").to_string(),
                t["status"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_simulated_indexed_job_applies_every_tenant_once_and_status_agrees() {
    const N: u32 = 3;
    // Tenants spread over three servers, as a fleet is: three databases on the harness's
    // server and five on two private servers of their own (the same password, from one pgpass
    // file with a line per server).
    let shared: Vec<TestDb> = (0..3).map(|_| TestDb::empty()).collect();
    let platform = match std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations/platform/schema-2026-08.sql"),
    ) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let privates: Vec<PrivateServer> = (0..2)
        .map(|_| PrivateServer::start().unwrap_or_else(|e| panic!("private server: {e}")))
        .collect();
    // (name, port, database)
    let mut fleet: Vec<(String, u16, String)> = shared
        .iter()
        .map(|d| (String::new(), server().port, d.name.clone()))
        .collect();
    for (srv, count) in privates.iter().zip([3, 2]) {
        let ok = |r: Result<String, String>| {
            if let Err(e) = r {
                panic!("private server set-up: {e}");
            }
        };
        ok(srv.psql("postgres", "CREATE DATABASE k8s_tmpl"));
        ok(srv.psql("k8s_tmpl", &platform));
        for j in 0..count {
            ok(srv.psql(
                "postgres",
                &format!("CREATE DATABASE k8s_{j} TEMPLATE k8s_tmpl"),
            ));
            fleet.push((String::new(), srv.port, format!("k8s_{j}")));
        }
    }
    for (i, t) in fleet.iter_mut().enumerate() {
        t.0 = format!("k8s-{i:02}");
    }
    let names: Vec<String> = fleet.iter().map(|t| t.0.clone()).collect();
    // URLs without a password, as in the ConfigMap; the password comes from PGPASSFILE.
    let text: String = fleet
        .iter()
        .map(|(n, port, db)| format!("{n} postgres://postgres@127.0.0.1:{port}/{db}\n"))
        .collect();
    assert!(!text.contains(PASSWORD));
    let pgpass_lines: String = std::iter::once(server().port)
        .chain(privates.iter().map(|p| p.port))
        .map(|port| format!("127.0.0.1:{port}:*:postgres:{PASSWORD}\n"))
        .collect();
    let dir = std::env::temp_dir().join(format!("orgctl-k8s-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let tenants = dir.join("tenants.txt");
    let pgpass = dir.join("pgpass");
    let write = |p: &PathBuf, s: &str| {
        if let Err(e) = std::fs::write(p, s) {
            panic!("write {}: {e}", p.display());
        }
    };
    write(&tenants, &text);
    write(&pgpass, &pgpass_lines);
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600));
    }
    let t = tenants.to_string_lossy().to_string();
    let pf = pgpass.to_string_lossy().to_string();
    let run_id = "k8s-sim-1";
    let shards = N.to_string();
    // The pods, all at once.
    let children: Vec<_> = (0..N)
        .map(|i| {
            let mut c = Cmd::new(&[
                "backfill",
                "run",
                "--tenants",
                &t,
                "--shards",
                &shards,
                "--run-id",
                run_id,
                "--model",
                "m",
                "--yes",
                "-o",
                "json",
            ])
            .env("JOB_COMPLETION_INDEX", &i.to_string())
            .env("PGPASSFILE", &pf)
            .command();
            c.env_remove("PGPASSWORD")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            match c.spawn() {
                Ok(ch) => ch,
                Err(e) => panic!("spawn orgctl: {e}"),
            }
        })
        .collect();
    let children: Vec<_> = children
        .into_iter()
        .map(|ch| match ch.wait_with_output() {
            Ok(o) => o,
            Err(e) => panic!("wait for orgctl: {e}"),
        })
        .collect();
    let mut applied: BTreeMap<String, u32> = BTreeMap::new();
    for (i, o) in children.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "pod {i}: {stderr}");
        assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
        let doc: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("pod {i} json: {e}: {stdout}"));
        for (n, s) in statuses(&doc) {
            assert_eq!(s, "applied", "pod {i}: {n}");
            *applied.entry(n).or_default() += 1;
        }
        // backfill status with the same shards agrees with the pod's own run.
        let st = Cmd::new(&[
            "backfill",
            "status",
            "--tenants",
            &t,
            "--shards",
            &shards,
            "--run-id",
            run_id,
            "-o",
            "json",
        ])
        .env("JOB_COMPLETION_INDEX", &i.to_string())
        .env("PGPASSFILE", &pf)
        .run();
        st.code(0);
        assert_eq!(statuses(&st.json()), statuses(&doc), "status of shard {i}");
    }
    let want: BTreeMap<String, u32> = names.iter().map(|n| (n.clone(), 1)).collect();
    assert_eq!(applied, want, "every tenant applied exactly once");
    // Each tenant's own record, on its own server: one run row, applied.
    let run_row = format!("SELECT status FROM orgctl.backfill_runs WHERE run_id = '{run_id}'");
    for d in &shared {
        assert_eq!(d.scalar(&run_row), "applied", "{}", d.name);
    }
    for srv in &privates {
        for db in fleet.iter().filter(|t| t.1 == srv.port).map(|t| &t.2) {
            assert_eq!(
                srv.psql(db, &run_row).map(|s| s.trim().to_string()),
                Ok("applied".to_string()),
                "{db} on port {}",
                srv.port
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
