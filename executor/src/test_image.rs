//! Helpers for tests and benchmarks of the container runtime: a tiny busybox image built without
//! any registry, and a way to get an engine or skip.
//!
//! The image is `FROM scratch` with the host's statically linked `/bin/busybox` (Debian's
//! `busybox-static`) and links for the usual applets (`sh`, `sleep`, `echo`, `cat`, `httpd`,
//! `nc`, `wget`, …), built through the engine's build API from a tar context made in memory.

use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;

use crate::ContainerExecutor;

/// The host binary the image is made of.
pub const BUSYBOX: &str = "/bin/busybox";

/// The tag tests use unless they need another.
pub const DEFAULT_TAG: &str = "shoal-test/busybox:1";

/// The applets linked to `/bin/busybox` in the image.
pub const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "sleep",
    "echo",
    "cat",
    "httpd",
    "nc",
    "wget",
    "true",
    "false",
    "kill",
    "ls",
    "id",
    "touch",
    "mkdir",
    "rm",
    "env",
    "pwd",
    "printf",
    "test",
    "ps",
    "yes",
    "seq",
    "head",
    "tail",
    "grep",
    "wc",
    "date",
    "hostname",
    "top",
    "ln",
    "cp",
    "mv",
    "chmod",
    "whoami",
    "dd",
    "uname",
    "stat",
    "sha256sum",
];

/// The image label holding the fingerprint of the build context: a tag made by someone else
/// (engines are shared) or by an older helper is rebuilt.
pub const FINGERPRINT_LABEL: &str = "com.shoal.test-image";

/// Serializes builds within one process (tests run in parallel).
static BUILD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The build context: a Dockerfile, `bin/busybox` and its applet links, an empty `tmp`.
fn context() -> Result<Vec<u8>, String> {
    let busybox = std::fs::read(BUSYBOX).map_err(|e| format!("cannot read {BUSYBOX}: {e}"))?;
    let dockerfile = b"FROM scratch\nCOPY bin /bin\nCOPY tmp /tmp\nCMD [\"sh\"]\n";
    let mut tar = tar::Builder::new(Vec::new());
    let mut file = |path: &str, mode: u32, data: &[u8]| -> Result<(), String> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        tar.append_data(&mut h, path, data)
            .map_err(|e| format!("tar {path}: {e}"))
    };
    file("Dockerfile", 0o644, dockerfile)?;
    file("bin/busybox", 0o755, &busybox)?;
    file("tmp/.keep", 0o644, b"")?;
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        let path = format!("bin/{applet}");
        tar.append_link(&mut h, &path, "busybox")
            .map_err(|e| format!("tar {path}: {e}"))?;
    }
    tar.into_inner().map_err(|e| format!("tar: {e}"))
}

/// FNV-1a of the build context, as 16 hex digits.
fn fingerprint(context: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in context {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Makes sure the image `tag` exists on the engine with this helper's content: builds it (see
/// the module docs) unless it is there already, labelled with the same context fingerprint.
/// Never pulls.
pub async fn ensure(docker: &ContainerExecutor, tag: &str) -> Result<(), String> {
    let _guard = BUILD.lock().await;
    let engine = docker.docker().map_err(|e| e.to_string())?;
    let tar = context()?;
    let print = fingerprint(&tar);
    let current = |image: &bollard::models::ImageInspect| {
        image
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(FINGERPRINT_LABEL))
            == Some(&print)
    };
    if let Ok(image) = engine.inspect_image(tag).await {
        if current(&image) {
            return Ok(());
        }
    }
    let mut labels = std::collections::HashMap::new();
    labels.insert(FINGERPRINT_LABEL, print.as_str());
    let options = BuildImageOptionsBuilder::new()
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .build();
    let mut stream = engine.build_image(options, None, Some(bollard::body_full(tar.into())));
    let mut last = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(s) = info.stream {
                    if !s.trim().is_empty() {
                        last = s.trim().to_string();
                    }
                }
            }
            Err(e) => return Err(format!("building {tag}: {e}")),
        }
    }
    engine
        .inspect_image(tag)
        .await
        .map(|_| ())
        .map_err(|e| format!("building {tag} left no image ({last}): {e}"))
}

/// An executor on the default engine (`DOCKER_HOST` or the local socket) for tests, with the
/// test image [`DEFAULT_TAG`] built. Without a usable engine: `None`, after telling stderr that
/// the container tests are skipped and why; but with `SHOAL_REQUIRE_DOCKER=1` it panics with the
/// reason instead, so that CI cannot pass without an engine.
pub async fn engine_for_tests(node_id: &str) -> Option<ContainerExecutor> {
    let ready = async {
        let exec = ContainerExecutor::connect(None, node_id)
            .await
            .map_err(|e| e.to_string())?;
        ensure(&exec, DEFAULT_TAG).await?;
        Ok::<_, String>(exec)
    };
    match ready.await {
        Ok(exec) => Some(exec),
        Err(reason) => {
            if std::env::var("SHOAL_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("SHOAL_REQUIRE_DOCKER=1 but the Docker Engine is not usable: {reason}");
            }
            eprintln!("skipping the container tests: the Docker Engine is not usable: {reason}");
            None
        }
    }
}

/// Whether the container tests can run (see [`engine_for_tests`], whose rules it follows).
pub async fn require_docker() -> bool {
    engine_for_tests("shoal-probe").await.is_some()
}
