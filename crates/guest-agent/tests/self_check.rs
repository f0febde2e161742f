//! Every check of Inspect's sandbox self-check (`inspect_ai.util._sandbox.self_check`, 44
//! tests; list in inspect-contract.md §4), in Rust, through PVE's agent routes to a simulated
//! VM whose guest really runs the commands. Each test boots its own VM, as Inspect's
//! function-scoped fixture does.
//!
//! The three permission checks need a non-root user (the agent itself runs as root); they use a
//! handle whose files are read and written as user `checker` (`GuestAgent::file_user`).

mod common;

use std::time::{Duration, Instant};

use common::{env, guests_available};
use guest_agent::{Error, ExecRequest};

macro_rules! check {
    ($name:ident, |$e:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if !guests_available() {
                return;
            }
            let $e = env().await;
            $body
            let left = $e.transfer_files().await;
            assert!(left.is_empty(), "transfer files left behind: {left}");
        }
    };
}

// ---- file round trips ----------------------------------------------------------------------

check!(read_and_write_file_text, |e| {
    e.vm.write_file("test_file.file", b"great #content\nincluding newlines")
        .await
        .unwrap();
    let back = e.vm.read_file("test_file.file", None).await.unwrap();
    assert_eq!(back, b"great #content\nincluding newlines");
});

check!(write_file_text_utf, |e| {
    let text = "\u{1f600}\u{1f601}\u{1f602} unicode \u{e9}\r\n";
    e.vm.write_file("utf.file", text.as_bytes()).await.unwrap();
    let back = e.vm.read_file("utf.file", None).await.unwrap();
    assert_eq!(String::from_utf8(back).unwrap(), text);
});

check!(read_and_write_file_binary, |e| {
    e.vm.write_file("bin.file", b"\xc3\x28").await.unwrap();
    assert_eq!(e.vm.read_file("bin.file", None).await.unwrap(), b"\xc3\x28");
});

check!(read_and_write_large_file_binary, |e| {
    let big: Vec<u8> = (0..50 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    e.vm.write_file("large.bin", &big).await.unwrap();
    let back = e.vm.read_file("large.bin", None).await.unwrap();
    assert!(back == big, "50 MiB round trip differs");
});

check!(read_and_write_file_including_directory_absolute, |e| {
    e.vm.write_file("/tmp/test_rw_dir_abs/a/b/file", b"abs")
        .await
        .unwrap();
    let back =
        e.vm.read_file("/tmp/test_rw_dir_abs/a/b/file", None)
            .await
            .unwrap();
    assert_eq!(back, b"abs");
    e.sh("rm -rf /tmp/test_rw_dir_abs").await;
});

check!(read_and_write_file_including_directory_relative, |e| {
    e.vm.write_file("test_dir/a/file", b"rel").await.unwrap();
    assert_eq!(
        e.vm.read_file("test_dir/a/file", None).await.unwrap(),
        b"rel"
    );
    let ls = e.sh("ls /root/test_dir/a").await;
    assert_eq!(ls.stdout, b"file\n");
});

check!(read_file_zero_length, |e| {
    e.sh("touch /root/zero_length_file").await;
    assert!(
        e.vm.read_file("zero_length_file", None)
            .await
            .unwrap()
            .is_empty()
    );
});

check!(write_text_file_zero_length, |e| {
    e.vm.write_file("zero.txt", b"").await.unwrap();
    assert!(e.vm.read_file("zero.txt", None).await.unwrap().is_empty());
});

check!(write_binary_file_zero_length, |e| {
    e.vm.write_file("zero.bin", &[]).await.unwrap();
    let out = e.sh("stat -c %s /root/zero.bin").await;
    assert_eq!(out.stdout, b"0\n");
});

check!(write_text_file_space, |e| {
    e.vm.write_file("file with space.txt", b"spaced")
        .await
        .unwrap();
    assert_eq!(
        e.vm.read_file("file with space.txt", None).await.unwrap(),
        b"spaced"
    );
});

check!(write_binary_file_space, |e| {
    e.vm.write_file("dir with space/binary file.bin", b"\xff\x00 ")
        .await
        .unwrap();
    assert_eq!(
        e.vm.read_file("dir with space/binary file.bin", None)
            .await
            .unwrap(),
        b"\xff\x00 "
    );
});

check!(write_text_file_exists, |e| {
    e.vm.write_file("exists.txt", b"first version, longer")
        .await
        .unwrap();
    e.vm.write_file("exists.txt", b"second").await.unwrap();
    assert_eq!(e.vm.read_file("exists.txt", None).await.unwrap(), b"second");
});

check!(write_binary_file_exists, |e| {
    let big = vec![7u8; 100 * 1024];
    e.vm.write_file("exists.bin", &big).await.unwrap();
    e.vm.write_file("exists.bin", b"\x01\x02").await.unwrap();
    assert_eq!(
        e.vm.read_file("exists.bin", None).await.unwrap(),
        b"\x01\x02"
    );
});

// ---- file errors ---------------------------------------------------------------------------

check!(read_file_not_found, |e| {
    let err =
        e.vm.read_file("nonexistent_file_name", None)
            .await
            .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("nonexistent_file_name"));
});

