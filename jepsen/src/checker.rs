//! The checkers: each turns part of the history (or what the final phase saw) into a
//! [`Verdict`].

use std::collections::{BTreeMap, BTreeSet};

use shoal_sim::linearizability::{self, CheckResult, OpKind, Operation};

use crate::history::{Op, Outcome, Validity, Verdict};

/// Search steps allowed per register key.
pub const STEPS_PER_KEY: u64 = 20_000_000;

/// Linearizability of the register workload, key by key (Wing–Gong search with the
/// sim-tests checker). Unknown outcomes are optional operations; failed ones are left out (a
/// failed compare-and-set by version says nothing about the value).
pub fn registers(ops: &[Op]) -> Verdict {
    let reg: Vec<&Op> = ops.iter().filter(|o| o.workload == "register").collect();
    let keys: BTreeSet<&str> = reg.iter().filter_map(|o| o.key.as_deref()).collect();
    let ids: BTreeMap<&str, u64> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, i as u64))
        .collect();
    let mut history = Vec::new();
    for o in &reg {
        let Some(key) = o.key.as_deref().and_then(|k| ids.get(k)) else {
            continue;
        };
        let ok = match o.outcome {
            Outcome::Ok => Some(true),
            Outcome::Info => None,
            Outcome::Fail => continue,
        };
        let kind = match o.f.as_str() {
            "read" if ok == Some(true) => OpKind::Get,
            "read" => continue,
            "write" => OpKind::Put,
            "cas" => OpKind::Cas,
            _ => continue,
        };
        history.push(Operation {
            client: o.process,
            op: kind,
            key: *key,
            value: if kind == OpKind::Get { None } else { o.value },
            expected: if kind == OpKind::Cas {
                o.expected
            } else {
                None
            },
            start_ns: o.start_ns,
            end_ns: if ok.is_none() { u64::MAX } else { o.end_ns },
            ok,
            result: if kind == OpKind::Get { o.result } else { None },
        });
    }
    let name_of = |id: u64| {
        ids.iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.to_string())
            .unwrap_or_default()
    };
    let counted = format!("{} operations on {} keys", history.len(), ids.len());
    match linearizability::check_with_budget(&history, STEPS_PER_KEY) {
        CheckResult::Linearizable => Verdict {
            checker: "linearizable-registers".into(),
            valid: Validity::True,
            anomaly: None,
            detail: format!("every key linearizable: {counted}"),
            failing_key: None,
        },
        CheckResult::Inconclusive { key } => Verdict {
            checker: "linearizable-registers".into(),
            valid: Validity::Unknown,
            anomaly: Some("search-budget-exhausted".into()),
            detail: format!(
                "key {} not decided within {STEPS_PER_KEY} search steps; the others are \
                 linearizable ({counted})",
                name_of(key)
            ),
            failing_key: Some(name_of(key)),
        },
        CheckResult::NotLinearizable { key, ops } => {
            let name = name_of(key);
            let key_ops: Vec<&Op> = reg
                .iter()
                .copied()
                .filter(|o| o.key.as_deref() == Some(name.as_str()))
                .collect();
            let (anomaly, why) = match localize(&ops) {
                Some(named) => named,
                None => name_anomaly(&key_ops),
            };
            Verdict {
                checker: "linearizable-registers".into(),
                valid: Validity::False,
                anomaly: Some(anomaly.into()),
                detail: format!("key {name} has no linearization: {why} ({counted})"),
                failing_key: Some(name),
            }
        }
    }
}

