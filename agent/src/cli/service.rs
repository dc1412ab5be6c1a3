//! `shoal service …` and `shoal node ps`: docker's grammar and columns. Options are parsed and
//! checked here (sizes, durations, CPUs, memory), the spec is built or changed here and sent
//! whole; the leader checks it again. Without `--detach`, create, update and scale follow the
//! tasks until the service has converged (a bar per slot on a terminal, plain lines otherwise).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::json;
use shoal_cluster::{
    validate_label, FailureAction, HealthTest, MountSpec, MountType, PortConfig, PublishMode,
    RestartCondition, Runtime, SecretKind, SecretRef, ServiceMode, ServiceSpec, UpdateConfig,
    UpdateOrder, UpdateState,
};

use super::{unexpected, Agent, Ui};
use crate::api::{Response, ServiceView, TaskView};
use crate::client::encode_segment;
use crate::format::{clean, human_bytes, render_table, rfc3339_utc, template};

/// `shoal service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a new service
    Create(Box<CreateArgs>),
    /// List services
    #[command(visible_alias = "list")]
    Ls {
        /// Only print ids
        #[arg(short, long)]
        quiet: bool,
        /// Filter: name=…, id=…, mode=replicated|global (repeatable)
        #[arg(short, long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// Output format: table, json, or a template such as '{{.ID}} {{.Name}}' (fields ID,
        /// Name, Mode, Replicas, Image, Ports; `table …` adds a header)
        #[arg(long)]
        format: Option<String>,
    },
    /// List the tasks of one or more services
    Ps {
        /// Do not truncate ids and errors
        #[arg(long)]
        no_trunc: bool,
        /// Only print task ids
        #[arg(short, long)]
        quiet: bool,
        /// Filter: desired-state=running|shutdown|accepted, node=…, name=…, id=… (repeatable)
        #[arg(short, long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// Output format: table, json, or a template such as '{{.ID}} {{.Name}}' (fields ID,
        /// Name, Image, Node, DesiredState, CurrentState, Error, Ports, Current)
        #[arg(long)]
        format: Option<String>,
        /// Service ids, id prefixes or names
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Show the details of one or more services (JSON, or --pretty)
    Inspect {
        /// Human-readable output
        #[arg(long)]
        pretty: bool,
        /// Service ids, id prefixes or names
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Remove one or more services
    #[command(visible_alias = "remove")]
    Rm {
        /// Service ids, id prefixes or names
        #[arg(required = true, value_name = "SERVICE")]
        services: Vec<String>,
    },
    /// Scale one or more replicated services: SERVICE=REPLICAS …
    Scale {
        /// Exit immediately instead of waiting for the services to converge
        #[arg(short, long)]
        detach: bool,
        /// SERVICE=REPLICAS pairs
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        pairs: Vec<String>,
    },
    /// Update a service
    Update(Box<UpdateArgs>),
    /// Revert a service to its previous spec (rolled out with its rollback policy)
    Rollback {
        /// Exit immediately instead of waiting for the service to converge
        #[arg(short, long)]
        detach: bool,
        /// Print nothing but errors
        #[arg(short, long)]
        quiet: bool,
        /// Service id, id prefix or name
        service: String,
    },
    /// Show the output of a service's tasks (or of one task), gathered from their nodes
    Logs {
        /// Keep printing new output
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each task (or "all")
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        /// Show when each line was written
        #[arg(short, long)]
        timestamps: bool,
        /// Do not truncate task ids in the prefix
        #[arg(long)]
        no_trunc: bool,
        /// Service id, id prefix or name, or a task id
        service: String,
    },
}

/// The options shared by create and update that describe tasks.
#[derive(Debug, Args, Default)]
pub struct TaskOpts {
    /// Workdir inside the task (an absolute path)
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Number of CPUs the task may use, e.g. 0.5
    #[arg(long, value_name = "CPUS")]
    pub limit_cpu: Option<String>,
    /// Memory the task may use, e.g. 256M
    #[arg(long, value_name = "BYTES")]
    pub limit_memory: Option<String>,
    /// Most processes and threads each task may have (0: no limit)
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<u64>,
    /// CPUs reserved for each task (scheduling), e.g. 0.25
    #[arg(long, value_name = "CPUS")]
    pub reserve_cpu: Option<String>,
    /// Memory reserved for each task (scheduling), e.g. 64M
    #[arg(long, value_name = "BYTES")]
    pub reserve_memory: Option<String>,
    /// Restart when: none, on-failure or any
    #[arg(long, value_name = "CONDITION")]
    pub restart_condition: Option<String>,
    /// Delay between restart attempts, e.g. 5s
    #[arg(long, value_name = "DURATION")]
    pub restart_delay: Option<String>,
    /// Maximum number of restarts before giving up (0: no limit)
    #[arg(long, value_name = "N")]
    pub restart_max_attempts: Option<u64>,
    /// Window used to count restarts, e.g. 1m
    #[arg(long, value_name = "DURATION")]
    pub restart_window: Option<String>,
    /// Time to wait after SIGTERM before SIGKILL, e.g. 10s
    #[arg(long, value_name = "DURATION")]
    pub stop_grace_period: Option<String>,
    /// Maximum number of tasks per node (0: no limit)
    #[arg(long, value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
    /// Containers: overwrite the image's entrypoint ("" restores the image's)
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Containers: username or UID[:GID] ("" restores the image's)
    #[arg(short, long)]
    pub user: Option<String>,
    /// Containers: mount the root filesystem read-only
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub read_only: Option<bool>,
}

/// The options shared by create and update that say how tasks are rolled out and checked.
#[derive(Debug, Args, Default)]
pub struct PolicyOpts {
    /// Maximum number of tasks updated simultaneously (0 to update all at once)
    #[arg(long, value_name = "N")]
    pub update_parallelism: Option<u64>,
    /// Delay between updates of a task and the next, e.g. 10s
    #[arg(long, value_name = "DURATION")]
    pub update_delay: Option<String>,
    /// Action on update failure: pause, continue or rollback
    #[arg(long, value_name = "ACTION")]
    pub update_failure_action: Option<String>,
    /// How long each updated task is watched for failure, e.g. 5s
    #[arg(long, value_name = "DURATION")]
    pub update_monitor: Option<String>,
    /// Failure rate to tolerate during an update, 0 to 1
    #[arg(long, value_name = "RATIO")]
    pub update_max_failure_ratio: Option<String>,
    /// Update order: stop-first or start-first
    #[arg(long, value_name = "ORDER")]
    pub update_order: Option<String>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once)
    #[arg(long, value_name = "N")]
    pub rollback_parallelism: Option<u64>,
    /// Delay between rollbacks of a task and the next, e.g. 10s
    #[arg(long, value_name = "DURATION")]
    pub rollback_delay: Option<String>,
    /// Action on rollback failure: pause or continue
    #[arg(long, value_name = "ACTION")]
    pub rollback_failure_action: Option<String>,
    /// How long each rolled-back task is watched for failure, e.g. 5s
    #[arg(long, value_name = "DURATION")]
    pub rollback_monitor: Option<String>,
    /// Failure rate to tolerate during a rollback, 0 to 1
    #[arg(long, value_name = "RATIO")]
    pub rollback_max_failure_ratio: Option<String>,
    /// Rollback order: stop-first or start-first
    #[arg(long, value_name = "ORDER")]
    pub rollback_order: Option<String>,
    /// Command run to check health, in the task's context (a shell command)
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub health_cmd: Option<String>,
    /// Check health with a GET of this URL made by the agent (2xx or 3xx is healthy)
    #[arg(long, value_name = "URL")]
    pub health_http: Option<String>,
    /// Check health by connecting to this port on the task's node
    #[arg(long, value_name = "PORT")]
    pub health_tcp: Option<u16>,
    /// Time between running the check, e.g. 30s
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Maximum time to allow one check to run, e.g. 30s
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Start period for the task to initialize before failed checks count, e.g. 10s
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
    /// Disable any health check (an image's own too)
    #[arg(long)]
    pub no_healthcheck: bool,
}

/// `service create [OPTIONS] IMAGE [COMMAND] [ARG...]`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name
    #[arg(long)]
    pub name: Option<String>,
    /// container (IMAGE is a Docker image present on the nodes) or process (IMAGE is a program)
    #[arg(long, default_value = "container", value_parser = ["container", "process"])]
    pub runtime: String,
    /// replicated or global
    #[arg(long, default_value = "replicated", value_parser = ["replicated", "global"])]
    pub mode: String,
    /// Number of tasks
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Set an environment variable, KEY=VALUE (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Service label, key=value (repeatable)
    #[arg(short, long = "label", value_name = "KEY[=VALUE]")]
    pub labels: Vec<String>,
    /// Placement constraint, e.g. node.role==worker (repeatable)
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// Placement preference, e.g. spread=node.labels.zone (repeatable)
    #[arg(long = "placement-pref", value_name = "PREF")]
    pub preferences: Vec<String>,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Only print the service id
    #[arg(short, long)]
    pub quiet: bool,
    /// Containers: attach a mount, type=bind|volume,source=…,target=…[,readonly] (repeatable)
    #[arg(long = "mount", value_name = "MOUNT")]
    pub mounts: Vec<String>,
    /// Publish a port: 8080:80[/udp] on every node (the routing mesh), or
    /// published=,target=,protocol=tcp|udp,mode=ingress|host (repeatable)
    #[arg(short, long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// Give tasks a secret: NAME or source=NAME,target=PATH,uid=,gid=,mode= (repeatable)
    #[arg(long = "secret", value_name = "SECRET")]
    pub secrets: Vec<String>,
    /// Give tasks a config: NAME or source=NAME,target=PATH,uid=,gid=,mode= (repeatable)
    #[arg(long = "config", value_name = "CONFIG")]
    pub configs: Vec<String>,
    /// Task options (resources, restart policy, …).
    #[command(flatten)]
    pub task: TaskOpts,
    /// Update, rollback and health check options.
    #[command(flatten)]
    pub policy: PolicyOpts,
    /// The image (container runtime) or program (process runtime)
    pub image: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// `service update [OPTIONS] SERVICE`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Number of tasks
    #[arg(long)]
    pub replicas: Option<u64>,
    /// The program or image
    #[arg(long)]
    pub image: Option<String>,
    /// The arguments, as one string split on spaces (quotes group words)
    #[arg(long, allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Add or change an environment variable (repeatable)
    #[arg(long = "env-add", value_name = "KEY=VALUE")]
    pub env_add: Vec<String>,
    /// Remove an environment variable (repeatable)
    #[arg(long = "env-rm", value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Add or change a service label (repeatable)
    #[arg(long = "label-add", value_name = "KEY[=VALUE]")]
    pub label_add: Vec<String>,
    /// Remove a service label (repeatable)
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Add a placement constraint (repeatable)
    #[arg(long = "constraint-add", value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint (repeatable)
    #[arg(long = "constraint-rm", value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference (repeatable)
    #[arg(long = "placement-pref-add", value_name = "PREF")]
    pub pref_add: Vec<String>,
    /// Remove a placement preference (repeatable)
    #[arg(long = "placement-pref-rm", value_name = "PREF")]
    pub pref_rm: Vec<String>,
    /// Containers: add or replace a mount (by target) (repeatable)
    #[arg(long = "mount-add", value_name = "MOUNT")]
    pub mount_add: Vec<String>,
    /// Containers: remove the mount at this target (repeatable)
    #[arg(long = "mount-rm", value_name = "TARGET")]
    pub mount_rm: Vec<String>,
    /// Containers: add or replace a published port (repeatable)
    #[arg(long = "publish-add", value_name = "PORT")]
    pub publish_add: Vec<String>,
    /// Containers: remove the published port PUBLISHED[/PROTOCOL] (repeatable)
    #[arg(long = "publish-rm", value_name = "PORT")]
    pub publish_rm: Vec<String>,
    /// Add or replace (by target) a secret: NAME or source=NAME,target=… (repeatable)
    #[arg(long = "secret-add", value_name = "SECRET")]
    pub secret_add: Vec<String>,
    /// Remove a secret, by name (repeatable)
    #[arg(long = "secret-rm", value_name = "NAME")]
    pub secret_rm: Vec<String>,
    /// Add or replace (by target) a config: NAME or source=NAME,target=… (repeatable)
    #[arg(long = "config-add", value_name = "CONFIG")]
    pub config_add: Vec<String>,
    /// Remove a config, by name (repeatable)
    #[arg(long = "config-rm", value_name = "NAME")]
    pub config_rm: Vec<String>,
    /// Replace every task even if nothing changed
    #[arg(long)]
    pub force: bool,
    /// Roll back to the previous spec (no other option may be given)
    #[arg(long)]
    pub rollback: bool,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Print nothing but errors
    #[arg(short, long)]
    pub quiet: bool,
    /// Task options (resources, restart policy, …).
    #[command(flatten)]
    pub task: TaskOpts,
    /// Update, rollback and health check options.
    #[command(flatten)]
    pub policy: PolicyOpts,
    /// Service id, id prefix or name
    pub service: String,
}

// ------------------------------------------------------------------ parsing

/// A Go-style duration: `300ms`, `5s`, `1m30s`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 500ms, 5s, 1m30s");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return secs
            .checked_mul(1000)
            .map(Duration::from_millis)
            .ok_or_else(bad);
    }
    let mut total_ms: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let ms_per = match &rest[..unit_len] {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ms += (value * ms_per).round() as u128;
    }
    if total_ms > u128::from(u64::MAX / 2) {
        return Err(bad());
    }
    Ok(Duration::from_millis(total_ms as u64))
}

