//! `shoal stack …`: applications from Compose files, as `docker stack`. A stack is the set of
//! services labelled `com.docker.stack.namespace=NAME`. Every file is read, interpolated and
//! turned into specs before anything is sent, so a bad file deploys nothing; `deploy` then
//! follows every service it changed until it has converged, and `rm` returns once every task of
//! the stack is gone (Swarm returns at once, and an immediate redeploy trips over what is
//! still shutting down).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use shoal_cluster::{SecretKind, SecretSpec};

use super::secret::{base, views};
use super::service::{
    filter_tasks, now_ms, service_path, service_table, short, task_table, tasks, update, Follower,
    LOOK_EVERY,
};
use super::{unexpected, Agent, Ui};
use crate::api::{Response, ServiceView};
use crate::format::{clean, render_table};
use crate::stack::objects::StackObject;
use crate::stack::project::{config_yaml, load_stack};
use crate::stack::spec::STACK_LABEL;

/// `shoal stack …`.
#[derive(Debug, Subcommand)]
pub enum StackCmd {
    /// Deploy a new stack or update an existing one from Compose files
    #[command(visible_alias = "up")]
    Deploy(DeployArgs),
    /// List stacks
    #[command(visible_alias = "list")]
    Ls,
    /// List the services in the stack
    Services {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// The stack.
        #[arg(value_name = "STACK")]
        stack: String,
    },
    /// List the tasks in the stack
    Ps {
        /// Do not truncate output
        #[arg(long)]
        no_trunc: bool,
        /// Only display task IDs
        #[arg(short, long)]
        quiet: bool,
        /// Filter output: desired-state=running|shutdown|accepted, id=…, name=…, node=…
        #[arg(short = 'f', long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// The stack.
        #[arg(value_name = "STACK")]
        stack: String,
    },
    /// Remove one or more stacks, waiting until their tasks are gone
    #[command(visible_aliases = ["remove", "down"])]
    Rm {
        /// Return once the services are removed, without waiting for their tasks
        #[arg(short, long)]
        detach: bool,
        /// The stacks.
        #[arg(value_name = "STACK", required = true)]
        stacks: Vec<String>,
    },
    /// Print the merged, interpolated Compose file
    Config {
        /// Path to a Compose file (repeatable; later files override earlier ones)
        #[arg(
            short = 'c',
            long = "compose-file",
            value_name = "FILE",
            required = true
        )]
        files: Vec<PathBuf>,
    },
}

/// The options of `stack deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Path to a Compose file (repeatable; later files override earlier ones)
    #[arg(
        short = 'c',
        long = "compose-file",
        value_name = "FILE",
        required = true
    )]
    pub files: Vec<PathBuf>,
    /// Remove the services of the stack that the files no longer define
    #[arg(long)]
    pub prune: bool,
    /// Return once the services are created or updated, without waiting for them to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// The stack's name (its services are named STACK_SERVICE)
    #[arg(value_name = "STACK")]
    pub stack: String,
}

/// A stack name: what a service name may be (letters, digits, `_ . -`, starting with a letter
/// or digit, at most 63 characters); `STACK_SERVICE` is checked again as a service name.
fn check_stack_name(name: &str) -> Result<(), String> {
    shoal_cluster::validate_service_name(name).map_err(|_| {
        format!(
            "invalid stack name {name:?}: use letters, digits, '_', '.' and '-', starting with a \
             letter or digit, at most 63 characters"
        )
    })
}

/// Every service of the cluster.
fn all_services(agent: &Agent) -> Result<Vec<ServiceView>, String> {
    match agent.call("GET", "/v1/services", None)? {
        Response::Services { services } => Ok(services),
        other => Err(unexpected("a service list", &other)),
    }
}

/// The services of stack `name`, by name.
fn stack_services(agent: &Agent, name: &str) -> Result<Vec<ServiceView>, String> {
    let mut list: Vec<ServiceView> = all_services(agent)?
        .into_iter()
        .filter(|s| s.spec.labels.get(STACK_LABEL).map(String::as_str) == Some(name))
        .collect();
    list.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(list)
}

