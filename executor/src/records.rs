//! The files a task leaves in its directory, and the small process helpers around them (pid
//! records with start times, liveness, signals to process groups, program resolution).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{ExitStatus, TaskRun};

/// The task's spec, written at prepare.
pub(crate) const RUN_FILE: &str = "run.json";
/// The task's pid and start time, written by the shim once the task is spawned.
pub(crate) const TASK_PID_FILE: &str = "task.pid";
/// The shim's own pid and start time.
pub(crate) const SHIM_PID_FILE: &str = "shim.pid";
/// How the task ended, written by the shim.
pub(crate) const EXIT_FILE: &str = "exit.json";
/// Why the shim could not start the task.
pub(crate) const START_ERROR_FILE: &str = "start-error";
/// The shim's own diagnostics (its stderr).
pub(crate) const SHIM_LOG_FILE: &str = "shim.log";
/// The default working directory, inside the task directory.
pub(crate) const WORK_DIR: &str = "work";

/// The PATH used when neither the task nor the agent has one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether `id` can name a task directory (no separators, dots or empty names).
pub(crate) fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Writes `data` to `path` so that readers see the old file or the whole new one: a temporary
/// file, fsynced, renamed over `path`, then the directory fsynced.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads a file, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Reads and parses `run.json` of a task directory.
pub(crate) fn read_run(dir: &Path) -> Result<Option<TaskRun>, String> {
    let path = dir.join(RUN_FILE);
    match read_optional(&path)? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
    }
}

/// Reads and parses `exit.json` of a task directory.
pub(crate) fn read_exit(dir: &Path) -> Result<Option<ExitStatus>, String> {
    let path = dir.join(EXIT_FILE);
    match read_optional(&path)? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
    }
}

/// Reads the start error the shim left, if any.
pub(crate) fn read_start_error(dir: &Path) -> Option<String> {
    match read_optional(&dir.join(START_ERROR_FILE)) {
        Ok(Some(b)) => Some(String::from_utf8_lossy(&b).trim().to_string()),
        Ok(None) => None,
        Err(e) => Some(e),
    }
}

/// A process, identified by its pid and its start time (so that a reused pid is not mistaken
/// for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PidRecord {
    /// The pid (always ≥ 2: never our own group or "every process").
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat (clock ticks after boot).
    pub start_time: u64,
}

impl PidRecord {
    /// The record of a live process.
    pub fn of(pid: u32) -> Result<Self, String> {
        let stat = read_proc_stat(pid).ok_or_else(|| format!("cannot read /proc/{pid}/stat"))?;
        Ok(PidRecord {
            pid,
            start_time: stat.start_time,
        })
    }

    /// The file format: `<pid> <start time>\n`.
    pub fn format(&self) -> String {
        format!("{} {}\n", self.pid, self.start_time)
    }

    /// Parses [`PidRecord::format`]'s output.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut it = s.split_whitespace();
        let pid: u32 = it
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("bad pid record {s:?}"))?;
        let start_time: u64 = it
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("bad pid record {s:?}"))?;
        if pid < 2 || pid > i32::MAX as u32 || it.next().is_some() {
            return Err(format!("bad pid record {s:?}"));
        }
        Ok(PidRecord { pid, start_time })
    }

    /// Reads a record file, `None` when it does not exist.
    pub fn read(path: &Path) -> Result<Option<Self>, String> {
        match read_optional(path)? {
            None => Ok(None),
            Some(b) => Self::parse(&String::from_utf8_lossy(&b))
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
        }
    }

    /// Whether this very process is still running (same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        match read_proc_stat(self.pid) {
            Some(st) => st.start_time == self.start_time && st.state != 'Z' && st.state != 'X',
            None => false,
        }
    }
}

/// The fields of /proc/<pid>/stat we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: R, S, D, Z, …
    pub state: char,
    /// Field 22: the start time in clock ticks after boot.
    pub start_time: u64,
}

/// Parses /proc/<pid>/stat (the command name may hold spaces and parentheses: fields are
/// counted after its last ')').
pub(crate) fn parse_proc_stat(s: &str) -> Option<ProcStat> {
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 is fields[19].
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// Reads /proc/<pid>/stat, `None` when the process does not exist.
pub(crate) fn read_proc_stat(pid: u32) -> Option<ProcStat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&s)
}

/// Whether any process (zombies included) is left in process group `pgid`.
pub(crate) fn group_exists(pgid: u32) -> bool {
    if pgid < 2 || pgid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(-(pgid as i32), 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends `signal` to process group `pgid`; false when no process was there.
pub(crate) fn signal_group(pgid: u32, signal: i32) -> bool {
    if pgid < 2 || pgid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: a plain kill(2) on a negative pid ≤ -2, i.e. one process group.
    unsafe { libc::kill(-(pgid as i32), signal) == 0 }
}

/// The task's environment: exactly its own variables, plus the agent's PATH (or a default PATH)
/// when the task sets none, so that programs it runs by name are found.
pub(crate) fn task_env(run: &TaskRun) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = run
        .env
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
    if !run.env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), agent_path()));
    }
    env
}