/// Memory as docker takes it: `512`, `100k`, `256m`, `1g`, `1.5GiB` (binary units).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid memory size {s:?}: expected e.g. 64M, 1.5G");
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        _ => return Err(bad()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || !(0.0..=1e18).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// CPUs as a decimal (`0.5`, `2`) in billionths of a CPU.
pub fn parse_cpus(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid CPU count {s:?}: expected a number such as 0.5 or 2");
    let v: f64 = s.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || !(0.0..=1_000_000.0).contains(&v) {
        return Err(bad());
    }
    Ok((v * 1e9).round() as u64)
}

/// A restart condition as the flags and Compose files take it: none, on-failure or any.
pub fn parse_condition(s: &str) -> Result<RestartCondition, String> {
    match s {
        "none" => Ok(RestartCondition::None),
        "on-failure" => Ok(RestartCondition::OnFailure),
        "any" => Ok(RestartCondition::Any),
        _ => Err(format!(
            "invalid restart condition {s:?}: expected none, on-failure or any"
        )),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Applies the task options to a spec.
fn apply_task_opts(spec: &mut ServiceSpec, o: &TaskOpts) -> Result<(), String> {
    let t = &mut spec.task;
    if let Some(w) = &o.workdir {
        t.workdir = w.clone();
    }
    if let Some(v) = &o.limit_cpu {
        t.resources.limits.nano_cpus = parse_cpus(v).map_err(|e| format!("--limit-cpu: {e}"))?;
    }
    if let Some(v) = &o.limit_memory {
        t.resources.limits.memory_bytes =
            parse_memory(v).map_err(|e| format!("--limit-memory: {e}"))?;
    }
    if let Some(n) = o.limit_pids {
        t.resources.pids_limit = n;
    }
    if let Some(v) = &o.reserve_cpu {
        t.resources.reservations.nano_cpus =
            parse_cpus(v).map_err(|e| format!("--reserve-cpu: {e}"))?;
    }
    if let Some(v) = &o.reserve_memory {
        t.resources.reservations.memory_bytes =
            parse_memory(v).map_err(|e| format!("--reserve-memory: {e}"))?;
    }
    if let Some(v) = &o.restart_condition {
        t.restart.condition = parse_condition(v)?;
    }
    if let Some(v) = &o.restart_delay {
        t.restart.delay_ms = ms(parse_duration(v).map_err(|e| format!("--restart-delay: {e}"))?);
    }
    if let Some(v) = o.restart_max_attempts {
        t.restart.max_attempts = v;
    }
    if let Some(v) = &o.restart_window {
        t.restart.window_ms = ms(parse_duration(v).map_err(|e| format!("--restart-window: {e}"))?);
    }
    if let Some(v) = &o.stop_grace_period {
        t.stop_grace_ms = ms(parse_duration(v).map_err(|e| format!("--stop-grace-period: {e}"))?);
    }
    if let Some(v) = o.replicas_max_per_node {
        t.placement.max_replicas_per_node = v;
    }
    if let Some(v) = &o.entrypoint {
        t.entrypoint = split_args(v).map_err(|e| e.replace("--args", "--entrypoint"))?;
    }
    if let Some(v) = &o.user {
        t.user = v.clone();
    }
    if let Some(v) = o.read_only {
        t.read_only = v;
    }
    Ok(())
}

/// Parses a failure ratio (`0.25`) into millionths.
fn parse_ratio(s: &str, flag: &str) -> Result<u32, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{flag}: invalid ratio {s:?}: expected a number from 0 to 1"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{flag}: {s} is not between 0 and 1"));
    }
    Ok((v * 1_000_000.0).round() as u32)
}

