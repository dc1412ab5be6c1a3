//! The task shim: one small process per task, detached from the agent (its own session), that
//! spawns the task in its own session and process group (and cgroup), copies its output into the
//! rotated log, reaps it and records how it ended. The agent can crash or restart meanwhile.
//!
//! Protocol with the executor: arguments `--dir <task dir> --program <resolved program>
//! [--cgroup <cgroup dir>]`; once the task is spawned and `task.pid` written, one line on stdout:
//! `ok <pid>`, or `invalid <message>` / `runtime <message>` when it could not be started.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::logs::{now_ms, LineSplitter, LogWriter, KEEP_ROTATED, MAX_LINE_BYTES, MAX_LOG_BYTES};
use crate::records::{
    read_run, signal_group, task_env, task_workdir, write_atomic, PidRecord, EXIT_FILE,
    SHIM_PID_FILE, START_ERROR_FILE, TASK_PID_FILE,
};
use crate::{ExitStatus, Stream};

/// How long the shim waits for the output pipes to close after the task's group is gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The shim's arguments.
#[derive(Debug, PartialEq, Eq)]
struct ShimArgs {
    dir: PathBuf,
    program: PathBuf,
    cgroup: Option<PathBuf>,
}

impl ShimArgs {
    fn parse(args: &[String]) -> Result<Self, String> {
        let (mut dir, mut program, mut cgroup) = (None, None, None);
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let slot = match a.as_str() {
                "--dir" => &mut dir,
                "--program" => &mut program,
                "--cgroup" => &mut cgroup,
                other => return Err(format!("unknown argument {other:?}")),
            };
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            *slot = Some(PathBuf::from(v));
        }
        Ok(ShimArgs {
            dir: dir.ok_or("--dir is required")?,
            program: program.ok_or("--program is required")?,
            cgroup,
        })
    }
}

/// The shim's whole program (the agent calls it for `__task-shim`, with the arguments after
/// it); returns the process exit code. It never returns before the task has ended.
pub fn shim_main(args: Vec<String>) -> i32 {
    let args = match ShimArgs::parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shoal task shim: {e}");
            return 2;
        }
    };
    // SAFETY: plain libc calls on our own process: a new session (so the agent's terminal,
    // group or death does not reach us), signals that must not kill the supervisor, and
    // becoming the reaper of the task's orphans.
    unsafe {
        libc::setsid();
        for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let _ = std::env::set_current_dir("/");
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shoal task shim: {}: {e}", args.dir.display());
            1
        }
    }
}

