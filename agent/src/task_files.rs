//! A task's secrets and configs on its node: files in a directory of its own on a tmpfs (never
//! on disk), written before the task starts and removed when it ends. A process task finds them
//! under `$SHOAL_SECRETS_DIR` and `$SHOAL_CONFIGS_DIR`; a container gets each file as a
//! read-only bind mount at its target (`/run/secrets/NAME` by default, as Swarm's).

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use shoal_cluster::SecretKind;

use crate::wire::TaskFile;

/// Where tasks' files go: a tmpfs every Linux system has.
const TMPFS: &str = "/dev/shm";

/// The files of the tasks of one node.
#[derive(Clone, Debug)]
pub struct TaskFiles {
    root: PathBuf,
}

/// Where a task's files were written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The directory of the secrets (a process task's `SHOAL_SECRETS_DIR`), if it has any.
    pub secrets_dir: Option<PathBuf>,
    /// The directory of the configs (`SHOAL_CONFIGS_DIR`), if it has any.
    pub configs_dir: Option<PathBuf>,
    /// For containers: each file on the node and its path in the container.
    pub mounts: Vec<(PathBuf, String)>,
}

/// The mount table entry's file system type for `path`: the longest mount point above it.
fn fs_type(path: &Path) -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split(' ');
        let (Some(_), Some(point), Some(kind)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let point = point.replace("\\040", " ");
        if path.starts_with(&point) && best.as_ref().is_none_or(|(len, _)| point.len() > *len) {
            best = Some((point.len(), kind.to_string()));
        }
    }
    best.map(|(_, kind)| kind)
}

impl TaskFiles {
    /// The files of node `node` (its id), under `/dev/shm/shoal/<node>`.
    pub fn for_node(node: &str) -> TaskFiles {
        TaskFiles {
            root: Path::new(TMPFS).join("shoal").join(node),
        }
    }

    /// Files under `root` instead (tests).
    pub fn at(root: PathBuf) -> TaskFiles {
        TaskFiles { root }
    }

    /// The directory of task `task` (16 hex digits).
    pub fn dir(&self, task: &str) -> PathBuf {
        self.root.join(task)
    }

    /// Writes a task's files (again, if they are there), refusing to write anywhere but a
    /// memory file system.
    pub fn write(&self, task: &str, files: &[TaskFile], process: bool) -> Result<Written, String> {
        let mut out = Written::default();
        if files.is_empty() {
            return Ok(out);
        }
        let dir = self.dir(task);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        match fs_type(&dir).as_deref() {
            Some("tmpfs" | "ramfs") => {}
            other => {
                return Err(format!(
                    "{} is not on a memory file system ({}): secrets are never written to disk",
                    dir.display(),
                    other.unwrap_or("unknown")
                ))
            }
        }
        for f in files {
            let r = &f.reference;
            let (sub, slot) = match r.kind {
                SecretKind::Secret => ("secrets", &mut out.secrets_dir),
                SecretKind::Config => ("configs", &mut out.configs_dir),
            };
            let base = dir.join(sub);
            // Containers get each file on its own; a relative target may have directories.
            let rel = if process {
                r.target.clone()
            } else {
                r.container_path().trim_start_matches('/').to_string()
            };
            let path = base.join(&rel);
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            let _ = fs::remove_file(&path);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot write {} {}: {e}", r.kind.name(), r.name))?;
            file.write_all(&f.data)
                .map_err(|e| format!("cannot write {} {}: {e}", r.kind.name(), r.name))?;
            drop(file);
            std::os::unix::fs::chown(&path, Some(r.uid), Some(r.gid)).map_err(|e| {
                format!(
                    "cannot give {} {} to {}:{}: {e}",
                    r.kind.name(),
                    r.name,
                    r.uid,
                    r.gid
                )
            })?;
            fs::set_permissions(&path, fs::Permissions::from_mode(r.file_mode(process)))
                .map_err(|e| format!("cannot set the mode of {} {}: {e}", r.kind.name(), r.name))?;
            *slot = Some(base);
            if !process {
                out.mounts.push((path, r.container_path()));
            }
        }
        Ok(out)
    }