/// Applies one `--update-*` or `--rollback-*` family of options.
#[allow(clippy::too_many_arguments)]
fn apply_rollout(
    c: &mut UpdateConfig,
    what: &str,
    parallelism: Option<u64>,
    delay: &Option<String>,
    action: &Option<String>,
    monitor: &Option<String>,
    ratio: &Option<String>,
    order: &Option<String>,
) -> Result<(), String> {
    if let Some(p) = parallelism {
        c.parallelism = p;
    }
    if let Some(d) = delay {
        c.delay_ms = ms(parse_duration(d).map_err(|e| format!("--{what}-delay: {e}"))?);
    }
    if let Some(a) = action {
        c.failure_action = match FailureAction::from_name(a) {
            Some(FailureAction::Rollback) | None if what != "update" => {
                return Err(format!(
                    "--rollback-failure-action {a:?}: expected pause or continue"
                ))
            }
            Some(action) => action,
            None => {
                return Err(format!(
                    "--update-failure-action {a:?}: expected pause, continue or rollback"
                ))
            }
        };
    }
    if let Some(m) = monitor {
        c.monitor_ms = ms(parse_duration(m).map_err(|e| format!("--{what}-monitor: {e}"))?);
    }
    if let Some(r) = ratio {
        c.max_failure_ppm = parse_ratio(r, &format!("--{what}-max-failure-ratio"))?;
    }
    if let Some(o) = order {
        c.order = UpdateOrder::from_name(o)
            .ok_or_else(|| format!("--{what}-order {o:?}: expected stop-first or start-first"))?;
    }
    Ok(())
}

/// Applies the update, rollback and health check options.
fn apply_policy_opts(spec: &mut ServiceSpec, o: &PolicyOpts) -> Result<(), String> {
    apply_rollout(
        &mut spec.update,
        "update",
        o.update_parallelism,
        &o.update_delay,
        &o.update_failure_action,
        &o.update_monitor,
        &o.update_max_failure_ratio,
        &o.update_order,
    )?;
    apply_rollout(
        &mut spec.rollback,
        "rollback",
        o.rollback_parallelism,
        &o.rollback_delay,
        &o.rollback_failure_action,
        &o.rollback_monitor,
        &o.rollback_max_failure_ratio,
        &o.rollback_order,
    )?;
    let h = &mut spec.task.health;
    let probes = [
        o.health_cmd.is_some(),
        o.health_http.is_some(),
        o.health_tcp.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if probes > 1 {
        return Err("give one of --health-cmd, --health-http and --health-tcp".into());
    }
    if o.no_healthcheck {
        let tuned = o.health_interval.is_some()
            || o.health_timeout.is_some()
            || o.health_retries.is_some()
            || o.health_start_period.is_some();
        if probes > 0 || tuned {
            return Err("--no-healthcheck conflicts with --health-* options".into());
        }
        h.test = HealthTest::Disabled;
    }
    if let Some(c) = &o.health_cmd {
        h.test = HealthTest::Cmd(c.clone());
    }
    if let Some(u) = &o.health_http {
        h.test = HealthTest::Http(u.clone());
    }
    if let Some(p) = o.health_tcp {
        h.test = HealthTest::Tcp(p);
    }
    if let Some(d) = &o.health_interval {
        h.interval_ms = ms(parse_duration(d).map_err(|e| format!("--health-interval: {e}"))?);
    }
    if let Some(d) = &o.health_timeout {
        h.timeout_ms = ms(parse_duration(d).map_err(|e| format!("--health-timeout: {e}"))?);
    }
    if let Some(r) = o.health_retries {
        h.retries = r;
    }
    if let Some(d) = &o.health_start_period {
        h.start_period_ms =
            ms(parse_duration(d).map_err(|e| format!("--health-start-period: {e}"))?);
    }
    Ok(())
}

/// Whether any option of `service update` besides the service, detach and quiet was given
/// (`--rollback` takes none).
fn update_changes_anything(a: &UpdateArgs) -> bool {
    let probe = UpdateArgs {
        replicas: None,
        image: None,
        args: None,
        env_add: Vec::new(),
        env_rm: Vec::new(),
        label_add: Vec::new(),
        label_rm: Vec::new(),
        constraint_add: Vec::new(),
        constraint_rm: Vec::new(),
        pref_add: Vec::new(),
        pref_rm: Vec::new(),
        mount_add: Vec::new(),
        mount_rm: Vec::new(),
        secret_add: Vec::new(),
        secret_rm: Vec::new(),
        config_add: Vec::new(),
        config_rm: Vec::new(),
        publish_add: Vec::new(),
        publish_rm: Vec::new(),
        force: false,
        rollback: a.rollback,
        detach: a.detach,
        quiet: a.quiet,
        task: TaskOpts::default(),
        policy: PolicyOpts::default(),
        service: a.service.clone(),
    };
    format!("{a:?}") != format!("{probe:?}")
}

/// Parses `--secret NAME` or `--secret source=NAME,target=PATH,uid=0,gid=0,mode=0400`
/// (Docker's keys; the target defaults to the name, the mode to the runtime's default).
pub fn parse_secret_ref(kind: SecretKind, s: &str) -> Result<SecretRef, String> {
    let flag = kind.name();
    let mut r = SecretRef {
        kind,
        id: 0,
        name: String::new(),
        target: String::new(),
        uid: 0,
        gid: 0,
        mode: 0,
    };
    if !s.contains('=') {
        r.name = s.to_string();
    } else {
        for field in s.split(',') {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("--{flag} {s:?}: expected key=value, found {field:?}"))?;
            let number = |v: &str, radix: u32| {
                u32::from_str_radix(v, radix)
                    .map_err(|_| format!("--{flag} {s:?}: invalid {k} {v:?}"))
            };
            match k {
                "source" | "src" => r.name = v.to_string(),
                "target" => r.target = v.to_string(),
                "uid" => r.uid = number(v, 10)?,
                "gid" => r.gid = number(v, 10)?,
                "mode" => r.mode = number(v, 8)?,
                _ => return Err(format!("--{flag} {s:?}: unknown field {k:?}")),
            }
        }
    }
    if r.name.is_empty() {
        return Err(format!("--{flag} {s:?}: the source is required"));
    }
    if r.target.is_empty() {
        r.target = r.name.clone();
    }
    if r.mode > 0o777 {
        return Err(format!(
            "--{flag} {s:?}: invalid mode {:o} (at most 0777)",
            r.mode
        ));
    }
    Ok(r)
}

/// Parses `--mount type=bind,source=/srv,target=/data[,readonly]` (Docker's keys and aliases;
/// the type defaults to volume, as Docker's).
pub fn parse_mount(s: &str) -> Result<MountSpec, String> {
    let mut m = MountSpec {
        kind: MountType::Volume,
        source: String::new(),
        target: String::new(),
        read_only: false,
    };
    for part in s.split(',') {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (part.trim(), None),
        };
        match (k, v) {
            ("type", Some("bind")) => m.kind = MountType::Bind,
            ("type", Some("volume")) => m.kind = MountType::Volume,
            ("type", Some(other)) => {
                return Err(format!(
                    "--mount {s:?}: type {other:?} is not supported (bind or volume)"
                ))
            }
            ("source" | "src", Some(v)) => m.source = v.to_string(),
            ("target" | "destination" | "dst", Some(v)) => m.target = v.to_string(),
            ("readonly" | "ro", None) => m.read_only = true,
            ("readonly" | "ro", Some(v)) => {
                m.read_only = parse_bool(v).ok_or_else(|| {
                    format!("--mount {s:?}: invalid readonly value {v:?} (true or false)")
                })?
            }
            _ => return Err(format!("--mount {s:?}: unknown field {k:?}")),
        }
    }
    if m.target.is_empty() {
        return Err(format!("--mount {s:?}: target is required"));
    }
    if m.kind == MountType::Bind && m.source.is_empty() {
        return Err(format!("--mount {s:?}: a bind mount needs a source"));
    }
    Ok(m)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Parses `-p published=8080,target=80[,protocol=udp][,mode=host]` or the short