/// Finds where a non-linearizable key's history first goes wrong and what one change would
/// explain it: the shortest prefix (by completion) with no linearization ends with the op that
/// could not be placed. If the history up to it becomes linearizable when one acknowledged
/// write before it is taken as never having happened, and no read ever saw that write, the
/// write was lost (`lost-write`); if it becomes linearizable without that op, a read, the read
/// was stale (`stale-read`).
pub fn localize(ops: &[Operation]) -> Option<(&'static str, String)> {
    let lin = |h: &[Operation]| {
        matches!(
            linearizability::check_with_budget(h, STEPS_PER_KEY / 10),
            CheckResult::Linearizable
        )
    };
    let mut done: Vec<&Operation> = ops.iter().filter(|o| o.ok.is_some()).collect();
    done.sort_by_key(|o| o.end_ns);
    let prefix = |n: usize| -> Vec<Operation> {
        let cut = done[n - 1].end_ns;
        let mut h: Vec<Operation> = done[..n].iter().map(|o| (*o).clone()).collect();
        h.extend(
            ops.iter()
                .filter(|o| o.ok.is_none() && o.start_ns <= cut)
                .cloned(),
        );
        h
    };
    if done.is_empty() || lin(&prefix(done.len())) {
        return None;
    }
    // The shortest failing prefix: all shorter ones are linearizable.
    let (mut lo, mut hi) = (1usize, done.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if lin(&prefix(mid)) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let culprit = done[lo - 1];
    let failing = prefix(lo);
    let show = |v: Option<u64>| v.map_or("nothing".to_string(), |v| v.to_string());
    let at = |ns: u64| ns as f64 / 1e9;
    // The latest acknowledged writes before the culprit, newest first.
    let mut writes: Vec<usize> = (0..failing.len())
        .filter(|&i| {
            let o = &failing[i];
            o.op != OpKind::Get && o.ok == Some(true) && o.end_ns < culprit.start_ns
        })
        .collect();
    writes.sort_by_key(|&i| std::cmp::Reverse(failing[i].end_ns));
    writes.truncate(50);
    for i in writes {
        let w = &failing[i];
        let seen = w.value.is_some()
            && ops.iter().any(|o| {
                (o.op == OpKind::Get && o.result == w.value)
                    || (o.op == OpKind::Cas && o.expected == w.value)
            });
        if seen {
            continue;
        }
        let mut h = failing.clone();
        h[i].ok = None;
        h[i].end_ns = u64::MAX;
        if lin(&h) {
            return Some((
                "lost-write",
                format!(
                    "process {} wrote {} (acknowledged at {:.3} s) and no read ever saw it; \
                     process {} {} at {:.3} s, which only fits if that write never happened",
                    w.client,
                    show(w.value),
                    at(w.end_ns),
                    culprit.client,
                    describe(culprit),
                    at(culprit.start_ns)
                ),
            ));
        }
    }
    if culprit.op == OpKind::Get {
        let without: Vec<Operation> = failing
            .iter()
            .filter(|o| **o != *culprit)
            .cloned()
            .collect();
        if lin(&without) {
            return Some((
                "stale-read",
                format!(
                    "process {} read {} at {:.3} s: a value no order of the operations allows \
                     then (older than a write acknowledged before the read began)",
                    culprit.client,
                    show(culprit.result),
                    at(culprit.start_ns)
                ),
            ));
        }
    }
    Some((
        "nonlinearizable",
        format!(
            "no order explains process {}'s {} at {:.3} s",
            culprit.client,
            describe(culprit),
            at(culprit.start_ns)
        ),
    ))
}

fn describe(o: &Operation) -> String {
    let show = |v: Option<u64>| v.map_or("nothing".to_string(), |v| v.to_string());
    match o.op {
        OpKind::Get => format!("read of {}", show(o.result)),
        OpKind::Put => format!("write of {}", show(o.value)),
        OpKind::Cas => format!("compare-and-set {} to {}", show(o.expected), show(o.value)),
    }
}

/// Names what went wrong on a non-linearizable key (every write writes a value of its own, so
/// a read names the write it saw), looking for the simplest explanation: a read of a value
/// nobody wrote (`phantom-read`); a read that returned a value older than an acknowledged write
/// that began after that value's write ended and ended before the read began — `lost-write`
/// when no read ever saw the newer write, `stale-read` when others did; else
/// `nonlinearizable`.
pub fn name_anomaly(ops: &[&Op]) -> (&'static str, String) {
    let writes: Vec<&&Op> = ops
        .iter()
        .filter(|o| (o.f == "write" || o.f == "cas") && o.outcome != Outcome::Fail)
        .collect();
    let mut reads: Vec<&&Op> = ops
        .iter()
        .filter(|o| o.f == "read" && o.outcome == Outcome::Ok)
        .collect();
    reads.sort_by_key(|r| r.start_ns);
    let show = |v: Option<u64>| v.map_or("nothing".to_string(), |v| v.to_string());
    let at = |ns: u64| ns as f64 / 1e9;
    for r in &reads {
        // The write the read saw (None: the register's initial absence).
        let source = match r.result {
            None => None,
            Some(v) => match writes
                .iter()
                .find(|w| w.value == Some(v) && w.start_ns <= r.end_ns)
            {
                Some(w) => Some(*w),
                None => {
                    return (
                        "phantom-read",
                        format!(
                            "process {} read {v} at {:.3} s, which no write before it wrote",
                            r.process,
                            at(r.start_ns)
                        ),
                    )
                }
            },
        };
        // An acknowledged write wholly after the source and wholly before the read.
        let newer = writes.iter().find(|w| {
            w.outcome == Outcome::Ok
                && w.value != r.result
                && w.end_ns < r.start_ns
                && source.is_none_or(|s| s.outcome == Outcome::Ok && s.end_ns < w.start_ns)
        });
        let Some(w) = newer else {
            continue;
        };
        let seen = reads.iter().any(|x| x.result == w.value);
        let what = format!(
            "process {} wrote {} (acknowledged at {:.3} s); process {} then read {} (at {:.3} s), \
             an older value",
            w.process,
            show(w.value),
            at(w.end_ns),
            r.process,
            show(r.result),
            at(r.start_ns)
        );
        return if seen {
            (
                "stale-read",
                format!("{what}, though other reads saw the write"),
            )
        } else {
            (
                "lost-write",
                format!("{what}, and no read ever saw the write"),
            )
        };
    }
    (
        "nonlinearizable",
        "no single order of the operations explains every result".to_string(),
    )
}

/// What the final phase saw of the services.
#[derive(Clone, Debug, Default)]
pub struct ServicesSeen {
    /// Name → id of every service listed.
    pub listed: Vec<(String, String)>,
    /// Name → (desired replicas, running tasks) when the convergence wait ended.
    pub replicas: BTreeMap<String, (u64, u64)>,
    /// Did every service reach its replicas within the deadline?
    pub converged: bool,
    /// The deadline, seconds.
    pub deadline_s: u64,
    /// (service, slot) → tasks the API says run there.
    pub running_per_slot: BTreeMap<(String, u64), u64>,
    /// (service, slot) → task processes found running on the machine.
    pub processes_per_slot: BTreeMap<(String, u64), u64>,
    /// The list could not be read at all.
    pub unreadable: Option<String>,
}

/// The services as a set: every acknowledged create present, every acknowledged remove
/// absent, names and ids unique.
pub fn services_set(ops: &[Op], seen: &ServicesSeen) -> Verdict {
    let mk = |valid, anomaly: Option<&str>, detail: String| Verdict {
        checker: "service-set".into(),
        valid,
        anomaly: anomaly.map(str::to_string),
        detail,
        failing_key: None,
    };
    if let Some(e) = &seen.unreadable {
        return mk(Validity::Unknown, Some("no-final-read"), e.clone());
    }
    let svc: Vec<&Op> = ops.iter().filter(|o| o.workload == "services").collect();
    let listed: BTreeSet<&str> = seen.listed.iter().map(|(n, _)| n.as_str()).collect();
    let mut problems = Vec::new();
    let mut anomaly = None;
    let names: BTreeSet<&str> = svc.iter().filter_map(|o| o.key.as_deref()).collect();
    for name in names {
        let of = |f: &str, out: Outcome| {
            svc.iter()
                .any(|o| o.key.as_deref() == Some(name) && o.f == f && o.outcome == out)
        };
        let created = of("create", Outcome::Ok);
        let removed = of("remove", Outcome::Ok);
        let maybe_removed = removed || of("remove", Outcome::Info);
        if created && !maybe_removed && !listed.contains(name) {
            anomaly.get_or_insert("lost-create");
            problems.push(format!(
                "{name}: created (acknowledged), never removed, missing"
            ));
        }
        if removed && listed.contains(name) {
            anomaly.get_or_insert("lost-remove");
            problems.push(format!("{name}: removed (acknowledged), still listed"));
        }
        let attempted = svc.iter().any(|o| {
            o.key.as_deref() == Some(name) && o.f == "create" && o.outcome != Outcome::Fail
        });
        if !attempted && listed.contains(name) {
            anomaly.get_or_insert("phantom-create");
            problems.push(format!("{name}: listed, but every create of it failed"));
        }
    }
    let mut ids = BTreeSet::new();
    let mut seen_names = BTreeSet::new();
    for (name, id) in &seen.listed {
        if !ids.insert(id) {
            anomaly.get_or_insert("duplicate-id");
            problems.push(format!("id {id} listed twice"));
        }
        if !seen_names.insert(name) {
            anomaly.get_or_insert("duplicate-name");
            problems.push(format!("name {name} listed twice"));
        }
    }
    let acked = svc.iter().filter(|o| o.outcome == Outcome::Ok).count();
    if problems.is_empty() {
        mk(
            Validity::True,
            None,
            format!(
                "{} services listed at the end; {acked} acknowledged operations agree",
                seen.listed.len()
            ),
        )
    } else {
        mk(Validity::False, anomaly, problems.join("\n"))
    }
}

/// After healing, every service runs its replicas within the deadline.
pub fn convergence(seen: &ServicesSeen) -> Verdict {
    let lagging: Vec<String> = seen
        .replicas
        .iter()
        .filter(|(_, (want, run))| want != run)
        .map(|(n, (want, run))| format!("{n}: {run} of {want} running"))
        .collect();
    let (valid, anomaly, detail) = if seen.unreadable.is_some() {
        (
            Validity::Unknown,
            Some("no-final-read".to_string()),
            "the services could not be read".to_string(),
        )
    } else if seen.converged && lagging.is_empty() {
        (
            Validity::True,
            None,
            format!(
                "{} services at their replicas within {} s of healing",
                seen.replicas.len(),
                seen.deadline_s
            ),
        )
    } else {
        (
            Validity::False,
            Some("not-converged".to_string()),
            format!("after {} s: {}", seen.deadline_s, lagging.join("; ")),
        )
    };
    Verdict {
        checker: "convergence".into(),
        valid,
        anomaly,
        detail,
        failing_key: None,
    }
}

/// At rest, no slot runs two tasks: neither in the API's view nor as processes.
pub fn one_task_per_slot(seen: &ServicesSeen) -> Verdict {
    let mut problems = Vec::new();
    for ((svc, slot), n) in &seen.running_per_slot {
        if *n > 1 {
            problems.push(format!("{svc}.{slot}: {n} tasks running (API)"));
        }
    }
    for ((svc, slot), n) in &seen.processes_per_slot {
        if *n > 1 {
            problems.push(format!("{svc}.{slot}: {n} task processes running"));
        }
    }
    let processes: u64 = seen.processes_per_slot.values().sum();
    Verdict {
        checker: "one-task-per-slot".into(),
        valid: if problems.is_empty() {
            Validity::True
        } else {
            Validity::False
        },
        anomaly: (!problems.is_empty()).then(|| "task-ran-twice".to_string()),
        detail: if problems.is_empty() {
            format!(
                "{} slots, {processes} task processes, one each",
                seen.processes_per_slot
                    .len()
                    .max(seen.running_per_slot.len())
            )
        } else {
            problems.join("\n")
        },
        failing_key: None,
    }
}

/// Scans the agents' logs for panics.
pub fn no_panics(logs: &[(String, String)]) -> Verdict {
    let mut found = Vec::new();
    for (name, text) in logs {
        for line in text.lines() {
            if line.contains("panicked at") || line.contains("RUST_BACKTRACE") {
                found.push(format!("{name}: {}", line.trim()));
            }
        }
    }
    Verdict {
        checker: "no-panics".into(),
        valid: if found.is_empty() {
            Validity::True
        } else {
            Validity::False
        },
        anomaly: (!found.is_empty()).then(|| "panic".to_string()),
        detail: if found.is_empty() {
            format!("{} agent logs, no panic", logs.len())
        } else {
            found.join("\n")
        },
        failing_key: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, f: &str, value: Option<u64>, result: Option<u64>, t: (u64, u64)) -> Op {
        Op {
            process,
            workload: "register".into(),
            f: f.into(),
            key: Some("n1/r0".into()),
            value,
            expected: None,
            result,
            node: 1,
            start_ns: t.0,
            end_ns: t.1,
            outcome: Outcome::Ok,
            error: None,
        }
    }

    #[test]
    fn a_linearizable_history_passes() {
        let ops = vec![
            op(0, "write", Some(1), None, (0, 10)),
            op(1, "read", None, Some(1), (20, 30)),
            op(0, "write", Some(2), None, (40, 50)),
            op(1, "read", None, Some(2), (60, 70)),
        ];
        assert_eq!(registers(&ops).valid, Validity::True);
    }

    #[test]
    fn a_lost_write_is_caught_and_named() {
        let ops = vec![
            op(0, "write", Some(1), None, (0, 10)),
            op(0, "write", Some(2), None, (20, 30)),
            op(1, "read", None, Some(1), (40, 50)),
            op(2, "read", None, Some(1), (60, 70)),
        ];
        let v = registers(&ops);
        assert_eq!(v.valid, Validity::False);
        assert_eq!(v.anomaly.as_deref(), Some("lost-write"), "{}", v.detail);
        assert_eq!(v.failing_key.as_deref(), Some("n1/r0"));
    }

    #[test]
    fn a_stale_read_is_caught_and_named() {
        let ops = vec![
            op(0, "write", Some(1), None, (0, 10)),
            op(0, "write", Some(2), None, (20, 30)),
            op(1, "read", None, Some(2), (40, 50)),
            op(2, "read", None, Some(1), (60, 70)),
        ];
        let v = registers(&ops);
        assert_eq!(v.valid, Validity::False);
        assert_eq!(v.anomaly.as_deref(), Some("stale-read"), "{}", v.detail);
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let mut w = op(0, "write", Some(2), None, (20, 30));
        w.outcome = Outcome::Info;
        let ops = vec![
            op(0, "write", Some(1), None, (0, 10)),
            w,
            op(1, "read", None, Some(2), (400, 500)),
            op(2, "read", None, Some(2), (600, 700)),
        ];
        assert_eq!(registers(&ops).valid, Validity::True);
    }

    #[test]
    fn the_service_set_wants_acknowledged_creates_and_removes() {
        let svc = |f: &str, name: &str, outcome| Op {
            workload: "services".into(),
            key: Some(name.into()),
            outcome,
            ..op(0, f, Some(1), None, (0, 1))
        };
        let ops = vec![
            svc("create", "a", Outcome::Ok),
            svc("create", "b", Outcome::Ok),
            svc("remove", "b", Outcome::Ok),
            svc("create", "c", Outcome::Info),
        ];
        let seen = |names: &[&str]| ServicesSeen {
            listed: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i.to_string()))
                .collect(),
            ..Default::default()
        };
        assert_eq!(services_set(&ops, &seen(&["a"])).valid, Validity::True);
        assert_eq!(services_set(&ops, &seen(&["a", "c"])).valid, Validity::True);
        let lost = services_set(&ops, &seen(&[]));
        assert_eq!(lost.anomaly.as_deref(), Some("lost-create"));
        let kept = services_set(&ops, &seen(&["a", "b"]));
        assert_eq!(kept.anomaly.as_deref(), Some("lost-remove"));
    }

    #[test]
    fn panics_in_a_log_are_found() {
        let logs = vec![
            ("n1".to_string(), "INFO fine\n".to_string()),
            (
                "n2".to_string(),
                "thread 'main' panicked at src/x.rs:1:1:\nboom\n".to_string(),
            ),
        ];
        let v = no_panics(&logs);
        assert_eq!(v.valid, Validity::False);
        assert!(v.detail.contains("n2"));
    }
}
