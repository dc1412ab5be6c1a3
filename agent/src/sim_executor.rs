//! An executor that runs nothing: its tasks live in memory on tokio's clock, so that
//! simulations (turmoil) and in-process tests exercise the whole task path — dispatch,
//! supervision, reports, adoption after an agent restart — without processes.
//!
//! Programs: `sim-exit CODE MS` ends with exit code CODE after MS milliseconds; `sim-reject`
//! fails to start; anything else runs until it is shut down. Keep one `SimExecutor` across an
//! agent's restarts (it stands for the machine) and the restarted agent re-adopts its tasks.
//! A `sim-exit` timer lives on the runtime that started the task; when a restart replaced that
//! runtime (turmoil's crash and bounce), adoption arms it again with the whole duration (the
//! time the task ran while no agent watched is not counted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_executor::{
    AdoptedState, AdoptedTask, BoxFuture, ExecError, Executor, ExitStatus, LimitsSupport, LogLine,
    LogOptions, RuntimeDetails, TaskRun,
};
use tokio::sync::{mpsc, watch};

struct SimTask {
    run: TaskRun,
    started: bool,
    /// `sim-exit`: the exit code and the milliseconds it runs.
    exits_after: Option<(i32, u64)>,
    /// Some once it ended.
    exit: watch::Sender<Option<ExitStatus>>,
}

/// The in-memory executor (runtime "process", so that services need no special flag).
#[derive(Clone, Default)]
pub struct SimExecutor {
    tasks: Arc<Mutex<HashMap<String, SimTask>>>,
    pids: Arc<std::sync::atomic::AtomicU32>,
    starts: Arc<std::sync::atomic::AtomicU64>,
}

/// Ends the task with `code` after `after` ms of the current runtime's clock (first end wins).
fn arm(exit: watch::Sender<Option<ExitStatus>>, code: i32, after: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(after)).await;
        exit.send_if_modified(|e| {
            let first = e.is_none();
            if first {
                *e = Some(ExitStatus::Code(code));
            }
            first
        });
    });
}