/// `8080:80[/udp]` (ingress mode, Docker's default for both forms).
pub fn parse_publish(s: &str) -> Result<PortConfig, String> {
    let port = |v: &str, what: &str| -> Result<u16, String> {
        v.parse::<u16>()
            .map_err(|_| format!("--publish {s:?}: invalid {what} port {v:?}"))
    };
    let mut p = PortConfig {
        published: 0,
        target: 0,
        udp: false,
        mode: PublishMode::Ingress,
    };
    if s.contains('=') {
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("--publish {s:?}: expected key=value, got {part:?}"))?;
            match (k.trim(), v.trim()) {
                ("published", v) => p.published = port(v, "published")?,
                ("target", v) => p.target = port(v, "target")?,
                ("protocol", "tcp") => p.udp = false,
                ("protocol", "udp") => p.udp = true,
                ("mode", "host") => p.mode = PublishMode::Host,
                ("mode", "ingress") => p.mode = PublishMode::Ingress,
                (k, v) => return Err(format!("--publish {s:?}: invalid {k} {v:?}")),
            }
        }
    } else {
        let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        p.udp = match proto {
            "tcp" => false,
            "udp" => true,
            other => return Err(format!("--publish {s:?}: invalid protocol {other:?}")),
        };
        match ports.split_once(':') {
            Some((published, target)) => {
                p.published = port(published, "published")?;
                p.target = port(target, "target")?;
            }
            None => p.target = port(ports, "target")?,
        }
    }
    if p.target == 0 {
        return Err(format!("--publish {s:?}: a target port is required"));
    }
    Ok(p)
}

fn parse_label_arg(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    validate_label(k, v).map_err(|e| e.to_string())?;
    Ok((k.to_string(), v.to_string()))
}

fn check_env(e: &str) -> Result<(), String> {
    match e.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(()),
        _ => Err(format!(
            "invalid environment entry {e:?}: expected KEY=VALUE"
        )),
    }
}

/// A name docker-style when none is given: adjective_noun.
fn random_name() -> String {
    const ADJ: [&str; 12] = [
        "brave", "calm", "eager", "gentle", "happy", "keen", "lucid", "merry", "nimble", "quiet",
        "swift", "witty",
    ];
    const NOUN: [&str; 12] = [
        "bass", "carp", "dory", "eel", "koi", "marlin", "perch", "pike", "ray", "shad", "sole",
        "tuna",
    ];
    let r = crate::client::request_id().client;
    format!(
        "{}_{}",
        ADJ[(r % 12) as usize],
        NOUN[((r / 12) % 12) as usize]
    )
}

/// The spec `service create` asks for.
pub fn create_spec(a: &CreateArgs) -> Result<ServiceSpec, String> {
    let name = a.name.clone().unwrap_or_else(random_name);
    let mut spec = ServiceSpec::new(&name, &a.image, 1);
    spec.task.runtime = match a.runtime.as_str() {
        "container" => Runtime::Container,
        _ => Runtime::Process,
    };
    spec.mode = match (a.mode.as_str(), a.replicas) {
        ("global", Some(_)) => {
            return Err("--replicas can only be used with replicated mode".into())
        }
        ("global", None) => ServiceMode::Global,
        (_, r) => ServiceMode::Replicated {
            replicas: r.unwrap_or(1),
        },
    };
    spec.task.args = a.args.clone();
    for e in &a.env {
        check_env(e)?;
    }
    spec.task.env = a.env.clone();
    for l in &a.labels {
        let (k, v) = parse_label_arg(l)?;
        spec.labels.insert(k, v);
    }
    spec.task.placement.constraints = a.constraints.clone();
    spec.task.placement.preferences = a.preferences.clone();
    for m in &a.mounts {
        spec.task.mounts.push(parse_mount(m)?);
    }
    for p in &a.publish {
        spec.task.ports.push(parse_publish(p)?);
    }
    for (kind, list) in [
        (SecretKind::Secret, &a.secrets),
        (SecretKind::Config, &a.configs),
    ] {
        for r in list {
            spec.task.secrets.push(parse_secret_ref(kind, r)?);
        }
    }
    apply_task_opts(&mut spec, &a.task)?;
    apply_policy_opts(&mut spec, &a.policy)?;
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

/// Splits `--args` on whitespace, keeping quoted groups together.
pub fn split_args(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("--args {s:?}: unterminated quote"));
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// The spec `service update` makes of the current one.
pub fn update_spec(current: &ServiceSpec, a: &UpdateArgs) -> Result<ServiceSpec, String> {
    let mut spec = current.clone();
    if let Some(r) = a.replicas {
        match spec.mode {
            ServiceMode::Replicated { .. } => spec.mode = ServiceMode::Replicated { replicas: r },
            ServiceMode::Global => {
                return Err("--replicas can only be used with replicated mode".into())
            }
        }
    }
    if let Some(i) = &a.image {
        spec.task.image = i.clone();
    }
    if let Some(args) = &a.args {
        spec.task.args = split_args(args)?;
    }
    for k in &a.env_rm {
        spec.task
            .env
            .retain(|e| e.split_once('=').map_or(e.as_str(), |(key, _)| key) != k);
    }
    for e in &a.env_add {
        check_env(e)?;
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        spec.task
            .env
            .retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        spec.task.env.push(e.clone());
    }
    for k in &a.label_rm {
        spec.labels.remove(k);
    }
    for l in &a.label_add {
        let (k, v) = parse_label_arg(l)?;
        spec.labels.insert(k, v);
    }
    let p = &mut spec.task.placement;
    p.constraints.retain(|c| !a.constraint_rm.contains(c));
    for c in &a.constraint_add {
        if !p.constraints.contains(c) {
            p.constraints.push(c.clone());
        }
    }
    p.preferences.retain(|c| !a.pref_rm.contains(c));
    for c in &a.pref_add {
        if !p.preferences.contains(c) {
            p.preferences.push(c.clone());
        }
    }
    let t = &mut spec.task;
    t.mounts.retain(|m| !a.mount_rm.contains(&m.target));
    for m in &a.mount_add {
        let m = parse_mount(m)?;
        t.mounts.retain(|o| o.target != m.target);
        t.mounts.push(m);
    }
    for r in &a.publish_rm {
        let (port, proto) = r.split_once('/').unwrap_or((r, "tcp"));
        let port: u16 = port
            .parse()
            .map_err(|_| format!("--publish-rm {r:?}: expected PUBLISHED[/PROTOCOL]"))?;
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            _ => return Err(format!("--publish-rm {r:?}: invalid protocol")),
        };
        t.ports.retain(|p| !(p.published == port && p.udp == udp));
    }
    for (kind, rm, add) in [
        (SecretKind::Secret, &a.secret_rm, &a.secret_add),
        (SecretKind::Config, &a.config_rm, &a.config_add),
    ] {
        t.secrets
            .retain(|r| r.kind != kind || !rm.contains(&r.name));
        for r in add {
            let r = parse_secret_ref(kind, r)?;
            t.secrets
                .retain(|o| !(o.kind == kind && (o.target == r.target || o.name == r.name)));
            t.secrets.push(r);
        }
    }
    for p in &a.publish_add {
        let p = parse_publish(p)?;
        t.ports
            .retain(|o| !(o.published == p.published && o.udp == p.udp && p.published != 0));
        t.ports.push(p);
    }
    apply_task_opts(&mut spec, &a.task)?;
    apply_policy_opts(&mut spec, &a.policy)?;
    if a.force {
        spec.task.force_update = spec.task.force_update.wrapping_add(1);
    }
    spec.validate().map_err(|e| e.to_string())?;
    Ok(spec)
}

// ------------------------------------------------------------------ output