/// Tells the executor how the start went, then detaches stdout (the executor may be gone).
fn report(line: &str) {
    let mut out = io::stdout();
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto our own stdout descriptor.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

/// Records a start failure and reports it.
fn fail_start(dir: &Path, kind: &str, msg: &str) -> Result<(), String> {
    let _ = write_atomic(&dir.join(START_ERROR_FILE), msg.as_bytes());
    report(&format!("{kind} {}", msg.replace('\n', " ")));
    Err(msg.to_string())
}

fn run(args: &ShimArgs) -> Result<(), String> {
    let dir = &args.dir;
    let me = PidRecord::of(std::process::id())?;
    write_atomic(&dir.join(SHIM_PID_FILE), me.format().as_bytes())
        .map_err(|e| format!("writing {SHIM_PID_FILE}: {e}"))?;
    let task = match read_run(dir) {
        Ok(Some(t)) => t,
        Ok(None) => return fail_start(dir, "runtime", "the task's run.json is missing"),
        Err(e) => return fail_start(dir, "runtime", &e),
    };
    let workdir = task_workdir(&task, dir);
    if !workdir.is_dir() {
        let msg = format!("workdir {}: no such directory", workdir.display());
        return fail_start(dir, "invalid", &msg);
    }
    let cgroup_procs = match &args.cgroup {
        None => None,
        Some(cg) => match OpenOptions::new().write(true).open(cg.join("cgroup.procs")) {
            Ok(f) => Some(f),
            Err(e) => {
                let msg = format!("cannot open {}/cgroup.procs: {e}", cg.display());
                return fail_start(dir, "runtime", &msg);
            }
        },
    };
    let cgroup_fd = cgroup_procs.as_ref().map(|f| f.as_raw_fd());

    let mut cmd = Command::new(&args.program);
    cmd.arg0(&task.program)
        .args(&task.args)
        .env_clear()
        .envs(
            task_env(&task)
                .into_iter()
                .collect::<Vec<(OsString, OsString)>>(),
        )
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe calls: setsid, signal dispositions
    // and mask reset, and write(2) of "0" to the cgroup.procs descriptor opened before forking.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            for sig in [
                libc::SIGHUP,
                libc::SIGINT,
                libc::SIGTERM,
                libc::SIGPIPE,
                libc::SIGQUIT,
            ] {
                libc::signal(sig, libc::SIG_DFL);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if let Some(fd) = cgroup_fd {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let invalid = matches!(
                e.raw_os_error(),
                Some(
                    libc::ENOENT
                        | libc::EACCES
                        | libc::ENOEXEC
                        | libc::ENOTDIR
                        | libc::EISDIR
                        | libc::ELOOP
                        | libc::ENAMETOOLONG
                        | libc::E2BIG
                        | libc::EPERM
                )
            );
            let msg = format!("exec: \"{}\": {e}", task.program);
            return fail_start(dir, if invalid { "invalid" } else { "runtime" }, &msg);
        }
    };
    drop(cgroup_procs);
    let pid = child.id();
    let record = PidRecord::of(pid).and_then(|r| {
        write_atomic(&dir.join(TASK_PID_FILE), r.format().as_bytes())
            .map_err(|e| format!("writing {TASK_PID_FILE}: {e}"))
    });
    if let Err(e) = record {
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait();
        return fail_start(dir, "runtime", &e);
    }
    report(&format!("ok {pid}"));

    // Copy the output into the log, one thread per stream.
    let writer = match LogWriter::open(dir, MAX_LOG_BYTES, KEEP_ROTATED) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("shoal task shim: opening the log: {e} (output is discarded)");
            None
        }
    };
    let writer = Arc::new(Mutex::new(writer));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut pumps = 0;
    if let Some(out) = child.stdout.take() {
        pumps += spawn_pump(out, Stream::Stdout, writer.clone(), done_tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        pumps += spawn_pump(err, Stream::Stderr, writer.clone(), done_tx.clone());
    }
    drop(done_tx);
    // The std handle is not used to wait: as a subreaper we reap every orphan ourselves.
    drop(child);

    let status = wait_for(pid)?;
    // Whatever the task left in its group goes with it.
    signal_group(pid, libc::SIGKILL);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    reap_orphans(deadline);
    if let Ok(mut w) = writer.lock() {
        if let Some(w) = w.as_mut() {
            w.flush();
        }
    }
    let json = serde_json::to_vec(&status).map_err(|e| e.to_string())?;
    write_atomic(&dir.join(EXIT_FILE), &json).map_err(|e| format!("writing {EXIT_FILE}: {e}"))
}

/// Starts a thread copying one output stream into the log; returns 1 if it runs.
fn spawn_pump(
    mut pipe: impl Read + Send + 'static,
    stream: Stream,
    writer: Arc<Mutex<Option<LogWriter>>>,
    done: mpsc::Sender<()>,
) -> usize {
    let spawned = std::thread::Builder::new()
        .name(format!("pump-{stream:?}"))
        .spawn(move || {
            let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let ts = now_ms();
                if let Ok(mut guard) = writer.lock() {
                    match guard.as_mut() {
                        Some(w) => {
                            splitter.push(&buf[..n], &mut |line| w.write_line(ts, stream, line));
                            w.flush();
                        }
                        None => splitter.push(&buf[..n], &mut |_| {}),
                    }
                }
            }
            if let Ok(mut guard) = writer.lock() {
                if let Some(w) = guard.as_mut() {
                    let ts = now_ms();
                    splitter.finish(&mut |line| w.write_line(ts, stream, line));
                    w.flush();
                }
            }
            let _ = done.send(());
        });
    usize::from(spawned.is_ok())
}

/// Reaps children until the task (`pid`) has ended; returns how it ended.
fn wait_for(pid: u32) -> Result<ExitStatus, String> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("waiting for the task: {e}"));
        }
        if r as u32 == pid {
            if libc::WIFEXITED(status) {
                return Ok(ExitStatus::Code(libc::WEXITSTATUS(status)));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(ExitStatus::Signal(libc::WTERMSIG(status)));
            }
        }
    }
}

/// Reaps what is left of the task's orphans, until none is left or `deadline`.
fn reap_orphans(deadline: Instant) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return; // ECHILD: nothing left
        }
        if r == 0 {
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        let a: Vec<String> = ["--dir", "/d", "--program", "/bin/sh", "--cgroup", "/c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            ShimArgs::parse(&a).unwrap(),
            ShimArgs {
                dir: "/d".into(),
                program: "/bin/sh".into(),
                cgroup: Some("/c".into())
            }
        );
        assert!(ShimArgs::parse(&a[..2]).is_err());
        assert!(ShimArgs::parse(&["--dir".to_string()]).is_err());
        assert!(ShimArgs::parse(&["--bogus".to_string(), "x".to_string()]).is_err());
    }
}