impl SimExecutor {
    /// A machine with no tasks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Task ids that are running now.
    pub fn running(&self) -> Vec<String> {
        let t = self.tasks.lock().expect("tasks");
        t.iter()
            .filter(|(_, s)| s.started && s.exit.borrow().is_none())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The runs of the tasks running now (which service, which slot).
    pub fn running_runs(&self) -> Vec<TaskRun> {
        let t = self.tasks.lock().expect("tasks");
        t.values()
            .filter(|s| s.started && s.exit.borrow().is_none())
            .map(|s| s.run.clone())
            .collect()
    }

    /// Tasks started so far (every start, adoptions not counted).
    pub fn starts(&self) -> u64 {
        self.starts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ends a running task with `code` (a crash, as seen from the agent).
    pub fn kill(&self, task_id: &str, code: i32) {
        if let Some(t) = self.tasks.lock().expect("tasks").get(task_id) {
            t.exit.send_if_modified(|e| {
                let first = e.is_none();
                if first {
                    *e = Some(ExitStatus::Code(code));
                }
                first
            });
        }
    }

    /// Ends every task (the machine lost power).
    pub fn kill_all(&self) {
        self.tasks.lock().expect("tasks").clear();
    }
}

impl Executor for SimExecutor {
    fn runtime(&self) -> &'static str {
        "process"
    }

    fn limits(&self) -> LimitsSupport {
        LimitsSupport::NotEnforced("simulated executor".into())
    }

    fn prepare<'a>(&'a self, run: &'a TaskRun) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move {
            let mut t = self.tasks.lock().expect("tasks");
            t.entry(run.task_id.clone()).or_insert_with(|| SimTask {
                run: run.clone(),
                started: false,
                exits_after: None,
                exit: watch::channel(None).0,
            });
            Ok(())
        })
    }

    fn start<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<RuntimeDetails, ExecError>> {
        Box::pin(async move {
            let (exits_after, exit) = {
                let mut t = self.tasks.lock().expect("tasks");
                let s = t
                    .get_mut(task_id)
                    .ok_or_else(|| ExecError::NotFound(task_id.into()))?;
                if s.run.program == "sim-reject" {
                    return Err(ExecError::Invalid(
                        "exec: \"sim-reject\": executable file not found in $PATH".into(),
                    ));
                }
                s.started = true;
                if s.run.program == "sim-exit" {
                    let args = &s.run.args;
                    let code: i32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                    let after: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
                    s.exits_after = Some((code, after));
                }
                (s.exits_after, s.exit.clone())
            };
            if let Some((code, after)) = exits_after {
                arm(exit, code, after);
            }
            self.starts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let pid = self.pids.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1000;
            Ok(RuntimeDetails {
                pid: Some(pid),
                container_id: None,
                checked: false,
                ports: Vec::new(),
            })
        })
    }

    fn wait<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<ExitStatus, ExecError>> {
        Box::pin(async move {
            let mut rx = {
                let t = self.tasks.lock().expect("tasks");
                t.get(task_id)
                    .ok_or_else(|| ExecError::NotFound(task_id.into()))?
                    .exit
                    .subscribe()
            };
            loop {
                if let Some(e) = *rx.borrow_and_update() {
                    return Ok(e);
                }
                if rx.changed().await.is_err() {
                    return Err(ExecError::Runtime("task process lost".into()));
                }
            }
        })
    }

    fn shutdown<'a>(
        &'a self,
        task_id: &'a str,
        _grace: Duration,
    ) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move {
            if let Some(t) = self.tasks.lock().expect("tasks").get(task_id) {
                t.exit.send_if_modified(|e| {
                    let first = e.is_none();
                    if first {
                        *e = Some(ExitStatus::Signal(15));
                    }
                    first
                });
            }
            Ok(())
        })
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move {
            let mut t = self.tasks.lock().expect("tasks");
            if let Some(s) = t.get(task_id) {
                if s.exit.borrow().is_none() && s.started {
                    return Err(ExecError::Runtime("task still running".into()));
                }
            }
            t.remove(task_id);
            Ok(())
        })
    }

    fn adopt(&self) -> BoxFuture<'_, Result<Vec<AdoptedTask>, ExecError>> {
        Box::pin(async move {
            let t = self.tasks.lock().expect("tasks");
            Ok(t.values()
                .map(|s| AdoptedTask {
                    run: s.run.clone(),
                    state: match (*s.exit.borrow(), s.started) {
                        (Some(e), _) => AdoptedState::Exited(e),
                        (None, true) => {
                            // Its timer may have died with the runtime of the earlier agent.
                            if let Some((code, after)) = s.exits_after {
                                arm(s.exit.clone(), code, after);
                            }
                            AdoptedState::Running(RuntimeDetails::default())
                        }
                        (None, false) => AdoptedState::Prepared,
                    },
                })
                .collect())
        })
    }

    fn logs<'a>(
        &'a self,
        task_id: &'a str,
        _options: LogOptions,
    ) -> BoxFuture<'a, Result<mpsc::Receiver<LogLine>, ExecError>> {
        Box::pin(async move {
            if !self.tasks.lock().expect("tasks").contains_key(task_id) {
                return Err(ExecError::NotFound(task_id.into()));
            }
            let (tx, rx) = mpsc::channel(1);
            drop(tx);
            Ok(rx)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(program: &str, args: &[&str]) -> TaskRun {
        TaskRun {
            task_id: "00000000000000aa".into(),
            service_name: "s".into(),
            slot: 1,
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            workdir: None,
            labels: Default::default(),
            limits: Default::default(),
            stop_grace: Duration::from_secs(1),
            ..TaskRun::default()
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    /// A `sim-exit` task whose starting runtime is gone (an agent crash under turmoil) still
    /// exits once a new agent adopts it.
    #[test]
    fn a_sim_exit_task_adopted_on_a_new_runtime_still_exits() {
        let machine = SimExecutor::new();
        let r = run("sim-exit", &["3", "20"]);
        runtime().block_on(async {
            machine.prepare(&r).await.expect("prepare");
            machine.start(&r.task_id).await.expect("start");
        });
        // The first runtime (and the timer it ran) is dropped here.
        assert_eq!(machine.running(), vec![r.task_id.clone()]);
        assert_eq!(machine.starts(), 1);
        let exit = runtime().block_on(async {
            let adopted = machine.adopt().await.expect("adopt");
            assert!(matches!(adopted[0].state, AdoptedState::Running(_)));
            machine.wait(&r.task_id).await.expect("wait")
        });
        assert_eq!(exit, ExitStatus::Code(3));
        assert!(machine.running().is_empty());
        assert_eq!(machine.starts(), 1, "an adoption is not a start");
    }
}