pub(super) fn short(id: &str, no_trunc: bool) -> &str {
    if no_trunc {
        id
    } else {
        &id[..id.len().min(12)]
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "2 minutes ago", as docker's units.HumanDuration.
pub fn ago(since_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(since_ms) / 1000;
    let d = match secs {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".to_string(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".to_string(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s if s < 14 * 86400 => format!("{} days", s / 86400),
        s => format!("{} weeks", s / (7 * 86400)),
    };
    format!("{d} ago")
}

fn mode_name(s: &ServiceSpec) -> &'static str {
    match s.mode {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
    }
}

/// Checks a `--format` before anything is asked: `table`, `json` or a template.
pub(crate) fn check_format(format: Option<&str>) -> Result<(), String> {
    match format {
        None | Some("table") | Some("json") => Ok(()),
        Some(t) => template::Template::parse(t).map(|_| ()),
    }
}

/// The template (or `json`) a `--format` asks for; `None` for the built-in table.
pub(crate) fn custom(format: Option<&str>) -> Option<&str> {
    format.filter(|f| *f != "table")
}

/// A row of `service ls`, named as docker's `--format` fields.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRow {
    /// The short id.
    #[serde(rename = "ID")]
    pub id: String,
    /// The name.
    pub name: String,
    /// `replicated` or `global`.
    pub mode: String,
    /// `running/desired`, with the update state while one is under way.
    pub replicas: String,
    /// The image or command's program.
    pub image: String,
    /// The published ports.
    pub ports: String,
}

/// The rows of `service ls`.
pub fn service_rows(services: &[ServiceView]) -> Vec<ServiceRow> {
    services
        .iter()
        .map(|s| ServiceRow {
            id: short(&s.id, false).to_string(),
            name: clean(&s.spec.name).into_owned(),
            mode: mode_name(&s.spec).to_string(),
            replicas: match &s.update_status {
                Some(u) if u.state != UpdateState::Completed => {
                    format!("{}/{} ({})", s.running, s.desired, u.state.name())
                }
                _ => format!("{}/{}", s.running, s.desired),
            },
            image: clean(&s.spec.task.image).into_owned(),
            ports: s
                .spec
                .task
                .ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
        })
        .collect()
}

/// `service ls`.
pub fn service_table(services: &[ServiceView]) -> String {
    let mut rows: Vec<[Cow<'_, str>; 6]> =
        vec![["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"].map(Cow::Borrowed)];
    for r in service_rows(services) {
        rows.push([r.id, r.name, r.mode, r.replicas, r.image, r.ports].map(Cow::Owned));
    }
    render_table(&rows)
}

/// A row of `service ps` and `node ps`, named as docker's `--format` fields.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskRow {
    /// The (short) id.
    #[serde(rename = "ID")]
    pub id: String,
    /// `service.slot` (history rows as ` \_ service.slot` in the table only).
    pub name: String,
    /// The image or command's program.
    pub image: String,
    /// The node's hostname.
    pub node: String,
    /// What the orchestrator wants.
    pub desired_state: String,
    /// What the task is, and since when.
    pub current_state: String,
    /// Why it failed, if it did.
    pub error: String,
    /// The ports it answers on.
    pub ports: String,
    /// Whether this is the slot's current task (not history).
    pub current: bool,
}

/// The rows of `service ps` and `node ps`.
pub fn task_rows(tasks: &[TaskView], no_trunc: bool, now: u64) -> Vec<TaskRow> {
    tasks
        .iter()
        .map(|t| TaskRow {
            id: short(&t.id, no_trunc).to_string(),
            name: clean(&t.name).into_owned(),
            image: clean(&t.image).into_owned(),
            node: clean(&t.node).into_owned(),
            desired_state: t.desired_state.clone(),
            current_state: format!("{} {}", t.state, ago(t.state_since_ms, now)),
            error: if t.err.is_empty() {
                String::new()
            } else if no_trunc || t.err.chars().count() <= 29 {
                format!("\"{}\"", clean(&t.err))
            } else {
                let cut: String = clean(&t.err).chars().take(26).collect();
                format!("\"{cut}…\"")
            },
            ports: clean(&t.ports).into_owned(),
            current: t.current,
        })
        .collect()
}

/// `service ps` and `node ps`: history rows (older tasks of a slot) as ` \_ name`.
pub fn task_table(tasks: &[TaskView], no_trunc: bool, now: u64) -> String {
    let mut rows: Vec<[Cow<'_, str>; 8]> = vec![[
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ]
    .map(Cow::Borrowed)];
    for r in task_rows(tasks, no_trunc, now) {
        let name = if r.current {
            r.name
        } else {
            format!(" \\_ {}", r.name)
        };
        rows.push(
            [
                r.id,
                name,
                r.image,
                r.node,
                r.desired_state,
                r.current_state,
                r.error,
                r.ports,
            ]
            .map(Cow::Owned),
        );
    }
    render_table(&rows)
}

fn dur(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// `service inspect --pretty`.
pub fn inspect_pretty(s: &ServiceView) -> String {
    let mut out = String::new();
    let mut field = |label: &str, value: &str| {
        let line = format!("{label:<20}{}", clean(value));
        out.push_str(line.trim_end());
        out.push('\n');
    };
    let spec = &s.spec;
    let t = &spec.task;
    field("ID:", &s.id);
    field("Name:", &spec.name);
    if !spec.labels.is_empty() {
        field("Labels:", "");
        for (k, v) in &spec.labels {
            field(" ", &format!("{k}={v}"));
        }
    }
    match spec.mode {
        ServiceMode::Replicated { replicas } => {
            field("Service Mode:", "Replicated");
            field(" Replicas:", &replicas.to_string());
        }
        ServiceMode::Global => field("Service Mode:", "Global"),
    }
    field("Runtime:", t.runtime.as_str());
    field("Created at:", &rfc3339_utc(s.created_at_ms));
    field("Updated at:", &rfc3339_utc(s.updated_at_ms));
    if let Some(u) = &s.update_status {
        field("UpdateStatus:", "");
        field(" State:", u.state.name());
        field(" Started:", &rfc3339_utc(u.started_at_ms));
        if u.completed_at_ms > 0 {
            field(" Completed:", &rfc3339_utc(u.completed_at_ms));
        }
        field(" Message:", &u.message);
    }
    if !t.placement.constraints.is_empty() || !t.placement.preferences.is_empty() {
        field("Placement:", "");
        if !t.placement.constraints.is_empty() {
            field(
                " Constraints:",
                &format!("[{}]", t.placement.constraints.join(" ")),
            );
        }
        if !t.placement.preferences.is_empty() {
            field(
                " Preferences:",
                &format!("[{}]", t.placement.preferences.join(" ")),
            );
        }
    }
    if t.placement.max_replicas_per_node > 0 {
        field(
            " Max Replicas Per Node:",
            &t.placement.max_replicas_per_node.to_string(),
        );
    }
    field("RestartPolicy:", "");
    field(
        " Condition:",
        match t.restart.condition {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        },
    );
    field(" Delay:", &dur(t.restart.delay_ms));
    field(" Max attempts:", &t.restart.max_attempts.to_string());
    if t.restart.window_ms > 0 {
        field(" Window:", &dur(t.restart.window_ms));
    }
    field("ContainerSpec:", "");
    field(
        if t.runtime == Runtime::Process {
            " Program:"
        } else {
            " Image:"
        },
        &t.image,
    );
    if !t.args.is_empty() {
        field(" Args:", &t.args.join(" "));
    }
    if !t.env.is_empty() {
        field(" Env:", &t.env.join(" "));
    }
    if !t.entrypoint.is_empty() {
        field(" Entrypoint:", &t.entrypoint.join(" "));
    }
    if !t.workdir.is_empty() {
        field(" Dir:", &t.workdir);
    }
    if !t.user.is_empty() {
        field(" User:", &t.user);
    }
    if t.read_only {
        field(" Read Only:", "true");
    }
    if !t.mounts.is_empty() {
        field("Mounts:", "");
        for m in &t.mounts {
            let kind = match m.kind {
                MountType::Bind => "bind",
                MountType::Volume => "volume",
            };
            let ro = if m.read_only { ",readonly" } else { "" };
            field(
                " ",
                &format!("type={kind},source={},target={}{ro}", m.source, m.target),
            );
        }
    }
    for (kind, title) in [
        (SecretKind::Secret, "Secrets:"),
        (SecretKind::Config, "Configs:"),
    ] {
        let refs: Vec<&SecretRef> = t.secrets.iter().filter(|r| r.kind == kind).collect();
        if refs.is_empty() {
            continue;
        }
        field(title, "");
        let process = t.runtime == Runtime::Process;
        for r in refs {
            let path = if process {
                let var = match kind {
                    SecretKind::Secret => "SHOAL_SECRETS_DIR",
                    SecretKind::Config => "SHOAL_CONFIGS_DIR",
                };
                format!("${var}/{}", r.target)
            } else {
                r.container_path()
            };
            field(
                " ",
                &format!(
                    "{} -> {path} (uid {}, gid {}, mode {:04o})",
                    r.name,
                    r.uid,
                    r.gid,
                    r.file_mode(process)
                ),
            );
        }
    }
    if !t.ports.is_empty() {
        field("Ports:", "");
        for p in &t.ports {
            let mode = match p.mode {
                PublishMode::Host => "host",
                PublishMode::Ingress => "ingress",
            };
            field(
                " ",
                &format!(
                    "PublishedPort = {}, TargetPort = {}, Protocol = {}, PublishMode = {mode}",
                    p.published,
                    p.target,
                    if p.udp { "udp" } else { "tcp" }
                ),
            );
        }
    }
    field(" StopGracePeriod:", &dur(t.stop_grace_ms));
    let h = &t.health;
    match &h.test {
        HealthTest::Default => {}
        HealthTest::Disabled => field(" Healthcheck:", "none"),
        test => {
            let probe = match test {
                HealthTest::Cmd(c) => format!("CMD-SHELL {c}"),
                HealthTest::Http(u) => format!("HTTP GET {u}"),
                HealthTest::Tcp(p) => format!("TCP {p}"),
                _ => String::new(),
            };
            field(" Healthcheck:", &probe);
            field("  Interval:", &dur(h.interval_ms));
            field("  Timeout:", &dur(h.timeout_ms));
            field("  Retries:", &h.retries.to_string());
            field("  Start Period:", &dur(h.start_period_ms));
        }
    }
    let r = &t.resources;
    if *r != Default::default() {
        field("Resources:", "");
        for (label, res, pids) in [
            (" Reservations:", r.reservations, 0),
            (" Limits:", r.limits, r.pids_limit),
        ] {
            if res != Default::default() || pids > 0 {
                field(label, "");
                if res.nano_cpus > 0 {
                    field("  CPU:", &format!("{}", res.nano_cpus as f64 / 1e9));
                }
                if res.memory_bytes > 0 {
                    field("  Memory:", &human_bytes(res.memory_bytes));
                }
                if pids > 0 {
                    field("  PIDs:", &pids.to_string());
                }
            }
        }
    }
    for (title, order, c) in [
        ("UpdateConfig:", " Update order:", &spec.update),
        ("RollbackConfig:", " Rollback order:", &spec.rollback),
    ] {
        field(title, "");
        field(" Parallelism:", &c.parallelism.to_string());
        if c.delay_ms > 0 {
            field(" Delay:", &dur(c.delay_ms));
        }
        field(" On failure:", c.failure_action.name());
        field(" Monitoring Period:", &dur(c.monitor_ms));
        field(
            " Max failure ratio:",
            &format!("{}", f64::from(c.max_failure_ppm) / 1e6),
        );
        field(order, c.order.name());
    }
    if let Some(e) = s.endpoints.as_ref().filter(|e| !e.tasks.is_empty()) {
        // Where the mesh and the name server send `NAME` and `tasks.NAME`.
        field("Endpoints:", "");
        for t in &e.tasks {
            let ports: Vec<String> = t
                .ports
                .iter()
                .map(|p| {
                    let proto = if p.udp { "udp" } else { "tcp" };
                    format!("{}:{}->{}/{proto}", t.ip, p.published, p.target)
                })
                .collect();
            let ports = if ports.is_empty() {
                t.ip.clone()
            } else {
                ports.join(",")
            };
            let state = if t.ready { "ready" } else { "not ready" };
            field(
                " ",
                &format!("{} {ports} ({state})", &t.task[..t.task.len().min(12)]),
            );
        }
    }
    out
}

pub(super) fn filter_tasks(
    tasks: Vec<TaskView>,
    filters: &[String],
) -> Result<Vec<TaskView>, String> {
    let mut parsed = Vec::new();
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("bad format of filter {f:?} (expected name=value)"))?;
        match k {
            "desired-state" if matches!(v, "running" | "shutdown" | "accepted") => {}
            "desired-state" => {
                return Err(format!(
                    "invalid filter 'desired-state={v}': expected running, shutdown or accepted"
                ))
            }
            "node" | "name" | "id" => {}
            _ => return Err(format!("invalid filter '{k}'")),
        }
        parsed.push((k, v));
    }
    Ok(tasks
        .into_iter()
        .filter(|t| {
            parsed.iter().all(|(k, v)| match *k {
                "desired-state" => match *v {
                    "running" => t.desired_state == "Running" || t.desired_state == "Ready",
                    "shutdown" => t.desired_state != "Running" && t.desired_state != "Ready",
                    _ => t.desired_state == "Accepted",
                },
                "node" => t.node == *v || t.node_id.starts_with(v),
                "name" => t.name.starts_with(v),
                _ => t.id.starts_with(v),
            })
        })
        .collect())
}

