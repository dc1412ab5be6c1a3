//! The process runtime end to end, with the crate's own shim binary. Every wait is on a
//! condition with a generous deadline (the machine may be loaded).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_executor::{
    AdoptedState, ExecError, Executor, ExitStatus, LimitsSupport, LogLine, LogOptions,
    ProcessExecutor, ShimCommand, Stream, TaskRun,
};

const LONG: Duration = Duration::from_secs(60);

fn shim() -> ShimCommand {
    ShimCommand {
        program: PathBuf::from(env!("CARGO_BIN_EXE_shoal-task-shim")),
        args: Vec::new(),
    }
}

fn executor(root: &Path) -> ProcessExecutor {
    ProcessExecutor::new(root.to_path_buf(), shim()).expect("executor")
}

fn task(id: &str, program: &str, args: &[&str]) -> TaskRun {
    TaskRun {
        task_id: id.to_string(),
        service_name: "web".to_string(),
        slot: 1,
        program: program.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        workdir: None,
        labels: BTreeMap::new(),
        limits: Default::default(),
        stop_grace: Duration::from_secs(10),
        ..TaskRun::default()
    }
}

fn sh(id: &str, script: &str) -> TaskRun {
    task(id, "sh", &["-c", script])
}

/// Kills every task group left under the root when a test ends (also when it fails).
struct Reaper(tempfile::TempDir);