check!(read_file_nonsense_name, |e| {
    let name = "https:/en.wikipedia.org/wiki/Bad%20Request";
    let err = e.vm.read_file(name, None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("wikipedia"));
});

check!(read_file_not_allowed, |e| {
    // As a non-root user: the agent itself reads as root, which may read anything.
    e.sh("useradd -m checker && echo secret > /home/checker/f && chown checker /home/checker/f && chmod -r /home/checker/f").await;
    let as_user = e.vm.clone().file_user("checker");
    let err = as_user
        .read_file("/home/checker/f", None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("/home/checker/f"));
});

check!(read_file_is_directory, |e| {
    let err = e.vm.read_file("/etc", None).await.unwrap_err();
    assert!(matches!(err, Error::IsADirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("directory"));
});

check!(read_file_limit, |e| {
    e.vm.write_file("two_kib", &[b'x'; 2048]).await.unwrap();
    let err = e.vm.read_file("two_kib", Some(1024)).await.unwrap_err();
    assert!(
        matches!(err, Error::OutputLimit { limit: 1024, .. }),
        "{err:?}"
    );
});

check!(write_text_file_is_directory, |e| {
    e.sh("mkdir -p /root/a_dir").await;
    let err = e.vm.write_file("a_dir", b"text").await.unwrap_err();
    assert!(matches!(err, Error::IsADirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("directory"));
});

check!(write_binary_file_is_directory, |e| {
    e.sh("mkdir -p /root/b_dir").await;
    let err =
        e.vm.write_file("b_dir", &vec![0u8; 200_000])
            .await
            .unwrap_err();
    assert!(matches!(err, Error::IsADirectory { .. }), "{err:?}");
});

check!(write_text_file_without_permissions, |e| {
    e.sh("useradd -m checker && touch /home/checker/ro && chown checker /home/checker/ro && chmod -w /home/checker/ro").await;
    let as_user = e.vm.clone().file_user("checker");
    let err = as_user
        .write_file("/home/checker/ro", b"text")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("/home/checker/ro"));
});

check!(write_binary_file_without_permissions, |e| {
    e.sh("useradd -m checker && touch /home/checker/ro && chown checker /home/checker/ro && chmod -w /home/checker/ro").await;
    let as_user = e.vm.clone().file_user("checker");
    let err = as_user
        .write_file("/home/checker/ro", &[0, 255, 1])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
});

// ---- exec output ---------------------------------------------------------------------------

check!(exec_output, |e| {
    let out = e.sh("echo foo; echo bar").await;
    assert_eq!(
        (out.status, &out.stdout[..], &out.stderr[..]),
        (0, &b"foo\nbar\n"[..], &b""[..])
    );
});

check!(exec_stderr, |e| {
    let out = e.sh("echo boof >&2").await;
    assert_eq!(
        (&out.stdout[..], &out.stderr[..]),
        (&b""[..], &b"boof\n"[..])
    );
});

check!(exec_output_utf, |e| {
    let out = e.sh("printf '\\360\\237\\230\\200 \\303\\251\\n'").await;
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "\u{1f600} \u{e9}\n");
});

check!(exec_stderr_utf, |e| {
    let out = e.sh("printf '\\360\\237\\230\\200\\n' >&2").await;
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "\u{1f600}\n");
});

check!(exec_returncode, |e| {
    assert_eq!(e.sh("exit 70").await.status, 70);
});

// ---- exec timeout --------------------------------------------------------------------------

check!(exec_timeout, |e| {
    let started = Instant::now();
    let err =
        e.vm.exec(
            &ExecRequest::new(["sh", "-c", "echo before; sleep 4"]).timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    let Error::Timeout { stdout, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(stdout, b"before\n");
    assert!(started.elapsed() < Duration::from_secs(4));
});

check!(exec_timeout_not_raised_on_fast_signal_death, |e| {
    let out = e
        .vm
        .exec(&ExecRequest::new(["sh", "-c", "kill -TERM $$"]).timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(out.status, 143);
});

check!(exec_timeout_kills_process, |e| {
    let err =
        e.vm.exec(&ExecRequest::new(["sleep", "987"]).timeout(Duration::from_millis(500)))
            .await
            .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }));
    let ps = e
        .sh("ps aux | grep 'sleep 987' | grep -v grep || true")
        .await;
    assert!(
        ps.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
});

check!(exec_timeout_kills_child_processes, |e| {
    let err =
        e.vm.exec(
            &ExecRequest::new(["sh", "-c", "sleep 876 & sleep 876 & wait"])
                .timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }));
    let ps = e
        .sh("ps aux | grep 'sleep 876' | grep -v grep || true")
        .await;
    assert!(
        ps.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
});