// ------------------------------------------------------------------ commands

pub(super) fn service_path(service: &str, suffix: &str) -> String {
    format!("/v1/services/{}{suffix}", encode_segment(service))
}

fn check_service_arg(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("the service name or id must not be empty".into());
    }
    Ok(())
}

pub(super) fn inspect(agent: &Agent, service: &str) -> Result<ServiceView, String> {
    check_service_arg(service)?;
    match agent.call("GET", &service_path(service, ""), None)? {
        Response::Service { service } => Ok(*service),
        other => Err(unexpected("a service", &other)),
    }
}

pub(super) fn tasks(
    agent: &Agent,
    services: &[String],
    node: Option<&str>,
) -> Result<Vec<TaskView>, String> {
    let body = json!({ "services": services, "node": node });
    match agent.call("POST", "/v1/tasks", Some(&body))? {
        Response::Tasks { tasks } => Ok(tasks),
        other => Err(unexpected("a task list", &other)),
    }
}

pub(super) fn update(
    agent: &Agent,
    service: &str,
    version: u64,
    spec: &ServiceSpec,
) -> Result<String, String> {
    let body = json!({ "version": version, "spec": spec });
    agent.ok("POST", &service_path(service, "/update"), Some(&body))
}

fn rollback(agent: &Agent, service: &str, version: u64) -> Result<String, String> {
    let body = json!({ "version": version });
    agent.ok("POST", &service_path(service, "/rollback"), Some(&body))
}