/// Runs a `stack` command.
pub(super) fn stack(agent: &Agent, cmd: &StackCmd, ui: &mut Ui<'_>) -> Result<(), String> {
    match cmd {
        StackCmd::Deploy(a) => deploy(agent, a, ui),
        StackCmd::Ls => {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for s in all_services(agent)? {
                if let Some(name) = s.spec.labels.get(STACK_LABEL) {
                    *counts.entry(name.clone()).or_default() += 1;
                }
            }
            let mut rows: Vec<[Cow<'_, str>; 2]> = vec![["NAME", "SERVICES"].map(Cow::Borrowed)];
            for (name, n) in counts {
                rows.push([
                    Cow::Owned(clean(&name).into_owned()),
                    Cow::Owned(n.to_string()),
                ]);
            }
            ui.print(&render_table(&rows));
            Ok(())
        }
        StackCmd::Services { quiet, stack } => {
            check_stack_name(stack)?;
            let list = stack_services(agent, stack)?;
            if list.is_empty() {
                return Err(format!("nothing found in stack: {stack}"));
            }
            if *quiet {
                ui.print(
                    &list
                        .iter()
                        .map(|s| format!("{}\n", s.id))
                        .collect::<String>(),
                );
            } else {
                ui.print(&service_table(&list));
            }
            Ok(())
        }
        StackCmd::Ps {
            no_trunc,
            quiet,
            filters,
            stack,
        } => {
            check_stack_name(stack)?;
            let ids: Vec<String> = stack_services(agent, stack)?
                .into_iter()
                .map(|s| s.id)
                .collect();
            if ids.is_empty() {
                return Err(format!("nothing found in stack: {stack}"));
            }
            let list = filter_tasks(tasks(agent, &ids, None)?, filters)?;
            if *quiet {
                ui.print(
                    &list
                        .iter()
                        .map(|t| format!("{}\n", short(&t.id, *no_trunc)))
                        .collect::<String>(),
                );
            } else {
                ui.print(&task_table(&list, *no_trunc, now_ms()));
            }
            Ok(())
        }
        StackCmd::Rm { detach, stacks } => {
            for name in stacks {
                check_stack_name(name)?;
            }
            let mut removed = BTreeSet::new();
            for name in stacks {
                let list = stack_services(agent, name)?;
                if list.is_empty() {
                    ui.warn(&format!("Nothing found in stack: {name}"));
                    continue;
                }
                for s in list {
                    ui.print(&format!("Removing service {}", s.spec.name));
                    match agent.ok("DELETE", &service_path(&s.id, ""), None) {
                        Ok(_) => {
                            removed.insert(s.id);
                        }
                        Err(e) => ui.error(&e),
                    }
                }
            }
            // The stacks' own secrets and configs go with them (external ones stay).
            for name in stacks {
                for kind in [SecretKind::Secret, SecretKind::Config] {
                    for o in views(agent, base(kind))? {
                        if o.labels.get(STACK_LABEL) == Some(name) {
                            ui.print(&format!("Removing {} {}", kind.name(), o.name));
                            let path = format!("{}/{}", base(kind), o.id);
                            if let Err(e) = agent.ok("DELETE", &path, None) {
                                ui.error(&e);
                            }
                        }
                    }
                }
            }
            if !detach {
                wait_gone(agent, &removed, ui)?;
            }
            Ok(())
        }
        StackCmd::Config { files } => {
            // Only the files: the stack name does not change what is printed.
            let stack = load_stack("config", files, std::env::vars())?;
            for w in &stack.warnings {
                ui.warn(w);
            }
            ui.print(&config_yaml(&stack.merged)?);
            Ok(())
        }
    }
}

/// Creates the secrets and configs a stack defines that do not exist yet (an existing one
/// with the same content is left alone; with other content, refused: they cannot change), and
/// checks that the external ones exist. Everything is checked before anything is created.
fn ensure_objects(agent: &Agent, objects: &[StackObject], ui: &mut Ui<'_>) -> Result<(), String> {
    let mut specs = Vec::new();
    for o in objects {
        if let Some(data) = &o.data {
            let spec = SecretSpec {
                name: o.name.clone(),
                labels: o.labels.clone(),
                data: data.clone(),
            };
            spec.validate(o.kind)
                .map_err(|e| format!("{}s.{}: {e}", o.kind.name(), o.key))?;
            specs.push((o.kind, spec));
        }
    }
    let mut existing = BTreeSet::new();
    for kind in [SecretKind::Secret, SecretKind::Config] {
        if objects.iter().any(|o| o.kind == kind) {
            for v in views(agent, base(kind))? {
                existing.insert((kind, v.name));
            }
        }
    }
    for o in objects.iter().filter(|o| o.data.is_none()) {
        if !existing.contains(&(o.kind, o.name.clone())) {
            return Err(format!(
                "{k} {n} is external but does not exist: create it first with shoal {k} create \
                 {n} FILE",
                k = o.kind.name(),
                n = o.name
            ));
        }
    }
    for (kind, spec) in specs {
        if !existing.contains(&(kind, spec.name.clone())) {
            ui.print(&format!("Creating {} {}", kind.name(), spec.name));
        }
        let path = format!("{}/create", base(kind));
        agent.ok(
            "POST",
            &path,
            Some(&json!({ "spec": spec, "exist_ok": true })),
        )?;
    }
    Ok(())
}

/// Waits until no task of the services `ids` is left (the cluster forgets a removed service's
/// task once it has stopped), saying how many are left when that changes.
fn wait_gone(agent: &Agent, ids: &BTreeSet<String>, ui: &mut Ui<'_>) -> Result<(), String> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut last = None;
    loop {
        let left = tasks(agent, &[], None)?
            .iter()
            .filter(|t| ids.contains(&t.service_id))
            .count();
        if left == 0 {
            return Ok(());
        }
        if last != Some(left) {
            ui.print(&format!(
                "Waiting for {left} task{} to stop",
                if left == 1 { "" } else { "s" }
            ));
            last = Some(left);
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

/// `stack deploy`: every spec built first, then each service created or updated (an unchanged
/// one left alone), `--prune` removing the stack's other services, then the changed services
/// followed together until they have converged.
fn deploy(agent: &Agent, a: &DeployArgs, ui: &mut Ui<'_>) -> Result<(), String> {
    check_stack_name(&a.stack)?;
    let stack = load_stack(&a.stack, &a.files, std::env::vars())?;
    for w in &stack.warnings {
        ui.warn(w);
    }
    let existing = stack_services(agent, &a.stack)?;
    // A service of the same name outside the stack is not taken over.
    let others: BTreeSet<String> = all_services(agent)?
        .into_iter()
        .filter(|s| s.spec.labels.get(STACK_LABEL) != Some(&a.stack))
        .map(|s| s.spec.name)
        .collect();
    if let Some(s) = stack.services.iter().find(|s| others.contains(&s.name)) {
        return Err(format!(
            "service {} exists and is not part of stack {}: remove or rename it first",
            s.name, a.stack
        ));
    }
    ensure_objects(agent, &stack.objects, ui)?;
    let by_name: BTreeMap<&str, &ServiceView> =
        existing.iter().map(|s| (s.spec.name.as_str(), s)).collect();
    let mut follow = Vec::new();
    if a.prune {
        let wanted: BTreeSet<&str> = stack.services.iter().map(|s| s.name.as_str()).collect();
        for s in existing
            .iter()
            .filter(|s| !wanted.contains(s.spec.name.as_str()))
        {
            ui.print(&format!("Removing service {}", s.spec.name));
            agent.ok("DELETE", &service_path(&s.id, ""), None)?;
        }
    }
    for spec in &stack.services {
        match by_name.get(spec.name.as_str()) {
            Some(current) => {
                let mut spec = spec.clone();
                // An unchanged file does not redeploy tasks an earlier --force redeployed.
                spec.task.force_update = current.spec.task.force_update;
                // Secrets and configs are named in the file and known by id in the swarm.
                for r in &mut spec.task.secrets {
                    if let Some(c) = current
                        .spec
                        .task
                        .secrets
                        .iter()
                        .find(|c| c.kind == r.kind && c.name == r.name)
                    {
                        r.id = c.id;
                    }
                }
                if spec == current.spec {
                    ui.print(&format!(
                        "Service {} is up to date (id: {})",
                        spec.name, current.id
                    ));
                    continue;
                }
                ui.print(&format!(
                    "Updating service {} (id: {})",
                    spec.name, current.id
                ));
                update(agent, &current.id, current.version, &spec)?;
                follow.push((current.id.clone(), true));
            }
            None => {
                ui.print(&format!("Creating service {}", spec.name));
                let id = agent.ok(
                    "POST",
                    "/v1/services/create",
                    Some(&json!({ "spec": spec })),
                )?;
                follow.push((id, false));
            }
        }
    }
    if a.detach || follow.is_empty() {
        return Ok(());
    }
    converge_all(agent, &follow, ui, !a.quiet)
}

/// Follows several services together until each has converged: a line per service when its
/// progress changes (a bar per service on a terminal), its tasks' errors, and an error at the
/// end naming every service whose update paused or was rolled back.
fn converge_all(
    agent: &Agent,
    ids: &[(String, bool)],
    ui: &mut Ui<'_>,
    show: bool,
) -> Result<(), String> {
    let tty = show && std::io::stdout().is_terminal();
    let multi = tty.then(indicatif::MultiProgress::new);
    let mut followers: Vec<(Follower, Option<indicatif::ProgressBar>, String)> = ids
        .iter()
        .map(|(id, rollout)| (Follower::new(id, *rollout), None, String::new()))
        .collect();
    let mut failures = Vec::new();
    while !followers.is_empty() {
        let mut i = 0;
        while i < followers.len() {
            let (follower, bar, last_line) = &mut followers[i];
            let look = follower.look(agent)?;
            let p = &look.progress;
            let name = &look.name;
            let say = |ui: &mut Ui<'_>, line: String| match &multi {
                Some(m) => {
                    let _ = m.println(line);
                }
                None => ui.print(&line),
            };
            if show {
                if let Some(why) = &look.rollback_started {
                    say(ui, format!("{name}: rollback: {why}"));
                }
                for (slot, state, err) in &look.new_errors {
                    say(
                        ui,
                        format!("{name} {}/{}: {state}: {err}", slot.trim(), p.desired),
                    );
                }
                match &multi {
                    Some(m) => {
                        let b = bar.get_or_insert_with(|| {
                            let b = m.add(indicatif::ProgressBar::new(p.desired.max(1)));
                            if let Ok(style) = indicatif::ProgressStyle::with_template(
                                "{prefix}: {msg}: {pos} out of {len} tasks",
                            ) {
                                b.set_style(style);
                            }
                            b.set_prefix(name.clone());
                            b
                        });
                        b.set_message(look.what);
                        b.set_length(p.desired);
                        b.set_position(p.running);
                    }
                    None => {
                        let line = format!(
                            "{name}: {}: {} out of {} tasks",
                            look.what, p.running, p.desired
                        );
                        if line != *last_line {
                            ui.print(&line);
                            *last_line = line;
                        }
                    }
                }
            }
            let ended = match look.outcome {
                None => false,
                Some(Ok(None)) => {
                    if show {
                        say(ui, format!("verify: Service {name} converged"));
                    }
                    true
                }
                Some(Ok(Some(why))) => {
                    failures.push(format!("the update of {name} was rolled back ({why})"));
                    true
                }
                Some(Err(paused)) => {
                    failures.push(format!("{name}: {paused}"));
                    true
                }
            };
            if ended {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                followers.remove(i);
            } else {
                i += 1;
            }
        }
        if !followers.is_empty() {
            std::thread::sleep(LOOK_EVERY);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> StackCmd {
        match Cli::try_parse_from(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
        {
            Command::Stack { cmd } => cmd,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn the_stack_commands_parse_as_docker_stack() {
        match parse(&[
            "shoal",
            "stack",
            "deploy",
            "-c",
            "a.yml",
            "--compose-file",
            "b.yml",
            "--prune",
            "-d",
            "app",
        ]) {
            StackCmd::Deploy(a) => {
                assert_eq!(a.files, [PathBuf::from("a.yml"), PathBuf::from("b.yml")]);
                assert!(a.prune && a.detach && !a.quiet);
                assert_eq!(a.stack, "app");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["shoal", "stack", "up", "-c", "a.yml", "x"]),
            StackCmd::Deploy(_)
        ));
        match parse(&["shoal", "stack", "down", "a", "b"]) {
            StackCmd::Rm { detach, stacks } => {
                assert!(!detach);
                assert_eq!(stacks, ["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["shoal", "stack", "remove", "-d", "a"]),
            StackCmd::Rm { detach: true, .. }
        ));
        assert!(matches!(
            parse(&[
                "shoal",
                "stack",
                "ps",
                "--no-trunc",
                "-f",
                "desired-state=running",
                "a"
            ]),
            StackCmd::Ps { no_trunc: true, .. }
        ));
        assert!(matches!(
            parse(&["shoal", "stack", "services", "-q", "a"]),
            StackCmd::Services { quiet: true, .. }
        ));
        assert!(matches!(parse(&["shoal", "stack", "ls"]), StackCmd::Ls));
        assert!(matches!(
            parse(&["shoal", "stack", "config", "-c", "a.yml"]),
            StackCmd::Config { .. }
        ));
        for bad in [
            &["shoal", "stack", "deploy", "app"][..],
            &["shoal", "stack", "deploy", "-c", "a.yml"],
            &["shoal", "stack", "rm"],
            &["shoal", "stack", "config"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stack_names_are_checked() {
        for ok in ["app", "my-app_2", "a.b", "0"] {
            assert!(check_stack_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-app", "a b", "app/x", "é", &"a".repeat(64)] {
            assert!(check_stack_name(bad).is_err(), "{bad}");
        }
    }
}