    /// Removes a task's files (nothing if it has none), and the node's directory once empty.
    pub fn remove(&self, task: &str) {
        let dir = self.dir(task);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::debug!(task, "secrets and configs removed");
                // Fails while another task has files: they keep it.
                let _ = fs::remove_dir(&self.root);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", dir.display()),
        }
    }

    /// Removes the files of every task but `keep` (those of an earlier run whose task is gone).
    pub fn sweep(&self, keep: &HashSet<String>) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !keep.contains(&name) {
                self.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_cluster::SecretRef;

    fn file(kind: SecretKind, name: &str, target: &str, mode: u32, data: &[u8]) -> TaskFile {
        TaskFile {
            reference: SecretRef {
                kind,
                id: 1,
                name: name.into(),
                target: target.into(),
                uid: 0,
                gid: 0,
                mode,
            },
            data: data.to_vec(),
        }
    }

    fn root() -> PathBuf {
        Path::new(TMPFS)
            .join("shoal-unit")
            .join(format!("{:016x}", rand::random::<u64>()))
    }

    #[test]
    fn process_files_go_under_two_directories_with_their_modes() {
        if fs_type(Path::new(TMPFS)).as_deref() != Some("tmpfs") {
            panic!("{TMPFS} is not a tmpfs on this machine");
        }
        let tf = TaskFiles::at(root());
        let files = [
            file(SecretKind::Secret, "db", "db", 0, b"hunter2"),
            file(SecretKind::Secret, "key", "tls/key.pem", 0o440, b"k"),
            file(SecretKind::Config, "conf", "app.conf", 0, b"a=1"),
        ];
        let w = tf.write("00000000000000aa", &files, true).unwrap();
        let sd = w.secrets_dir.clone().unwrap();
        let cd = w.configs_dir.clone().unwrap();
        assert!(w.mounts.is_empty());
        assert_eq!(fs::read(sd.join("db")).unwrap(), b"hunter2");
        assert_eq!(fs::read(sd.join("tls/key.pem")).unwrap(), b"k");
        assert_eq!(fs::read(cd.join("app.conf")).unwrap(), b"a=1");
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(sd.join("db")), 0o400);
        assert_eq!(mode(sd.join("tls/key.pem")), 0o440);
        assert_eq!(mode(tf.dir("00000000000000aa")), 0o700);
        // Written again (an adopted task): the same content.
        tf.write("00000000000000aa", &files, true).unwrap();
        assert_eq!(fs::read(sd.join("db")).unwrap(), b"hunter2");
        tf.remove("00000000000000aa");
        assert!(!tf.dir("00000000000000aa").exists());
    }

    #[test]
    fn container_files_are_mounted_at_swarm_paths_and_swept() {
        let tf = TaskFiles::at(root());
        let files = [
            file(SecretKind::Secret, "db", "db", 0, b"x"),
            file(SecretKind::Config, "conf", "/etc/app.conf", 0, b"y"),
        ];
        let w = tf.write("00000000000000bb", &files, false).unwrap();
        let targets: Vec<&str> = w.mounts.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(targets, ["/run/secrets/db", "/etc/app.conf"]);
        for (host, _) in &w.mounts {
            assert!(host.starts_with(tf.dir("00000000000000bb")));
            assert_eq!(
                fs::metadata(host).unwrap().permissions().mode() & 0o777,
                0o444
            );
        }
        tf.write("00000000000000cc", &files, false).unwrap();
        tf.sweep(&HashSet::from(["00000000000000cc".to_string()]));
        assert!(!tf.dir("00000000000000bb").exists());
        assert!(tf.dir("00000000000000cc").exists());
        tf.sweep(&HashSet::new());
        assert!(!tf.dir("00000000000000cc").exists());
    }

    #[test]
    fn a_disk_is_refused() {
        let tf = TaskFiles::at(
            std::env::temp_dir().join(format!("shoal-not-tmpfs-{:016x}", rand::random::<u64>())),
        );
        let files = [file(SecretKind::Secret, "db", "db", 0, b"x")];
        match fs_type(&std::env::temp_dir()).as_deref() {
            Some("tmpfs" | "ramfs") => {} // /tmp is a tmpfs here: nothing to refuse.
            _ => {
                let e = tf.write("00000000000000dd", &files, true).unwrap_err();
                assert!(e.contains("not on a memory file system"), "{e}");
                assert!(!tf.dir("00000000000000dd").join("secrets").exists());
            }
        }
        tf.remove("00000000000000dd");
    }
}