/// Runs a `service` command.
pub(super) fn service(agent: &Agent, cmd: &ServiceCmd, ui: &mut Ui<'_>) -> Result<(), String> {
    match cmd {
        ServiceCmd::Create(a) => {
            let spec = create_spec(a)?;
            let body = json!({ "spec": spec });
            let id = agent.ok("POST", "/v1/services/create", Some(&body))?;
            ui.print(&id);
            if !a.detach {
                converge(agent, &id, ui, !a.quiet, false)?;
            }
        }
        ServiceCmd::Ls {
            quiet,
            filters,
            format,
        } => {
            check_format(format.as_deref())?;
            let mut services = match agent.call("GET", "/v1/services", None)? {
                Response::Services { services } => services,
                other => return Err(unexpected("a service list", &other)),
            };
            for f in filters {
                let (k, v) = f
                    .split_once('=')
                    .ok_or_else(|| format!("bad format of filter {f:?} (expected name=value)"))?;
                match k {
                    "name" => services.retain(|s| s.spec.name.starts_with(v)),
                    "id" => services.retain(|s| s.id.starts_with(v)),
                    "mode" => services.retain(|s| mode_name(&s.spec) == v),
                    _ => return Err(format!("invalid filter '{k}'")),
                }
            }
            if *quiet {
                let ids: String = services.iter().map(|s| format!("{}\n", s.id)).collect();
                ui.print(&ids);
            } else if let Some(t) = custom(format.as_deref()) {
                ui.print(&template::render_rows(t, &service_rows(&services))?);
            } else {
                ui.print(&service_table(&services));
            }
        }
        ServiceCmd::Ps {
            no_trunc,
            quiet,
            filters,
            format,
            services,
        } => {
            check_format(format.as_deref())?;
            for s in services {
                check_service_arg(s)?;
            }
            let list = filter_tasks(tasks(agent, services, None)?, filters)?;
            if *quiet {
                let ids: String = list
                    .iter()
                    .map(|t| format!("{}\n", short(&t.id, *no_trunc)))
                    .collect();
                ui.print(&ids);
            } else if let Some(t) = custom(format.as_deref()) {
                ui.print(&template::render_rows(
                    t,
                    &task_rows(&list, *no_trunc, now_ms()),
                )?);
            } else {
                ui.print(&task_table(&list, *no_trunc, now_ms()));
            }
        }
        ServiceCmd::Inspect { pretty, services } => {
            let mut views = Vec::new();
            for s in services {
                match inspect(agent, s) {
                    Ok(v) => views.push(v),
                    Err(e) => ui.error(&e),
                }
            }
            if *pretty {
                let text: Vec<String> = views.iter().map(inspect_pretty).collect();
                ui.print(&text.join("\n"));
            } else if !views.is_empty() || !ui.failed {
                ui.print(&serde_json::to_string_pretty(&views).unwrap_or_default());
            }
        }
        ServiceCmd::Rm { services } => {
            for s in services {
                let r = check_service_arg(s)
                    .and_then(|()| agent.ok("DELETE", &service_path(s, ""), None));
                match r {
                    Ok(_) => ui.print(s),
                    Err(e) => ui.error(&e),
                }
            }
        }
        ServiceCmd::Scale { detach, pairs } => {
            let mut parsed = Vec::new();
            for p in pairs {
                let (name, n) = p.split_once('=').ok_or_else(|| {
                    format!("invalid scale specifier {p:?}: expected SERVICE=REPLICAS")
                })?;
                let n: u64 = n.parse().map_err(|_| {
                    format!("invalid replicas value for service {name:?}: {n:?} is not a number")
                })?;
                check_service_arg(name)?;
                parsed.push((name.to_string(), n));
            }
            let mut scaled = Vec::new();
            for (name, n) in parsed {
                let r = inspect(agent, &name).and_then(|v| {
                    let mut spec = v.spec.clone();
                    match spec.mode {
                        ServiceMode::Replicated { .. } => {
                            spec.mode = ServiceMode::Replicated { replicas: n }
                        }
                        ServiceMode::Global => {
                            return Err(format!(
                                "{name}: scale can only be used with replicated mode"
                            ))
                        }
                    }
                    spec.validate().map_err(|e| e.to_string())?;
                    update(agent, &v.id, v.version, &spec).map(|_| v.id)
                });
                match r {
                    Ok(id) => {
                        ui.print(&format!("{name} scaled to {n}"));
                        scaled.push(id);
                    }
                    Err(e) => ui.error(&e),
                }
            }
            if !detach {
                for id in scaled {
                    converge(agent, &id, ui, true, false)?;
                }
            }
        }
        ServiceCmd::Logs {
            follow,
            tail,
            timestamps,
            no_trunc,
            service,
        } => logs(agent, service, tail, *follow, *timestamps, *no_trunc, ui)?,
        ServiceCmd::Update(a) if a.rollback => {
            if update_changes_anything(a) {
                return Err("--rollback cannot be combined with other options".into());
            }
            let v = inspect(agent, &a.service)?;
            rollback(agent, &v.id, v.version)?;
            if !a.quiet {
                ui.print(&a.service);
            }
            if !a.detach {
                converge(agent, &v.id, ui, !a.quiet, true)?;
            }
        }
        ServiceCmd::Rollback {
            detach,
            quiet,
            service,
        } => {
            let v = inspect(agent, service)?;
            rollback(agent, &v.id, v.version)?;
            if !quiet {
                ui.print(service);
            }
            if !detach {
                converge(agent, &v.id, ui, !quiet, true)?;
            }
        }
        ServiceCmd::Update(a) => {
            let v = inspect(agent, &a.service)?;
            let spec = update_spec(&v.spec, a)?;
            update(agent, &v.id, v.version, &spec)?;
            if !a.quiet {
                ui.print(&a.service);
            }
            if !a.detach {
                // Converged, but on the old spec: the update failed.
                if let Some(why) = converge(agent, &v.id, ui, !a.quiet, true)? {
                    return Err(format!(
                        "the update of {} was rolled back ({why})",
                        clean(&v.spec.name)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `node ps [NODE...]`: the tasks on nodes (default: the node answering).
pub(super) fn node_ps(
    agent: &Agent,
    nodes: &[String],
    no_trunc: bool,
    quiet: bool,
    filters: &[String],
    ui: &mut Ui<'_>,
) -> Result<(), String> {
    let nodes: Vec<String> = if nodes.is_empty() {
        vec!["self".into()]
    } else {
        nodes.to_vec()
    };
    let mut all = Vec::new();
    for n in &nodes {
        let n = if n == "self" {
            agent.self_id()?
        } else {
            n.clone()
        };
        all.extend(tasks(agent, &[], Some(&n))?);
    }
    let list = filter_tasks(all, filters)?;
    if quiet {
        let ids: String = list
            .iter()
            .map(|t| format!("{}\n", short(&t.id, no_trunc)))
            .collect();
        ui.print(&ids);
    } else {
        ui.print(&task_table(&list, no_trunc, now_ms()));
    }
    Ok(())
}

/// `service logs`: rounds of the logs request, carrying the cursors, every half second while
/// following.
fn logs(
    agent: &Agent,
    service: &str,
    tail: &str,
    follow: bool,
    timestamps: bool,
    no_trunc: bool,
    ui: &mut Ui<'_>,
) -> Result<(), String> {
    check_service_arg(service)?;
    let tail: Option<usize> = match tail {
        "all" => None,
        n => Some(
            n.parse()
                .map_err(|_| format!("invalid --tail {n:?}: expected a number or \"all\""))?,
        ),
    };
    let mut cursors = serde_json::Map::new();
    let mut warned = std::collections::BTreeSet::new();
    let mut width = 0usize;
    let path = service_path(service, "/logs");
    loop {
        let body = json!({ "tail": tail, "cursors": cursors });
        let (lines, next, warnings) = match agent.call("POST", &path, Some(&body))? {
            Response::Logs {
                lines,
                cursors,
                warnings,
            } => (lines, cursors, warnings),
            other => return Err(unexpected("task output", &other)),
        };
        for w in warnings {
            if warned.insert(w.clone()) {
                let _ = writeln!(
                    ui.err,
                    "warning: incomplete log stream: {}",
                    super::one_line(&w)
                );
            }
        }
        let mut text = String::new();
        for l in &lines {
            let source = if no_trunc {
                l.source.clone()
            } else {
                shorten_source(&l.source)
            };
            width = width.max(source.chars().count());
            let ts = if timestamps {
                format!("{} ", rfc3339_utc(l.timestamp_ms))
            } else {
                String::new()
            };
            text.push_str(&format!(
                "{:<width$}    | {ts}{}\n",
                clean(&source),
                clean(&l.text)
            ));
        }
        ui.print(&text);
        cursors = serde_json::to_value(&next)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        if !follow || ui.out_broken {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `web.1.<16 hex>@node` with the task id cut to 12 digits, as docker cuts ids.
fn shorten_source(source: &str) -> String {
    let Some((name, node)) = source.rsplit_once('@') else {
        return source.to_string();
    };
    match name.rsplit_once('.') {
        Some((prefix, id)) if id.len() > 12 => format!("{prefix}.{}@{node}", &id[..12]),
        _ => source.to_string(),
    }
}

// ------------------------------------------------------------------ convergence

/// How long tasks must stay running before the service counts as converged.
const VERIFY: Duration = Duration::from_secs(2);

/// A slot's progress bar position: new … running.
fn step(state: &str) -> u64 {
    match state {
        "New" => 0,
        "Pending" => 1,
        "Assigned" => 2,
        "Accepted" => 3,
        "Preparing" => 4,
        "Ready" => 5,
        "Starting" | "Running (starting)" | "Running (unhealthy)" => 6,
        "Running" | "Running (healthy)" => 8,
        _ => 0,
    }
}

/// Where a service stands.
pub(super) struct Progress {
    /// Its current, wanted tasks that run its current spec.
    pub running: u64,
    /// How many it wants.
    pub desired: u64,
    /// Per slot (or node, for a global service): state and error.
    pub slots: BTreeMap<String, (String, String)>,
}

fn progress(view: &ServiceView, tasks: &[TaskView]) -> Progress {
    let mut slots = BTreeMap::new();
    let mut running = 0;
    for t in tasks.iter().filter(|t| t.current) {
        let wanted = t.desired_state == "Running" || t.desired_state == "Ready";
        if !wanted {
            continue;
        }
        let ok = counts_as_running(&t.state) && t.up_to_date;
        if ok {
            running += 1;
        }
        let key = if t.slot > 0 {
            format!("{:>5}", t.slot)
        } else {
            t.node.clone()
        };
        slots.insert(key, (t.state.clone(), t.err.clone()));
    }
    Progress {
        running,
        desired: view.desired,
        slots,
    }
}

/// `Running`, or `Running (healthy)`: what counts as running (a checked task once healthy).
fn counts_as_running(state: &str) -> bool {
    state == "Running" || state == "Running (healthy)"
}

/// One service followed until it has converged: every wanted task runs and stays running for
/// [`VERIFY`]; with `rollout`, also until its update or rollback has ended.
pub(super) struct Follower {
    id: String,
    rollout: bool,
    stable_since: Option<Instant>,
    rolling_back: Option<String>,
    shown_errors: BTreeMap<String, String>,
    /// When the follow began (Unix ms).
    since_ms: u64,
    /// Since when some slot's task has ended without a replacement.
    given_up_since: Option<Instant>,
}

/// What one look at a followed service found.
pub(super) struct Look {
    /// The service's name (cleaned for a terminal).
    pub name: String,
    /// Its tasks' progress.
    pub progress: Progress,
    /// `overall progress`, or `overall progress: rolling back update`.
    pub what: &'static str,
    /// The rollback's cause, the first time a rollback is seen.
    pub rollback_started: Option<String>,
    /// Slot errors not reported before: (slot, state, error).
    pub new_errors: Vec<(String, String, String)>,
    /// Set once it has ended: converged (with the rollback's cause if the update was rolled
    /// back), or an error (a paused update's message).
    pub outcome: Option<Result<Option<String>, String>>,
}

impl Follower {
    /// Follows service `id` (`rollout`: also its update or rollback).
    pub(super) fn new(id: &str, rollout: bool) -> Follower {
        Follower {
            id: id.to_string(),
            rollout,
            stable_since: None,
            rolling_back: None,
            shown_errors: BTreeMap::new(),
            since_ms: now_ms(),
            given_up_since: None,
        }
    }

    /// Looks at the service and its tasks once.
    pub(super) fn look(&mut self, agent: &Agent) -> Result<Look, String> {
        let view = inspect(agent, &self.id)?;
        let list = tasks(agent, std::slice::from_ref(&view.id), None)?;
        let p = progress(&view, &list);
        let name = clean(&view.spec.name).into_owned();
        let mut look = Look {
            name,
            what: "overall progress",
            rollback_started: None,
            new_errors: Vec::new(),
            outcome: None,
            progress: Progress {
                running: 0,
                desired: 0,
                slots: BTreeMap::new(),
            },
        };
        let status = view.update_status.as_ref().filter(|_| self.rollout);
        if let Some(u) = status {
            if u.state.is_rollback() && self.rolling_back.is_none() {
                let mut why = clean(&u.message).into_owned();
                // A quick rollback may be over before this look: its message then says only
                // that, so the error of a task that failed since the follow began says why
                // (clocks of the CLI and the nodes may differ by a few seconds).
                if !u.state.in_progress() {
                    let failed = list
                        .iter()
                        .filter(|t| !t.err.is_empty() && !why.contains(t.err.as_str()))
                        .filter(|t| t.state_since_ms + 5_000 >= self.since_ms)
                        .max_by_key(|t| t.state_since_ms);
                    if let Some(t) = failed {
                        why = format!(
                            "{why}: task {} failed: {}",
                            short(&t.id, false),
                            clean(&t.err)
                        );
                    }
                }
                self.rolling_back = Some(why.clone());
                look.rollback_started = Some(why);
            }
            if matches!(u.state, UpdateState::Paused | UpdateState::RollbackPaused) {
                look.outcome = Some(Err(clean(&u.message).into_owned()));
            }
        }
        if self.rolling_back.is_some() {
            look.what = "overall progress: rolling back update";
        }
        for (slot, (state, err)) in &p.slots {
            if !err.is_empty() && self.shown_errors.get(slot) != Some(err) {
                look.new_errors
                    .push((slot.clone(), state.to_ascii_lowercase(), err.clone()));
                self.shown_errors.insert(slot.clone(), err.clone());
            }
        }
        let settled = status.is_none_or(|u| !u.state.in_progress());
        let done = settled
            && p.running >= p.desired
            && p.slots
                .values()
                .filter(|(s, _)| counts_as_running(s))
                .count() as u64
                >= p.desired;
        if done {
            let since = *self.stable_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= VERIFY && look.outcome.is_none() {
                look.outcome = Some(Ok(self.rolling_back.clone()));
            }
        } else {
            self.stable_since = None;
        }
        // A slot whose task ended and still wants it running has no replacement coming: the
        // orchestrator replaces a task it restarts at once (waiting, if there is a delay), so
        // its restart policy gave up (no more attempts, or a condition that does not restart).
        // Waiting on would be forever, as docker's own follow does; say so instead.
        let ended: Vec<(&String, &String, &String)> = p
            .slots
            .iter()
            .filter(|(_, (s, _))| matches!(s.as_str(), "Failed" | "Rejected" | "Complete"))
            .map(|(slot, (s, err))| (slot, s, err))
            .collect();
        if settled && !done && !ended.is_empty() {
            let since = *self.given_up_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= VERIFY && look.outcome.is_none() {
                let (slot, state, err) = ended[0];
                let why = if err.is_empty() {
                    String::new()
                } else {
                    format!(": {}", clean(err))
                };
                look.outcome = Some(Err(format!(
                    "{} of {} tasks ended and the restart policy does not restart {} (slot {} {}{why})",
                    ended.len(),
                    p.desired,
                    if ended.len() == 1 { "it" } else { "them" },
                    slot.trim(),
                    state.to_ascii_lowercase()
                )));
            }
        } else {
            self.given_up_since = None;
        }
        look.progress = p;
        Ok(look)
    }
}

/// The time between two looks at a converging service.
pub(super) const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Follows a service until it has converged (see [`Follower`]), drawing a bar per slot on a
/// terminal and plain lines otherwise: a paused update is an error (its message), a rollback
/// is announced as docker does and its cause returned.
fn converge(
    agent: &Agent,
    id: &str,
    ui: &mut Ui<'_>,
    show: bool,
    rollout: bool,
) -> Result<Option<String>, String> {
    let tty = std::io::stdout().is_terminal() && show;
    let mut bars: Option<(
        indicatif::MultiProgress,
        indicatif::ProgressBar,
        BTreeMap<String, indicatif::ProgressBar>,
    )> = None;
    let mut last_line = String::new();
    let mut follower = Follower::new(id, rollout);
    loop {
        let look = follower.look(agent)?;
        let p = &look.progress;
        if let (Some(why), true) = (&look.rollback_started, show) {
            if let Some((multi, _, _)) = &bars {
                let _ = multi.println(format!("rollback: {why}"));
            } else {
                ui.print(&format!("rollback: {why}"));
            }
        }
        if show && tty {
            let (multi, overall, per_slot) = bars.get_or_insert_with(|| {
                let multi = indicatif::MultiProgress::new();
                let overall = multi.add(indicatif::ProgressBar::new(p.desired.max(1)));
                if let Ok(style) =
                    indicatif::ProgressStyle::with_template("{msg}: {pos} out of {len} tasks")
                {
                    overall.set_style(style);
                }
                (multi, overall, BTreeMap::new())
            });
            overall.set_message(look.what);
            overall.set_length(p.desired);
            overall.set_position(p.running);
            for (slot, (state, err)) in p.slots.iter().take(20) {
                let bar = per_slot.entry(slot.clone()).or_insert_with(|| {
                    let b = multi.add(indicatif::ProgressBar::new(8));
                    // The slot is part of the template: one that does not parse keeps the
                    // default style rather than stopping the follow.
                    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
                        "{}/{}: {{msg:<10}} [{{bar:50.cyan/blue}}]",
                        slot.trim(),
                        p.desired
                    )) {
                        b.set_style(style.progress_chars("=> "));
                    }
                    b
                });
                bar.set_position(step(state));
                bar.set_message(if err.is_empty() {
                    state.to_ascii_lowercase()
                } else {
                    err.clone()
                });
            }
        } else if show {
            let line = format!("{}: {} out of {} tasks", look.what, p.running, p.desired);
            if line != last_line {
                ui.print(&line);
                last_line = line;
            }
            for (slot, state, err) in &look.new_errors {
                ui.print(&format!("{}/{}: {state}: {err}", slot.trim(), p.desired));
            }
        }
        match look.outcome {
            Some(Err(paused)) => {
                if let Some((_, overall, per_slot)) = &bars {
                    for b in per_slot.values() {
                        b.abandon();
                    }
                    overall.abandon();
                }
                return Err(paused);
            }
            Some(Ok(rolled_back)) => {
                if let Some((_, overall, per_slot)) = &bars {
                    for b in per_slot.values() {
                        b.finish();
                    }
                    overall.finish();
                }
                if show {
                    // After the bars, on a line of its own.
                    let lead = if bars.is_some() { "\n" } else { "" };
                    ui.print(&format!("{lead}verify: Service {} converged", look.name));
                }
                return Ok(rolled_back);
            }
            None => {}
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_memory_and_cpus_parse_like_docker() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "5x", "-1s", "5 s", "1e99h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_memory("64M").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_memory("512").unwrap(), 512);
        assert_eq!(parse_memory("100kb").unwrap(), 102_400);
        for bad in ["", "M", "12q", "-5m", "1e30g"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cpus("0.5").unwrap(), 500_000_000);
        assert_eq!(parse_cpus("2").unwrap(), 2_000_000_000);
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("NaN").is_err());
    }

    #[test]
    fn args_split_on_spaces_and_keep_quotes() {
        assert_eq!(split_args("a b  c").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(
            split_args("-c 'echo hi' \"\"").unwrap(),
            vec!["-c", "echo hi", ""]
        );
        assert!(split_args("'open").is_err());
    }

    #[test]
    fn ago_reads_like_docker() {
        assert_eq!(ago(0, 500), "Less than a second ago");
        assert_eq!(ago(0, 3_000), "3 seconds ago");
        assert_eq!(ago(0, 90_000), "About a minute ago");
        assert_eq!(ago(0, 5 * 60_000), "5 minutes ago");
    }
}
