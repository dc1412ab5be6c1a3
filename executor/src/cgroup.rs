//! cgroup v2 limits: detection (once, when the executor is created) and one cgroup per task
//! under `<agent's cgroup>/shoal`, with `memory.max` and `cpu.max`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Limits;

/// Where cgroup v2 is expected.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// statfs magic of a cgroup2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// The cpu.max period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The `shoal` cgroup under which every task gets its own.
#[derive(Clone, Debug)]
pub(crate) struct Cgroups {
    parent: PathBuf,
}

/// Whether `mount` is a cgroup2 file system.
fn is_cgroup2(mount: &Path) -> bool {
    if mount.join("cgroup.controllers").exists() {
        return true;
    }
    let Ok(c) = CString::new(mount.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct we own from a valid NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// The process's cgroup v2 path from /proc/self/cgroup (the `0::<path>` line).
pub(crate) fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| p.starts_with('/'))
}

/// Whether a cgroup.controllers / cgroup.subtree_control listing holds memory and cpu.
fn has_memory_and_cpu(list: &str) -> bool {
    let words: Vec<&str> = list.split_whitespace().collect();
    words.contains(&"memory") && words.contains(&"cpu")
}

/// Makes sure the children of `dir` get the memory and cpu controllers.
fn enable_controllers(dir: &Path) -> Result<(), String> {
    let path = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if has_memory_and_cpu(&current) {
        return Ok(());
    }
    fs::write(&path, "+memory +cpu").map_err(|e| {
        format!(
            "cannot enable the memory and cpu controllers in {}: {e}",
            path.display()
        )
    })
}

/// Detects whether limits can be enforced here; the error is the precise reason they cannot.
pub(crate) fn detect() -> Result<Cgroups, String> {
    let mount = Path::new(CGROUP_MOUNT);
    if !is_cgroup2(mount) {
        return Err(format!(
            "cgroup v2 is not mounted at {CGROUP_MOUNT} (limits are not enforced)"
        ));
    }
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e} (limits are not enforced)"))?;
    let own = own_cgroup(&own).ok_or_else(|| {
        "the agent is not in a cgroup v2 hierarchy (limits are not enforced)".to_string()
    })?;
    let base = mount.join(own.trim_start_matches('/'));
    let controllers = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    if !has_memory_and_cpu(&controllers) {
        return Err(format!(
            "the memory and cpu controllers are not delegated to {} (limits are not enforced)",
            base.display()
        ));
    }
    enable_controllers(&base).map_err(|e| format!("{e} (limits are not enforced)"))?;
    let parent = base.join("shoal");
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "cannot create {}: {e} (limits are not enforced)",
                parent.display()
            ))
        }
    }
    enable_controllers(&parent).map_err(|e| format!("{e} (limits are not enforced)"))?;
    Ok(Cgroups { parent })
}

/// The `cpu.max` value for a CPU limit: quota and period in microseconds.
pub(crate) fn cpu_max(nano_cpus: Option<u64>) -> String {
    match nano_cpus {
        None | Some(0) => format!("max {CPU_PERIOD_US}"),
        Some(n) => {
            let quota = (n as u128 * CPU_PERIOD_US as u128 / 1_000_000_000) as u64;
            // The kernel refuses quotas under 1 ms.
            format!("{} {CPU_PERIOD_US}", quota.max(1000))
        }
    }
}

/// The `memory.max` value for a memory limit.
pub(crate) fn memory_max(bytes: Option<u64>) -> String {
    match bytes {
        None | Some(0) => "max".to_string(),
        Some(b) => b.to_string(),
    }
}

impl Cgroups {
    /// The cgroup directory of a task.
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.parent.join(task_id)
    }

    /// Creates the task's cgroup with its limits.
    pub fn create_task(&self, task_id: &str, limits: &Limits) -> Result<PathBuf, String> {
        let dir = self.task_dir(task_id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create cgroup {}: {e}", dir.display())),
        }
        for (file, value) in [
            ("memory.max", memory_max(limits.memory_bytes)),
            ("cpu.max", cpu_max(limits.nano_cpus)),
        ] {
            fs::write(dir.join(file), &value)
                .map_err(|e| format!("cannot write {value:?} to {}/{file}: {e}", dir.display()))?;
        }
        if let Some(pids) = limits.pids {
            // The pids controller only when a task asks for it: a host without it still runs
            // every other task, and this one fails saying why rather than run unlimited.
            let control = self.parent.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&control)
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "pids"));
            if !enabled {
                fs::write(&control, "+pids").map_err(|e| {
                    format!(
                        "cannot apply the pids limit: the pids controller cannot be enabled in {}: {e}",
                        self.parent.display()
                    )
                })?;
            }
            let file = dir.join("pids.max");
            fs::write(&file, pids.to_string())
                .map_err(|e| format!("cannot write {pids} to {}: {e}", file.display()))?;
        }
        Ok(dir)
    }

    /// Removes the task's cgroup (retrying while its last processes are being reaped).
    pub async fn remove_task(&self, task_id: &str) -> Result<(), String> {
        let dir = self.task_dir(task_id);
        let mut tries = 0;
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if tries < 50 => {
                    let _ = e;
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(format!("cannot remove cgroup {}: {e}", dir.display())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_values() {
        assert_eq!(cpu_max(None), "max 100000");
        assert_eq!(cpu_max(Some(1_000_000_000)), "100000 100000");
        assert_eq!(cpu_max(Some(2_500_000_000)), "250000 100000");
        assert_eq!(cpu_max(Some(1)), "1000 100000");
        assert_eq!(memory_max(None), "max");
        assert_eq!(memory_max(Some(64 << 20)), "67108864");
    }

    #[test]
    fn own_cgroup_line() {
        let v1 = "4:memory:/x\n1:cpu:/\n0::/\n";
        assert_eq!(own_cgroup(v1), Some("/"));
        assert_eq!(
            own_cgroup("0::/system.slice/shoal.service\n"),
            Some("/system.slice/shoal.service")
        );
        assert_eq!(own_cgroup("1:name=systemd:/\n"), None);
    }

    #[test]
    fn a_task_cgroup_gets_its_limits_and_the_pids_controller_only_when_asked() {
        // A directory standing in for the cgroup filesystem: the files the kernel would offer.
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "cpu memory").unwrap();
        let c = Cgroups {
            parent: root.path().to_path_buf(),
        };
        let dir = c
            .create_task(
                "t1",
                &Limits {
                    nano_cpus: Some(500_000_000),
                    memory_bytes: Some(64 << 20),
                    pids: None,
                },
            )
            .unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(&dir.join("memory.max")), "67108864");
        assert!(!dir.join("pids.max").exists());
        assert_eq!(
            read(&root.path().join("cgroup.subtree_control")),
            "cpu memory"
        );

        let dir = c
            .create_task(
                "t2",
                &Limits {
                    pids: Some(100),
                    ..Limits::default()
                },
            )
            .unwrap();
        assert_eq!(read(&dir.join("pids.max")), "100");
        assert_eq!(read(&dir.join("memory.max")), "max");
        assert_eq!(read(&root.path().join("cgroup.subtree_control")), "+pids");
    }

    #[test]
    fn detection_gives_a_reason_or_a_parent() {
        match detect() {
            Ok(c) => assert!(c.parent.ends_with("shoal")),
            Err(reason) => assert!(reason.contains("not enforced"), "{reason}"),
        }
    }
}