impl Reaper {
    fn new() -> Self {
        Reaper(tempfile::tempdir().expect("tempdir"))
    }
    fn root(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(self.0.path()) else {
            return;
        };
        for e in entries.flatten() {
            for file in ["task.pid", "shim.pid"] {
                if let Some(pid) = read_pid(&e.path().join(file)) {
                    // SAFETY: plain kill(2) of a group / process these tests started.
                    unsafe {
                        if file == "task.pid" {
                            libc::kill(-(pid as i32), libc::SIGKILL);
                        } else {
                            libc::kill(pid as i32, libc::SIGKILL);
                        }
                    }
                }
            }
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    let s = fs::read_to_string(path).ok()?;
    s.split_whitespace().next()?.parse().ok().filter(|p| *p > 1)
}

fn group_gone(pgid: u32) -> bool {
    // SAFETY: existence check of a process group.
    let r = unsafe { libc::kill(-(pgid as i32), 0) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Fields 5 and 6 of /proc/<pid>/stat: process group and session.
fn group_and_session(pid: u32) -> Option<(u32, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_to_end(exec: &ProcessExecutor, run: &TaskRun) -> ExitStatus {
    exec.prepare(run).await.expect("prepare");
    exec.start(&run.task_id).await.expect("start");
    tokio::time::timeout(LONG, exec.wait(&run.task_id))
        .await
        .expect("wait timed out")
        .expect("wait")
}

async fn all_logs(exec: &ProcessExecutor, id: &str, tail: Option<usize>) -> Vec<LogLine> {
    let mut rx = exec
        .logs(
            id,
            LogOptions {
                tail,
                follow: false,
            },
        )
        .await
        .expect("logs");
    let mut out = Vec::new();
    while let Some(l) = tokio::time::timeout(LONG, rx.recv())
        .await
        .expect("logs hung")
    {
        out.push(l);
    }
    out
}

fn texts(lines: &[LogLine]) -> Vec<&str> {
    lines.iter().map(|l| l.text.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_is_recorded() {
    let r = Reaper::new();
    let exec = executor(r.root());
    assert_eq!(exec.runtime(), "process");
    let st = run_to_end(&exec, &sh("0000000000000001", "exit 3")).await;
    assert_eq!(st, ExitStatus::Code(3));
    // wait again, and shutdown of an ended task, are fine
    assert_eq!(
        exec.wait("0000000000000001").await.unwrap(),
        ExitStatus::Code(3)
    );
    exec.shutdown("0000000000000001", Duration::ZERO)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_signal_is_recorded() {
    let r = Reaper::new();
    let exec = executor(r.root());
    let st = run_to_end(&exec, &sh("0000000000000002", "kill -9 $$")).await;
    assert_eq!(st, ExitStatus::Signal(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_workdir_and_streams_are_honoured() {
    let r = Reaper::new();
    let exec = executor(r.root());
    let wd = tempfile::tempdir().unwrap();
    let mut run = sh(
        "0000000000000003",
        "echo \"$FOO\"; pwd -P; echo \"${PATH:+has-path}\"; echo \"${HOME:-no-home}\"; echo oops >&2",
    );
    run.env = vec![("FOO".into(), "bar baz".into())];
    run.workdir = Some(wd.path().to_path_buf());
    assert_eq!(run_to_end(&exec, &run).await, ExitStatus::Code(0));
    let lines = all_logs(&exec, "0000000000000003", None).await;
    let wd_real = fs::canonicalize(wd.path()).unwrap();
    let out: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == Stream::Stdout)
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(
        out,
        vec!["bar baz", wd_real.to_str().unwrap(), "has-path", "no-home"]
    );
    let err: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == Stream::Stderr)
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(err, vec!["oops"]);
    assert!(lines.iter().all(|l| l.timestamp_ms > 1_600_000_000_000));

    // Without a workdir the task runs in its own directory; a given PATH is used as is.
    let mut run = sh("0000000000000013", "pwd -P; echo \"$PATH\"");
    run.env = vec![("PATH".into(), "/bin:/usr/bin".into())];
    assert_eq!(run_to_end(&exec, &run).await, ExitStatus::Code(0));
    let lines = all_logs(&exec, "0000000000000013", None).await;
    let own = fs::canonicalize(r.root().join("0000000000000013/work")).unwrap();
    assert_eq!(texts(&lines), vec![own.to_str().unwrap(), "/bin:/usr/bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_programs_and_workdirs_are_invalid() {
    let r = Reaper::new();
    let exec = executor(r.root());
    let err = exec
        .prepare(&task("0000000000000004", "no-such-program-xyz", &[]))
        .await
        .unwrap_err();
    match err {
        ExecError::Invalid(m) => assert_eq!(
            m,
            "exec: \"no-such-program-xyz\": executable file not found in $PATH"
        ),
        other => panic!("{other:?}"),
    }

    let mut run = sh("0000000000000005", "true");
    run.workdir = Some(PathBuf::from("/no/such/dir-xyz"));
    match exec.prepare(&run).await.unwrap_err() {
        ExecError::Invalid(m) => assert!(m.contains("/no/such/dir-xyz"), "{m}"),
        other => panic!("{other:?}"),
    }

    run.workdir = Some(PathBuf::from("relative/dir"));
    assert!(matches!(
        exec.prepare(&run).await,
        Err(ExecError::Invalid(_))
    ));

    // An executable whose interpreter is missing: exec fails in the shim, start says so
    // (and does not hang).
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("fake");
    fs::write(&fake, b"#!/no/such/interpreter\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let run = task("0000000000000006", fake.to_str().unwrap(), &[]);
    exec.prepare(&run).await.unwrap();
    match exec.start("0000000000000006").await.unwrap_err() {
        ExecError::Invalid(m) => assert!(m.contains("fake") && m.contains("No such file"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(exec.wait("0000000000000006").await.is_err());
    exec.remove("0000000000000006").await.unwrap();

    assert!(matches!(
        exec.start("0000000000000099").await,
        Err(ExecError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_ends_within_grace() {
    let r = Reaper::new();
    let exec = executor(r.root());
    let run = task("0000000000000007", "sleep", &["1000"]);
    exec.prepare(&run).await.unwrap();
    let pid = exec.start("0000000000000007").await.unwrap().pid.unwrap();
    // The task leads its own session and group; so does its shim (detached from us).
    assert_eq!(group_and_session(pid), Some((pid, pid)));
    let shim_pid = read_pid(&r.root().join("0000000000000007/shim.pid")).unwrap();
    assert_eq!(group_and_session(shim_pid), Some((shim_pid, shim_pid)));
    let t0 = Instant::now();
    exec.shutdown("0000000000000007", Duration::from_secs(40))
        .await
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_eq!(
        exec.wait("0000000000000007").await.unwrap(),
        ExitStatus::Signal(libc::SIGTERM)
    );
    eventually("the group to be gone", || group_gone(pid)).await;
    // again: idempotent
    exec.shutdown("0000000000000007", Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ignoring_term_is_killed_after_the_grace() {
    let r = Reaper::new();
    let exec = executor(r.root());
    let run = sh("0000000000000008", "trap '' TERM; echo ready; sleep 1000");
    exec.prepare(&run).await.unwrap();
    let pid = exec.start("0000000000000008").await.unwrap().pid.unwrap();
    // The trap is set once the script has printed.
    let deadline = Instant::now() + LONG;
    while all_logs(&exec, "0000000000000008", None).await.is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exec.shutdown("0000000000000008", Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(
        exec.wait("0000000000000008").await.unwrap(),
        ExitStatus::Signal(libc::SIGKILL)
    );
    eventually("the group to be gone", || group_gone(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchildren_die_with_the_task() {
    let r = Reaper::new();
    let exec = executor(r.root());
    // The background child ignores TERM: only the group SIGKILL can end it.
    let run = sh(
        "0000000000000009",
        "(trap '' TERM; sleep 1000) & sleep 1000 & echo started; wait",
    );
    exec.prepare(&run).await.unwrap();
    let pid = exec.start("0000000000000009").await.unwrap().pid.unwrap();
    let deadline = Instant::now() + LONG;
    while all_logs(&exec, "0000000000000009", None).await.is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!group_gone(pid));
    exec.shutdown("0000000000000009", Duration::from_millis(300))
        .await
        .unwrap();
    eventually("no process of the group to remain", || group_gone(pid)).await;
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<LogLine>) -> Option<LogLine> {
    tokio::time::timeout(LONG, rx.recv())
        .await
        .expect("follow hung")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_tail_and_follow() {
    let r = Reaper::new();
    let exec = executor(r.root());
    let st = run_to_end(
        &exec,
        &sh(
            "000000000000000a",
            "for i in 1 2 3 4 5; do echo line$i; done",
        ),
    )
    .await;
    assert!(st.success());
    let all = all_logs(&exec, "000000000000000a", None).await;
    assert_eq!(
        texts(&all),
        vec!["line1", "line2", "line3", "line4", "line5"]
    );
    let tail = all_logs(&exec, "000000000000000a", Some(2)).await;
    assert_eq!(texts(&tail), vec!["line4", "line5"]);
    assert!(all_logs(&exec, "000000000000000a", Some(0))
        .await
        .is_empty());

    // Follow: the kept lines, then new ones as they come, until the task is removed.
    let run = sh(
        "000000000000000b",
        "echo one; echo two; while [ ! -e go ]; do sleep 0.05; done; echo three; sleep 1000",
    );
    exec.prepare(&run).await.unwrap();
    exec.start("000000000000000b").await.unwrap();
    let work = r.root().join("000000000000000b/work");
    let deadline = Instant::now() + LONG;
    while all_logs(&exec, "000000000000000b", None).await.len() < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rx = exec
        .logs(
            "000000000000000b",
            LogOptions {
                tail: Some(1),
                follow: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await.unwrap().text, "two");
    fs::write(work.join("go"), b"").unwrap();
    assert_eq!(next(&mut rx).await.unwrap().text, "three");
    exec.remove("000000000000000b").await.unwrap();
    assert!(
        next(&mut rx).await.is_none(),
        "follow ends once the task is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_log_bounded() {
    let r = Reaper::new();
    let exec = executor(r.root());
    // ~27 MB of 41-byte lines (about 38 MB of records), then a marker.
    let run = sh(
        "000000000000000c",
        "yes 0123456789012345678901234567890123456789 | head -n 660000; echo the-end",
    );
    assert!(run_to_end(&exec, &run).await.success());
    let dir = r.root().join("000000000000000c");
    let mut total = 0;
    for e in fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if name.starts_with("output.log") {
            total += e.metadata().unwrap().len();
        }
    }
    assert!(total < 35 * 1024 * 1024, "logs hold {total} bytes");
    assert!(total > 20 * 1024 * 1024, "logs hold {total} bytes");
    assert!(dir.join("output.log.2").exists());
    assert!(!dir.join("output.log.3").exists());
    let tail = all_logs(&exec, "000000000000000c", Some(3)).await;
    assert_eq!(
        texts(&tail),
        vec![
            "0123456789012345678901234567890123456789",
            "0123456789012345678901234567890123456789",
            "the-end"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_split() {
    let r = Reaper::new();
    let exec = executor(r.root());
    let run = sh(
        "000000000000000d",
        "head -c 40000 /dev/zero | tr '\\0' x; echo",
    );
    assert!(run_to_end(&exec, &run).await.success());
    let lines = all_logs(&exec, "000000000000000d", None).await;
    let lens: Vec<usize> = lines.iter().map(|l| l.text.len()).collect();
    assert_eq!(lens, vec![16384, 16384, 40000 - 2 * 16384]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_tasks_are_adopted_by_a_new_executor() {
    let r = Reaper::new();
    let pid = {
        let exec = executor(r.root());
        let run = task("000000000000000e", "sleep", &["1000"]);
        exec.prepare(&run).await.unwrap();
        exec.prepare(&sh("000000000000001e", "true")).await.unwrap();
        exec.start("000000000000000e").await.unwrap().pid.unwrap()
    };
    let exec = executor(r.root());
    let adopted = exec.adopt().await.unwrap();
    assert_eq!(adopted.len(), 2);
    assert_eq!(adopted[0].run.task_id, "000000000000000e");
    assert_eq!(adopted[0].run.program, "sleep");
    match &adopted[0].state {
        AdoptedState::Running(d) => assert_eq!(d.pid, Some(pid)),
        other => panic!("{other:?}"),
    }
    assert_eq!(adopted[1].state, AdoptedState::Prepared);
    exec.shutdown("000000000000000e", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(LONG, exec.wait("000000000000000e"))
            .await
            .unwrap()
            .unwrap(),
        ExitStatus::Signal(libc::SIGTERM)
    );
    exec.remove("000000000000000e").await.unwrap();
    assert!(!r.root().join("000000000000000e").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_that_ended_meanwhile_are_adopted_as_exited() {
    let r = Reaper::new();
    {
        let exec = executor(r.root());
        let run = sh("000000000000000f", "sleep 0.3; exit 7");
        exec.prepare(&run).await.unwrap();
        exec.start("000000000000000f").await.unwrap();
    }
    let exit = r.root().join("000000000000000f/exit.json");
    eventually("the shim to record the exit", || exit.exists()).await;
    let exec = executor(r.root());
    let adopted = exec.adopt().await.unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].state, AdoptedState::Exited(ExitStatus::Code(7)));
    assert_eq!(
        exec.wait("000000000000000f").await.unwrap(),
        ExitStatus::Code(7)
    );
    let lines = all_logs(&exec, "000000000000000f", None).await;
    assert!(lines.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_failed_not_panics() {
    let r = Reaper::new();
    let exec = executor(r.root());
    for (id, file, content) in [
        ("00000000000000a1", "run.json", &b"{not json"[..]),
        ("00000000000000a2", "run.json", b""),
    ] {
        let d = r.root().join(id);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(file), content).unwrap();
    }
    // A good run.json with broken pid and exit records.
    exec.prepare(&sh("00000000000000a3", "true")).await.unwrap();
    fs::write(r.root().join("00000000000000a3/task.pid"), b"12 x").unwrap();
    exec.prepare(&sh("00000000000000a4", "true")).await.unwrap();
    fs::write(r.root().join("00000000000000a4/exit.json"), b"{\"Co").unwrap();
    // A directory with no run.json at all, and stray files.
    fs::create_dir_all(r.root().join("00000000000000a5")).unwrap();
    fs::write(r.root().join("stray-file"), b"x").unwrap();

    let adopted = exec.adopt().await.unwrap();
    let ids: Vec<&str> = adopted.iter().map(|a| a.run.task_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "00000000000000a1",
            "00000000000000a2",
            "00000000000000a3",
            "00000000000000a4",
            "00000000000000a5"
        ]
    );
    for a in &adopted {
        match &a.state {
            AdoptedState::Failed(m) => assert!(!m.is_empty()),
            other => panic!("{}: {other:?}", a.run.task_id),
        }
    }
    assert!(exec.wait("00000000000000a4").await.is_err());
    for id in ids {
        exec.remove(id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_task_is_reported() {
    let r = Reaper::new();
    let exec = executor(r.root());
    let run = task("00000000000000b1", "sleep", &["1000"]);
    exec.prepare(&run).await.unwrap();
    let pid = exec.start("00000000000000b1").await.unwrap().pid.unwrap();
    let shim_pid = read_pid(&r.root().join("00000000000000b1/shim.pid")).unwrap();
    // SAFETY: killing the shim and the task group this test started.
    unsafe {
        libc::kill(shim_pid as i32, libc::SIGKILL);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
    match tokio::time::timeout(LONG, exec.wait("00000000000000b1"))
        .await
        .unwrap()
    {
        Err(ExecError::Runtime(m)) => assert_eq!(m, "task process lost"),
        other => panic!("{other:?}"),
    }
    let adopted = executor(r.root()).adopt().await.unwrap();
    assert_eq!(
        adopted[0].state,
        AdoptedState::Failed("task process lost".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_deletes_the_task_and_stops_it_first() {
    let r = Reaper::new();
    let exec = executor(r.root());
    assert!(run_to_end(&exec, &sh("00000000000000c1", "true"))
        .await
        .success());
    exec.remove("00000000000000c1").await.unwrap();
    assert!(!r.root().join("00000000000000c1").exists());
    exec.remove("00000000000000c1").await.unwrap();
    assert!(matches!(
        exec.wait("00000000000000c1").await,
        Err(ExecError::NotFound(_))
    ));

    let run = task("00000000000000c2", "sleep", &["1000"]);
    exec.prepare(&run).await.unwrap();
    let pid = exec.start("00000000000000c2").await.unwrap().pid.unwrap();
    exec.remove("00000000000000c2").await.unwrap();
    assert!(!r.root().join("00000000000000c2").exists());
    eventually("the removed task's group to be gone", || group_gone(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_reported_plainly() {
    let r = Reaper::new();
    let exec = executor(r.root());
    match exec.limits() {
        LimitsSupport::Enforced => {}
        LimitsSupport::NotEnforced(reason) => assert!(!reason.is_empty()),
    }
    // A task with limits runs either way.
    let mut run = sh("00000000000000d1", "exit 0");
    run.limits.memory_bytes = Some(64 << 20);
    run.limits.nano_cpus = Some(500_000_000);
    assert!(run_to_end(&exec, &run).await.success());
}