// ---- exec misc -----------------------------------------------------------------------------

check!(exec_permission_error, |e| {
    let err =
        e.vm.exec(&ExecRequest::new(["/etc/passwd"]))
            .await
            .unwrap_err();
    assert!(
        matches!(err, Error::PermissionDenied { ref path } if path == "/etc/passwd"),
        "{err:?}"
    );
});

check!(exec_env_vars, |e| {
    let out =
        e.vm.exec(
            &ExecRequest::new(["sh", "-c", "echo $FOO_ENV_VAR"])
                .env("FOO_ENV_VAR", "super_secret_value"),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"super_secret_value\n");
});

check!(exec_input_text, |e| {
    let out =
        e.vm.exec(&ExecRequest::new(["cat"]).stdin("foo\nbar\n"))
            .await
            .unwrap();
    assert_eq!(out.stdout, b"foo\nbar\n");
    let out =
        e.vm.exec(&ExecRequest::new(["cat"]).stdin(""))
            .await
            .unwrap();
    assert_eq!((out.status, out.stdout.len()), (0, 0));
});

check!(exec_input_shell_special, |e| {
    let text = "$HOME `whoami` \"double\" 'single' \\ $(id) \u{e9}\n";
    let out =
        e.vm.exec(&ExecRequest::new(["cat"]).stdin(text))
            .await
            .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
});

check!(exec_input_binary, |e| {
    let data = b"\x00\xff\x01binary\x00".to_vec();
    let out =
        e.vm.exec(&ExecRequest::new(["cat"]).stdin(data.clone()))
            .await
            .unwrap();
    assert_eq!(out.stdout, data);
});

check!(exec_input_large, |e| {
    let data = vec![b'z'; 50 * 1024 * 1024];
    let out =
        e.vm.exec(&ExecRequest::new(["wc", "-c"]).stdin(data))
            .await
            .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (50 * 1024 * 1024).to_string()
    );
});

check!(exec_large_command, |e| {
    let chunks: Vec<String> = (0..16)
        .map(|i| format!("{i:x}").repeat(64 * 1024))
        .collect();
    let mut argv = vec!["printf".to_string(), "%s".into()];
    argv.extend(chunks.iter().cloned());
    let out = e.vm.exec(&ExecRequest::new(argv)).await.unwrap();
    assert_eq!(out.stdout, chunks.concat().into_bytes());
});

// ---- users ---------------------------------------------------------------------------------

check!(exec_as_user, |e| {
    e.sh("useradd -m inspect_user").await;
    let root =
        e.vm.exec(&ExecRequest::new(["whoami"]).user("root"))
            .await
            .unwrap();
    assert_eq!(root.stdout, b"root\n");
    let user =
        e.vm.exec(&ExecRequest::new(["whoami"]).user("inspect_user"))
            .await
            .unwrap();
    assert_eq!(user.stdout, b"inspect_user\n");
});

check!(exec_as_nonexistent_user, |e| {
    let err =
        e.vm.exec(&ExecRequest::new(["whoami"]).user("nonexistent"))
            .await
            .unwrap_err();
    assert!(
        matches!(err, Error::UserUnsupported { ref user, .. } if user == "nonexistent"),
        "{err:?}"
    );
});

// ---- cwd -----------------------------------------------------------------------------------

check!(cwd_unspecified, |e| {
    e.vm.write_file("cwd_marker.txt", b"x").await.unwrap();
    let out = e.vm.exec(&ExecRequest::new(["ls"])).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("cwd_marker.txt"));
});

check!(cwd_custom, |e| {
    let out =
        e.vm.exec(&ExecRequest::new(["ls"]).cwd("/usr/bin"))
            .await
            .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "env")
    );
});

check!(cwd_relative, |e| {
    e.vm.write_file("rel_dir/inner.txt", b"x").await.unwrap();
    let out =
        e.vm.exec(&ExecRequest::new(["ls"]).cwd("rel_dir"))
            .await
            .unwrap();
    assert_eq!(out.stdout, b"inner.txt\n");
});

check!(cwd_absolute, |e| {
    e.sh("mkdir -p /tmp/abs_dir && touch /tmp/abs_dir/f").await;
    let out =
        e.vm.exec(&ExecRequest::new(["pwd"]).cwd("/tmp/abs_dir"))
            .await
            .unwrap();
    assert_eq!(out.stdout, b"/tmp/abs_dir\n");
    e.sh("rm -rf /tmp/abs_dir").await;
});
