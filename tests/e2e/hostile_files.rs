//! Files a hostile tenant hands the platform: app archives built to write outside their folder, and
//! things renamed into staging that are not plain files. Each is refused with its reason, nothing is
//! written anywhere, nothing is followed, and valid work beside them carries on.

use mysimbdp::domain::JobState;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mysimbdp_e2e::{agreement, tar_gz, unique, Member, TestPlatform};

const MANIFEST: &[u8] = b"name: x\nkind: batch\nentrypoint: run\nversion: 1.0.0\n";

#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_are_refused_with_the_entry_named_and_write_nothing() {
    let t = unique("arch");
    let batch = "  routes: [{files: \"*.csv\", app: x, timeout: 1m, memory: 256MiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 1";
    let mut p = TestPlatform::new(&[(&t, agreement(&t, batch))]).await;
    p.start().await;
    let (http, token) = (p.http(), p.token(Some(&t)));
    // Where escapes would land if they worked: beside the data folder, and an absolute path.
    let escape = p.dir.path().join(format!("escaped-{}", uuid::Uuid::new_v4().simple()));
    let absolute = escape.display().to_string();
    let relative_to_root = absolute.trim_start_matches('/').to_owned();
    // `s -> .`, then a link 24 levels down that climbs out, then a file written through it.
    let deep = format!("{}l", "s/".repeat(24));
    let through = format!("l/{relative_to_root}");
    let cases: Vec<(&str, Vec<Member<'_>>, &str)> = vec![
        (
            "chained links, long form",
            vec![
                Member::File("app.yaml", MANIFEST, 0o644),
                Member::File("run", b"#!/bin/sh\n", 0o755),
                Member::Symlink("s", "."),
                Member::Symlink(&deep, "../../../../../../../../../../../../../../../../../../../../../../../../.."),
                Member::File(&through, b"pwned", 0o644),
            ],
            "links to `../../../../../../../../../../../../../../../../../../../../../../../../..`, outside the app folder",
        ),
        (
            "chained links, short form",
            vec![
                Member::File("app.yaml", MANIFEST, 0o644),
                Member::File("run", b"#!/bin/sh\n", 0o755),
                Member::Symlink("d", "."),
                Member::Symlink("d/up", ".."),
                Member::File("up/x", b"pwned", 0o644),
            ],
            "entry `d/up` passes through a link",
        ),
        (
            "links that each stay inside but climb out together",
            vec![Member::File("app.yaml", MANIFEST, 0o644), Member::Symlink("d", "."), Member::Symlink("e", "d/..")],
            "entry `e` links to `d/..`, which resolves outside the app folder",
        ),
        ("an absolute path", vec![Member::File(&absolute, b"pwned", 0o644)], "has an absolute path"),
        ("`..`", vec![Member::File("../../escaped", b"pwned", 0o644)], "contains `..`"),
        (
            "a hard link",
            vec![Member::File("app.yaml", MANIFEST, 0o644), Member::HardLink("run", "app.yaml")],
            "entry `run` is a hard link",
        ),
        ("a device", vec![Member::Special("mem", tar::EntryType::Char)], "entry `mem` is a Char entry"),
        ("a FIFO", vec![Member::Special("pipe", tar::EntryType::Fifo)], "entry `pipe` is a Fifo entry"),
        ("a set-uid program", vec![Member::File("run", b"#!/bin/sh\n", 0o4755)], "entry `run` has the set-uid bit"),
        (
            "a link as the entrypoint",
            vec![
                Member::File("app.yaml", MANIFEST, 0o644),
                Member::File("bin/real", b"#!/bin/sh\n", 0o755),
                Member::Symlink("run", "bin/real"),
            ],
            "entrypoint: `run` is a link",
        ),
        (
            "a link as app.yaml",
            vec![Member::File("other.yaml", MANIFEST, 0o644), Member::Symlink("app.yaml", "other.yaml")],
            "app.yaml: is a link",
        ),
    ];
    for (what, members, expected) in cases {
        let r = http
            .call("POST", &format!("/v1/tenants/{t}/apps"), Some(&token), Some(("application/gzip", tar_gz(&members))))
            .await;
        let detail = r.problem(422);
        assert!(detail.contains(expected), "{what}: `{detail}` should say `{expected}`");
        assert!(!escape.exists(), "{what}: wrote {}", escape.display());
        for beside in [p.dir.path().join("escaped"), p.data_dir.join("escaped"), p.data_dir.join("apps/escaped")] {
            assert!(!beside.exists(), "{what}: wrote {}", beside.display());
        }
        let incoming: Vec<_> = std::fs::read_dir(p.data_dir.join("apps/.incoming")).unwrap().collect();
        assert!(incoming.is_empty(), "{what}: left {incoming:?}");
    }
    let r = http.get(&format!("/v1/tenants/{t}/apps"), &token).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(0), "no app was installed: {}", r.text());
    // A careful archive of the same shape installs.
    let ok = tar_gz(&[
        Member::File("app.yaml", MANIFEST, 0o644),
        Member::File("bin/real", b"#!/bin/sh\nexit 0\n", 0o755),
        Member::File("run", b"#!/bin/sh\nexec \"$(dirname \"$0\")/bin/real\"\n", 0o755),
        Member::Symlink("lib/current", "../bin"),
    ]);
    let r = http.call("POST", &format!("/v1/tenants/{t}/apps"), Some(&token), Some(("application/gzip", ok))).await;
    assert_eq!(r.status, 201, "{}", r.text());
    p.drop_file(&t, "a.csv", b"a\n1\n");
    assert_eq!(p.wait_final(&t, "a.csv").await.state, JobState::Succeeded);
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn staging_takes_only_plain_files_nobody_else_holds() {
    let t = unique("stage");
    let batch = "  routes: [{files: \"*.csv\", app: show, timeout: 1m, memory: 256MiB}]\n  formats: [csv]\n  max_file_size: 1MiB\n  max_files_per_hour: 100\n  max_bytes_per_day: 1GiB\n  max_concurrent_jobs: 2\n  min_file_age: 300ms";
    let mut p = TestPlatform::new(&[(&t, agreement(&t, batch))]).await;
    p.start().await;
    // The app prints what it was given: the test sees exactly which bytes it read.
    p.install_script(&t, "show", "cat \"$1\"").await;
    let staging = p.staging_dir.join(&t);
    let secret = p.dir.path().join("secret.csv");
    std::fs::write(&secret, b"a\nthe platform's secret\n").unwrap();
    let key = p.dir.path().join("jwt-secret");
    std::fs::write(&key, format!("a\n{}\n", p.jwt_secret)).unwrap();
    let rename_in = |name: &str, make: &dyn Fn(&Path)| {
        let part = staging.join(format!("{name}.part"));
        make(&part);
        std::fs::rename(&part, staging.join(name)).unwrap();
    };
    rename_in("link-secret.csv", &|at| std::os::unix::fs::symlink(&secret, at).unwrap());
    rename_in("link-key.csv", &|at| std::os::unix::fs::symlink(&key, at).unwrap());
    rename_in("fifo.csv", &|at| {
        let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    });
    let original = p.dir.path().join("original.csv");
    std::fs::write(&original, b"a\nlinked\n").unwrap();
    rename_in("hard.csv", &|at| std::fs::hard_link(&original, at).unwrap());
    // Renamed in while its writer still holds it open, then appended to: it could pass its limits
    // and change under the app.
    let mut writer = std::fs::File::create(staging.join("growing.csv.part")).unwrap();
    std::io::Write::write_all(&mut writer, b"a\n1\n").unwrap();
    std::fs::rename(staging.join("growing.csv.part"), staging.join("growing.csv")).unwrap();
    // Written in place and left open (taken by age, not by a rename).
    let mut in_place = std::fs::File::create(staging.join("in-place.csv")).unwrap();
    std::io::Write::write_all(&mut in_place, b"a\n2\n").unwrap();
    p.drop_file(&t, "plain.csv", b"a\nplain\n");

    for (name, reason, says) in [
        ("link-secret.csv", "not_regular_file", format!("is a symbolic link (to `{}`)", secret.display())),
        ("link-key.csv", "not_regular_file", format!("is a symbolic link (to `{}`)", key.display())),
        ("fifo.csv", "not_regular_file", "is a FIFO".to_owned()),
        ("hard.csv", "hard_link", "has 2 hard links".to_owned()),
        ("growing.csv", "open_for_writing", "still open for writing".to_owned()),
        ("in-place.csv", "open_for_writing", "still open for writing".to_owned()),
    ] {
        let job = p.wait_final(&t, name).await;
        assert_eq!((job.state.as_str(), job.reason.map(|r| r.as_str())), ("rejected", Some(reason)), "{name}: {job:?}");
        assert!(job.detail.as_deref().unwrap().contains(&says), "{name}: {job:?}");
        assert_eq!(job.attempts, 0, "no app ran on {name}");
        let moved = p.wait_moved(&job).await;
        assert!(std::fs::symlink_metadata(&moved).is_ok(), "{name} is kept in quarantine as it was");
    }
    std::io::Write::write_all(&mut writer, b"3\n").unwrap();
    drop((writer, in_place));
    // The targets are untouched and were never read into any job.
    assert_eq!(std::fs::read(&secret).unwrap(), b"a\nthe platform's secret\n");
    assert_eq!(
        std::fs::metadata(&original).unwrap().permissions().mode() & 0o777,
        0o644,
        "the other name's file is untouched"
    );
    for job in p.all_jobs(&t).await {
        let log = job.log.clone().unwrap_or_default();
        assert!(!log.contains("secret") && !log.contains(&p.jwt_secret), "{job:?}");
    }
    let plain = p.wait_final(&t, "plain.csv").await;
    assert_eq!(plain.state, JobState::Succeeded, "{plain:?}");
    assert_eq!(plain.log.as_deref(), Some("a\nplain\n"), "the app read exactly the admitted bytes");
    p.cleanup().await;
}