/// The agent's PATH, or a default one.
fn agent_path() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into())
}

/// The PATH the task's program is searched in: the task's PATH if it sets one, else the agent's.
pub(crate) fn task_path(run: &TaskRun) -> OsString {
    run.env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| OsString::from(v))
        .unwrap_or_else(agent_path)
}

/// The task's working directory: its own, or `<task dir>/work`.
pub(crate) fn task_workdir(run: &TaskRun, dir: &Path) -> PathBuf {
    run.workdir.clone().unwrap_or_else(|| dir.join(WORK_DIR))
}

/// Finds the program to execute the way a shell does: a name without '/' is searched in `path`;
/// a relative path with '/' is taken from `workdir`. Errors read like Docker's and Go's.
pub(crate) fn resolve_program(
    program: &str,
    path: &OsStr,
    workdir: &Path,
) -> Result<PathBuf, String> {
    if program.is_empty() || !program.contains('/') {
        for dir in path.as_bytes().split(|b| *b == b':') {
            if dir.is_empty() || program.is_empty() {
                continue;
            }
            let candidate = Path::new(OsStr::from_bytes(dir)).join(program);
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
        }
        return Err(format!(
            "exec: \"{program}\": executable file not found in $PATH"
        ));
    }
    let candidate = workdir.join(program);
    match fs::metadata(&candidate) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("exec: \"{program}\": no such file or directory"))
        }
        Err(e) => Err(format!("exec: \"{program}\": {e}")),
        Ok(m) if m.is_dir() => Err(format!("exec: \"{program}\": is a directory")),
        Ok(m) if m.permissions().mode() & 0o111 == 0 || !m.is_file() => {
            Err(format!("exec: \"{program}\": permission denied"))
        }
        Ok(_) => Ok(candidate),
    }
}

fn is_executable_file(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_parses_names_with_spaces_and_parens() {
        let line =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        let st = parse_proc_stat(line).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.start_time, 987654);
        assert!(parse_proc_stat("garbage").is_none());
        assert!(parse_proc_stat("1 (x) S 1 2").is_none());
    }

    #[test]
    fn own_stat_is_readable_and_alive() {
        let me = PidRecord::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let other = PidRecord {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }

    #[test]
    fn pid_records_round_trip_and_reject_junk() {
        let r = PidRecord {
            pid: 42,
            start_time: 7,
        };
        assert_eq!(PidRecord::parse(&r.format()).unwrap(), r);
        for bad in [
            "",
            "42",
            "x 7",
            "1 7",
            "0 7",
            "-5 7",
            "42 7 9",
            "4294967295 1",
        ] {
            assert!(PidRecord::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn task_ids_cannot_escape_the_root() {
        assert!(valid_task_id("0123456789abcdef"));
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(!valid_task_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn programs_resolve_like_a_shell() {
        let p = resolve_program(
            "sh",
            OsStr::new("/nonexistent:/bin:/usr/bin"),
            Path::new("/"),
        );
        assert!(p.unwrap().ends_with("sh"));
        assert_eq!(
            resolve_program("no-such-prog-xyz", OsStr::new("/bin"), Path::new("/")).unwrap_err(),
            "exec: \"no-such-prog-xyz\": executable file not found in $PATH"
        );
        assert!(
            resolve_program("./nope", OsStr::new("/bin"), Path::new("/"))
                .unwrap_err()
                .contains("no such file")
        );
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("data"), b"x").unwrap();
        assert_eq!(
            resolve_program("./data", OsStr::new("/bin"), dir.path()).unwrap_err(),
            "exec: \"./data\": permission denied"
        );
        assert!(resolve_program("data", OsStr::new(dir.path()), Path::new("/")).is_err());
        fs::set_permissions(dir.path().join("data"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            resolve_program("data", OsStr::new(dir.path()), Path::new("/")).unwrap(),
            dir.path().join("data")
        );
        assert!(resolve_program(".", OsStr::new("/bin"), dir.path())
            .unwrap_err()
            .contains("executable file not found"));
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(EXIT_FILE);
        write_atomic(&p, b"{\"Code\":3}").unwrap();
        assert_eq!(read_exit(dir.path()).unwrap(), Some(ExitStatus::Code(3)));
        write_atomic(&p, b"{\"Signal\":9}").unwrap();
        assert_eq!(read_exit(dir.path()).unwrap(), Some(ExitStatus::Signal(9)));
        fs::write(&p, b"{trunc").unwrap();
        assert!(read_exit(dir.path()).is_err());
        assert_eq!(read_run(dir.path()).unwrap(), None);
    }
}
