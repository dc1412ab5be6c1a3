//! Linearizability checker for key-value register histories.
//!
//! The simulation records every client operation (invocation time, completion
//! time, outcome) and this module decides whether some total order of those
//! operations exists that respects real-time order and the sequential
//! semantics of a register per key.
//!
//! The search is the Wing–Gong algorithm with the refinements popularised by
//! Lowe and by Porcupine:
//!
//! * **P-compositionality**: a key-value store is linearizable iff each key's
//!   sub-history is, so every key is checked on its own (in ascending key
//!   order, which keeps the verdict deterministic).
//! * **Entry list**: each key's operations become call/return events sorted by
//!   time in a doubly linked list. The operations whose call precedes the
//!   first remaining return are exactly those that may be linearized next.
//!   Linearizing an operation "lifts" its two events out of the list; an
//!   undo stack restores them (in reverse order) when the search backtracks.
//! * **Memoization**: a configuration is the pair (set of linearized
//!   operations as a bitset, register state). The remaining search depends
//!   only on that pair, so a configuration seen before is never explored
//!   again.
//!
//! Operations whose outcome is unknown (the client timed out) get an infinite
//! completion time and are *optional*: the search succeeds as soon as every
//! operation with a known outcome is linearized. Optional writes whose value
//! nobody could ever observe are dropped up front, since linearizing them can
//! never help (the register state they produce is dominated by any other).
//!
//! Every iteration of the search loop counts as one step; a key whose search
//! exceeds the budget yields [`CheckResult::Inconclusive`] rather than a guess.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufRead, Write};

/// Step budget per key used by [`check`]; generous enough for a few hundred
/// operations per key from a handful of concurrent clients.
pub const DEFAULT_MAX_STEPS_PER_KEY: u64 = 5_000_000;

/// Kind of client operation against the key-value register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Unconditional write of `value`.
    Put,
    /// Read of the current value.
    Get,
    /// Compare-and-swap: if current == `expected`, set it to `value`.
    Cas,
}

/// One client operation as recorded by the simulation; one JSON line each in history files.
///
/// Field meanings depend on `op` and `ok`; see the module docs and
/// [`check_with_budget`] for the exact semantics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Client that issued the operation (informational only).
    pub client: u64,
    /// Operation kind.
    pub op: OpKind,
    /// Key the operation targets; keys are checked independently.
    pub key: u64,
    /// put: value written; cas: new value; get: None.
    pub value: Option<u64>,
    /// cas: expected current value (None = key absent); else None.
    pub expected: Option<u64>,
    /// Invocation time.
    pub start_ns: u64,
    /// Completion time; `u64::MAX` when the outcome is unknown.
    pub end_ns: u64,
    /// true/false when known; None (JSON null) when unknown (e.g. client timed out).
    pub ok: Option<bool>,
    /// get: value read (None = absent); cas with ok=false: the value observed; else None.
    pub result: Option<u64>,
}

/// Verdict of a linearizability check over a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's sub-history has a valid linearization.
    Linearizable,
    /// No linearization exists for this key's sub-history; `ops` are the operations of that key (for reporting).
    NotLinearizable { key: u64, ops: Vec<Operation> },
    /// The search for this key exceeded the step budget; neither proven nor refuted.
    Inconclusive { key: u64 },
}

/// Checks `history` with [`DEFAULT_MAX_STEPS_PER_KEY`] steps allowed per key.
pub fn check(history: &[Operation]) -> CheckResult {
    check_with_budget(history, DEFAULT_MAX_STEPS_PER_KEY)
}

/// Checks `history` key by key, allowing at most `max_steps_per_key` search
/// steps for each key.
///
/// A definite violation on any key wins over an exhausted budget on another
/// key; among several violations the smallest key is reported.
pub fn check_with_budget(history: &[Operation], max_steps_per_key: u64) -> CheckResult {
    let mut per_key: BTreeMap<u64, Vec<Prepared>> = BTreeMap::new();
    for op in history {
        let ops = per_key.entry(op.key).or_default();
        if let Some(prepared) = Prepared::from_operation(op) {
            ops.push(prepared);
        }
    }

    let mut inconclusive = None;
    for (key, ops) in per_key {
        let ops = drop_unobservable_optional_writes(ops);
        match search(&ops, max_steps_per_key) {
            Verdict::Linearizable => {}
            Verdict::Violation => {
                let ops = history.iter().filter(|o| o.key == key).cloned().collect();
                return CheckResult::NotLinearizable { key, ops };
            }
            Verdict::OutOfBudget => {
                if inconclusive.is_none() {
                    inconclusive = Some(key);
                }
            }
        }
    }
    match inconclusive {
        Some(key) => CheckResult::Inconclusive { key },
        None => CheckResult::Linearizable,
    }
}

/// Writes `history` as JSON lines (one [`Operation`] per line) so failing
/// simulation runs can be saved and re-checked later.
pub fn write_history<W: Write>(mut w: W, history: &[Operation]) -> std::io::Result<()> {
    for op in history {
        serde_json::to_writer(&mut w, op).map_err(std::io::Error::other)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Reads a history written by [`write_history`]; blank lines are skipped and
/// errors name the offending (1-based) line number.
pub fn read_history<R: BufRead>(r: R) -> Result<Vec<Operation>, String> {
    let mut history = Vec::new();
    for (index, line) in r.lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(|e| format!("line {line_no}: read error: {e}"))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let op = serde_json::from_str::<Operation>(text)
            .map_err(|e| format!("line {line_no}: invalid operation: {e}"))?;
        history.push(op);
    }
    Ok(history)
}

/// Register state of one key: `None` means the key is absent.
type State = Option<u64>;

/// The sequential effect of an operation once its outcome is interpreted.
#[derive(Clone, Copy, Debug)]
enum Effect {
    /// Sets the register unconditionally.
    Write(State),
    /// Requires the register to hold this value.
    Read(State),
    /// Requires `expected`, then sets `new`.
    Swap { expected: State, new: State },
    /// Requires a value different from `expected` and equal to `observed`.
    FailedSwap { expected: State, observed: State },
}

impl Effect {
    /// Applies the effect to `state`, or returns `None` if it cannot happen there.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Effect::Write(v) => Some(v),
            Effect::Read(v) => (state == v).then_some(state),
            Effect::Swap { expected, new } => (state == expected).then_some(new),
            Effect::FailedSwap { expected, observed } => {
                (state == observed && state != expected).then_some(state)
            }
        }
    }
}

/// An operation reduced to what the search needs.
#[derive(Clone, Copy, Debug)]
struct Prepared {
    effect: Effect,
    /// Known outcome: must appear in the linearization. Unknown: may be left out.
    required: bool,
    start: u64,
    /// Completion time; `u64::MAX` (infinity) for optional operations.
    end: u64,
}

impl Prepared {
    /// Interprets an operation, or returns `None` when it cannot affect the
    /// verdict (a failed put, a get without a known result).
    fn from_operation(op: &Operation) -> Option<Prepared> {
        let swap = Effect::Swap {
            expected: op.expected,
            new: op.value,
        };
        let (effect, required) = match (op.op, op.ok) {
            (OpKind::Put, Some(true)) => (Effect::Write(op.value), true),
            (OpKind::Put, None) => (Effect::Write(op.value), false),
            (OpKind::Put, Some(false)) => return None,
            (OpKind::Get, Some(true)) => (Effect::Read(op.result), true),
            (OpKind::Get, _) => return None,
            (OpKind::Cas, Some(true)) => (swap, true),
            (OpKind::Cas, None) => (swap, false),
            (OpKind::Cas, Some(false)) => (
                Effect::FailedSwap {
                    expected: op.expected,
                    observed: op.result,
                },
                true,
            ),
        };
        let end = if required {
            op.end_ns.max(op.start_ns)
        } else {
            u64::MAX
        };
        Some(Prepared {
            effect,
            required,
            start: op.start_ns,
            end,
        })
    }
}

/// Removes optional writes (unknown puts and cases) whose resulting value no
/// operation in the sub-history ever requires.
///
/// Soundness: right after such a write, the register holds a value no later
/// read or swap accepts, so the next operation in any linearization must be a
/// put (which ignores the prior state) or there is none; removing the write
/// therefore keeps every linearization valid.
fn drop_unobservable_optional_writes(ops: Vec<Prepared>) -> Vec<Prepared> {
    let mut observed: BTreeSet<State> = BTreeSet::new();
    for op in &ops {
        match op.effect {
            Effect::Write(_) => {}
            Effect::Read(v) => {
                observed.insert(v);
            }
            Effect::Swap { expected, .. } => {
                observed.insert(expected);
            }
            Effect::FailedSwap { observed: v, .. } => {
                observed.insert(v);
            }
        }
    }
    ops.into_iter()
        .filter(|op| {
            op.required
                || match op.effect {
                    Effect::Write(v) | Effect::Swap { new: v, .. } => observed.contains(&v),
                    Effect::Read(_) | Effect::FailedSwap { .. } => true,
                }
        })
        .collect()
}

/// Outcome of the search over one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Linearizable,
    Violation,
    OutOfBudget,
}

/// Doubly linked list of call/return events with O(1) lift and unlift.
///
/// Node 0 is the head sentinel, nodes `1..=2n` are events in time order and
/// node `2n + 1` is the tail sentinel.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Operation index of each event node.
    op_of: Vec<usize>,
    /// Whether each event node is a call (otherwise a return).
    is_call: Vec<bool>,
    call_node: Vec<usize>,
    return_node: Vec<usize>,
    tail: usize,
}

impl EntryList {
    const HEAD: usize = 0;

    fn new(ops: &[Prepared]) -> EntryList {
        // Sort key: (time, rank, op). Calls (rank 0) sort before returns at the
        // same instant, so touching intervals count as concurrent; returns of
        // optional ops (rank 2) sort after every required return.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.start, 0, i));
            events.push((op.end, if op.required { 1 } else { 2 }, i));
        }
        events.sort_unstable();

        let tail = events.len() + 1;
        let mut list = EntryList {
            next: (0..=tail).map(|i| (i + 1).min(tail)).collect(),
            prev: (0..=tail).map(|i| i.saturating_sub(1)).collect(),
            op_of: vec![0; tail + 1],
            is_call: vec![false; tail + 1],
            call_node: vec![0; ops.len()],
            return_node: vec![0; ops.len()],
            tail,
        };
        for (pos, &(_, rank, op)) in events.iter().enumerate() {
            let node = pos + 1;
            list.op_of[node] = op;
            list.is_call[node] = rank == 0;
            if rank == 0 {
                list.call_node[op] = node;
            } else {
                list.return_node[op] = node;
            }
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    /// Removes both events of `op`.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        self.unlink(self.return_node[op]);
    }

    /// Restores both events of `op`; must undo lifts in reverse order.
    fn unlift(&mut self, op: usize) {
        self.relink(self.return_node[op]);
        self.relink(self.call_node[op]);
    }
}

/// Wing–Gong search with memoization over one key's prepared operations.
fn search(ops: &[Prepared], budget: u64) -> Verdict {
    let required_total = ops.iter().filter(|op| op.required).count();
    if required_total == 0 {
        return Verdict::Linearizable;
    }

    let mut list = EntryList::new(ops);
    let words = ops.len().div_ceil(64);
    // The first `words` words are the bitset of linearized operations; the
    // last two encode a register state when probing the cache.
    let mut config = vec![0u64; words + 2];
    let mut seen: HashSet<Box<[u64]>, BuildHasherDefault<MixHasher>> = HashSet::default();
    // Undo stack: (linearized op, state before it).
    let mut undo: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut linearized_required = 0usize;
    let mut steps = 0u64;
    let mut cursor = list.next[EntryList::HEAD];

    loop {
        if linearized_required == required_total {
            return Verdict::Linearizable;
        }
        if steps >= budget {
            return Verdict::OutOfBudget;
        }
        steps += 1;

        if cursor != list.tail && list.is_call[cursor] {
            let op = list.op_of[cursor];
            if let Some(new_state) = ops[op].effect.apply(state) {
                let (word, bit) = (op / 64, 1u64 << (op % 64));
                config[word] |= bit;
                encode_state(&mut config[words..], new_state);
                if !seen.contains(&config[..]) {
                    seen.insert(config.clone().into_boxed_slice());
                    undo.push((op, state));
                    state = new_state;
                    list.lift(op);
                    if ops[op].required {
                        linearized_required += 1;
                    }
                    cursor = list.next[EntryList::HEAD];
                    continue;
                }
                config[word] &= !bit;
            }
            cursor = list.next[cursor];
        } else {
            // A pending operation must return here (or the list ran out):
            // undo the most recent choice and try the next candidate after it.
            let Some((op, previous)) = undo.pop() else {
                return Verdict::Violation;
            };
            config[op / 64] &= !(1u64 << (op % 64));
            state = previous;
            list.unlift(op);
            if ops[op].required {
                linearized_required -= 1;
            }
            cursor = list.next[list.call_node[op]];
        }
    }
}

/// Writes `state` into two words (presence tag, value) for the cache key.
fn encode_state(slot: &mut [u64], state: State) {
    let (tag, value) = match state {
        Some(v) => (1, v),
        None => (0, 0),
    };
    slot[0] = tag;
    slot[1] = value;
}

/// Small, fast, deterministic hasher for the memo cache (keys are trusted).
#[derive(Default)]
struct MixHasher(u64);

impl MixHasher {
    fn mix(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(7) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        // Final avalanche so that every output bit depends on the whole input.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(buf));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.mix(x);
    }

    fn write_usize(&mut self, x: usize) {
        self.mix(x as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNKNOWN_END: u64 = u64::MAX;

    fn op(client: u64, kind: OpKind, key: u64, start_ns: u64, end_ns: u64) -> Operation {
        Operation {
            client,
            op: kind,
            key,
            value: None,
            expected: None,
            start_ns,
            end_ns,
            ok: Some(true),
            result: None,
        }
    }

    fn put(client: u64, key: u64, value: u64, start: u64, end: u64) -> Operation {
        Operation {
            value: Some(value),
            ..op(client, OpKind::Put, key, start, end)
        }
    }

    fn get(client: u64, key: u64, result: Option<u64>, start: u64, end: u64) -> Operation {
        Operation {
            result,
            ..op(client, OpKind::Get, key, start, end)
        }
    }

    fn cas_ok(
        client: u64,
        key: u64,
        expected: Option<u64>,
        value: u64,
        start: u64,
        end: u64,
    ) -> Operation {
        Operation {
            value: Some(value),
            expected,
            ..op(client, OpKind::Cas, key, start, end)
        }
    }

    fn cas_failed(
        client: u64,
        key: u64,
        expected: Option<u64>,
        value: u64,
        observed: Option<u64>,
        start: u64,
        end: u64,
    ) -> Operation {
        Operation {
            ok: Some(false),
            result: observed,
            ..cas_ok(client, key, expected, value, start, end)
        }
    }

    /// Marks an operation as timed out: unknown outcome, no result.
    fn unknown(mut o: Operation) -> Operation {
        o.ok = None;
        o.end_ns = UNKNOWN_END;
        o.result = None;
        o
    }

    fn assert_violation(history: &[Operation], key: u64) {
        match check(history) {
            CheckResult::NotLinearizable { key: k, ops } => {
                assert_eq!(k, key);
                assert!(ops.iter().all(|o| o.key == key));
                let expected: Vec<Operation> =
                    history.iter().filter(|o| o.key == key).cloned().collect();
                assert_eq!(ops, expected);
            }
            other => panic!("expected violation on key {key}, got {other:?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check(&[]), CheckResult::Linearizable);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            get(1, 0, None, 0, 10),
            put(1, 0, 1, 20, 30),
            get(2, 0, Some(1), 40, 50),
            cas_ok(1, 0, Some(1), 2, 60, 70),
            get(2, 0, Some(2), 80, 90),
            cas_failed(2, 0, Some(1), 3, Some(2), 100, 110),
            put(1, 0, 4, 120, 130),
            get(1, 0, Some(4), 140, 150),
        ];
        assert_eq!(check(&h), CheckResult::Linearizable);
    }

    #[test]
    fn concurrent_writes_with_reads_of_either_value() {
        // Two overlapping puts; concurrent reads may see either, but the
        // final sequential reads must agree with one consistent order.
        let base = vec![put(1, 0, 1, 0, 100), put(2, 0, 2, 10, 90)];
        for (a, b) in [(1, 2), (2, 1), (1, 1), (2, 2)] {
            let mut h = base.clone();
            h.push(get(3, 0, Some(a), 20, 80));
            h.push(get(4, 0, Some(b), 30, 70));
            assert_eq!(check(&h), CheckResult::Linearizable, "reads {a},{b}");
        }
        // Reads during the writes may also see the initial (absent) value.
        let mut h = base.clone();
        h.push(get(3, 0, None, 5, 50));
        h.push(get(4, 0, Some(2), 60, 200));
        assert_eq!(check(&h), CheckResult::Linearizable);

        // Once both writes are done, reads of the two values can't flip back.
        let mut h = base;
        h.push(get(3, 0, Some(1), 200, 210));
        h.push(get(4, 0, Some(2), 220, 230));
        assert_violation(&h, 0);
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        // end == start counts as overlapping, so either order is allowed.
        let h = vec![put(1, 0, 1, 0, 10), get(2, 0, None, 10, 20)];
        assert_eq!(check(&h), CheckResult::Linearizable);
        let h = vec![put(1, 0, 1, 0, 10), get(2, 0, None, 11, 20)];
        assert_violation(&h, 0);
    }

    #[test]
    fn read_after_completed_write_must_see_it() {
        let absent = vec![put(1, 0, 1, 0, 10), get(2, 0, None, 20, 30)];
        assert_violation(&absent, 0);

        let stale = vec![
            put(1, 0, 1, 0, 10),
            put(1, 0, 2, 20, 30),
            get(2, 0, Some(1), 40, 50),
        ];
        assert_violation(&stale, 0);
    }

    #[test]
    fn read_of_value_never_written_is_rejected() {
        let h = vec![put(1, 0, 1, 0, 10), get(2, 0, Some(7), 5, 30)];
        assert_violation(&h, 0);
    }

    #[test]
    fn cas_success_requires_matching_prior_value() {
        let h = vec![put(1, 0, 1, 0, 10), cas_ok(2, 0, Some(2), 3, 20, 30)];
        assert_violation(&h, 0);
        let h = vec![cas_ok(2, 0, Some(5), 3, 0, 30)];
        assert_violation(&h, 0);
        // Absent matches expected=None.
        let h = vec![cas_ok(2, 0, None, 3, 0, 30), get(1, 0, Some(3), 40, 50)];
        assert_eq!(check(&h), CheckResult::Linearizable);
        // Two successful cas from the same value cannot both succeed.
        let h = vec![
            put(1, 0, 1, 0, 10),
            cas_ok(2, 0, Some(1), 2, 20, 40),
            cas_ok(3, 0, Some(1), 3, 20, 40),
        ];
        assert_violation(&h, 0);
    }

    #[test]
    fn cas_failure_semantics() {
        // A failed cas observes the current value and writes nothing.
        let h = vec![
            put(1, 0, 1, 0, 10),
            cas_failed(2, 0, Some(5), 6, Some(1), 20, 30),
            get(1, 0, Some(1), 40, 50),
        ];
        assert_eq!(check(&h), CheckResult::Linearizable);

        // ... so its new value must never be read.
        let h = vec![
            put(1, 0, 1, 0, 10),
            cas_failed(2, 0, Some(5), 6, Some(1), 20, 30),
            get(1, 0, Some(6), 40, 50),
        ];
        assert_violation(&h, 0);

        // The observed value must be the current one.
        let h = vec![
            put(1, 0, 1, 0, 10),
            cas_failed(2, 0, Some(5), 6, Some(2), 20, 30),
        ];
        assert_violation(&h, 0);

        // It cannot fail when the current value matched the expected one.
        let h = vec![
            put(1, 0, 1, 0, 10),
            cas_failed(2, 0, Some(1), 6, Some(1), 20, 30),
        ];
        assert_violation(&h, 0);

        // Failing against an absent key observes None.
        let h = vec![cas_failed(2, 0, Some(1), 6, None, 0, 10)];
        assert_eq!(check(&h), CheckResult::Linearizable);

        // A concurrent write can explain the observed value.
        let h = vec![
            put(1, 0, 1, 0, 10),
            put(3, 0, 2, 15, 35),
            cas_failed(2, 0, Some(1), 6, Some(2), 20, 30),
        ];
        assert_eq!(check(&h), CheckResult::Linearizable);
    }

    #[test]
    fn unknown_put_may_take_effect_later() {
        // Timed-out put whose value is read long after.
        let h = vec![
            unknown(put(1, 0, 1, 0, 10)),
            get(2, 0, None, 20, 30),
            get(2, 0, Some(1), 1_000, 1_010),
        ];
        assert_eq!(check(&h), CheckResult::Linearizable);

        // Timed-out put never observed: also fine.
        let h = vec![
            put(2, 0, 5, 0, 5),
            unknown(put(1, 0, 1, 10, 20)),
            get(2, 0, Some(5), 20, 30),
            get(2, 0, Some(5), 1_000, 1_010),
        ];
        assert_eq!(check(&h), CheckResult::Linearizable);

        // But not before it was invoked.
        let h = vec![get(2, 0, Some(1), 0, 10), unknown(put(1, 0, 1, 20, 30))];
        assert_violation(&h, 0);

        // Once it took effect it stays until overwritten.
        let h = vec![
            unknown(put(1, 0, 1, 0, 10)),
            get(2, 0, Some(1), 20, 30),
            get(2, 0, None, 40, 50),
        ];
        assert_violation(&h, 0);
    }

    #[test]
    fn read_of_value_written_after_read_ended_is_rejected() {
        let h = vec![get(2, 0, Some(1), 0, 10), put(1, 0, 1, 20, 30)];
        assert_violation(&h, 0);
        let h = vec![
            get(2, 0, Some(1), 0, 10),
            unknown(cas_ok(1, 0, None, 1, 20, 30)),
        ];
        assert_violation(&h, 0);
    }

    #[test]
    fn unknown_cas_is_optional_successful_cas() {
        // Took effect: its value is read.
        let h = vec![
            put(1, 0, 1, 0, 10),
            unknown(cas_ok(2, 0, Some(1), 2, 20, 30)),
            get(3, 0, Some(2), 100, 110),
        ];
        assert_eq!(check(&h), CheckResult::Linearizable);
        // Never took effect.
        let h = vec![
            put(1, 0, 1, 0, 10),
            unknown(cas_ok(2, 0, Some(1), 2, 20, 30)),
            get(3, 0, Some(1), 100, 110),
        ];
        assert_eq!(check(&h), CheckResult::Linearizable);
        // Could never have matched, so its value cannot appear.
        let h = vec![
            put(1, 0, 1, 0, 10),
            unknown(cas_ok(2, 0, Some(9), 2, 20, 30)),
            get(3, 0, Some(2), 100, 110),
        ];
        assert_violation(&h, 0);
    }

    #[test]
    fn ignored_operations_do_not_constrain() {
        let mut failed_put = put(1, 0, 9, 0, 10);
        failed_put.ok = Some(false);
        let mut failed_get = get(2, 0, Some(42), 20, 30);
        failed_get.ok = Some(false);
        let unknown_get = unknown(get(3, 0, None, 20, 30));
        let h = vec![failed_put, failed_get, unknown_get, get(1, 0, None, 40, 50)];
        assert_eq!(check(&h), CheckResult::Linearizable);

        // A failed put's value can never be read.
        let mut failed_put = put(1, 0, 9, 0, 10);
        failed_put.ok = Some(false);
        let h = vec![failed_put, get(1, 0, Some(9), 40, 50)];
        assert_violation(&h, 0);
    }

    #[test]
    fn odd_timestamps_do_not_panic() {
        // end < start is treated as end == start.
        let h = vec![put(1, 0, 1, 50, 10), get(2, 0, Some(1), 60, 70)];
        assert_eq!(check(&h), CheckResult::Linearizable);
        let h = vec![put(1, 0, 1, 50, 10), get(2, 0, None, 60, 70)];
        assert_violation(&h, 0);
        // Extreme values.
        let h = vec![
            put(1, 0, 1, u64::MAX, u64::MAX),
            get(2, 0, Some(1), u64::MAX, u64::MAX),
            get(3, 0, None, 0, u64::MAX),
            unknown(put(4, 0, 2, u64::MAX, 0)),
        ];
        assert_eq!(check(&h), CheckResult::Linearizable);
        let mut weird = get(1, 0, None, 0, 1);
        weird.value = Some(3);
        weird.expected = Some(4);
        assert_eq!(check(&[weird]), CheckResult::Linearizable);
    }

    #[test]
    fn keys_are_checked_independently() {
        let h = vec![
            put(1, 1, 1, 0, 10),
            put(1, 2, 1, 0, 10),
            put(2, 3, 1, 0, 10),
            get(2, 1, Some(1), 20, 30),
            // Key 2 reads a value written only to key 1 / 3.
            put(3, 1, 7, 40, 50),
            put(3, 3, 8, 40, 50),
            get(2, 2, Some(7), 60, 70),
            get(2, 3, Some(8), 60, 70),
        ];
        assert_violation(&h, 2);

        // The same values on different keys do not interfere.
        let h = vec![
            put(1, 1, 1, 0, 10),
            put(1, 2, 2, 0, 10),
            get(2, 1, Some(1), 20, 30),
            get(2, 2, Some(2), 20, 30),
            get(2, 3, None, 20, 30),
        ];
        assert_eq!(check(&h), CheckResult::Linearizable);
    }

    #[test]
    fn smallest_violating_key_is_reported_and_beats_inconclusive() {
        let h = vec![
            put(1, 9, 1, 0, 10),
            get(2, 9, None, 20, 30),
            put(1, 4, 1, 0, 10),
            get(2, 4, None, 20, 30),
        ];
        assert_violation(&h, 4);

        // Key 1 would need many steps; key 5 fails immediately.
        let mut h: Vec<Operation> = (0..50).map(|i| put(i, 1, i, 0, 1_000)).collect();
        h.push(get(99, 5, Some(3), 0, 10));
        match check_with_budget(&h, 20) {
            CheckResult::NotLinearizable { key, .. } => assert_eq!(key, 5),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn json_field_names_are_exact() {
        let o = Operation {
            client: 3,
            op: OpKind::Cas,
            key: 7,
            value: Some(9),
            expected: None,
            start_ns: 100,
            end_ns: u64::MAX,
            ok: None,
            result: None,
        };
        let mut buf = Vec::new();
        write_history(&mut buf, std::slice::from_ref(&o)).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            "{\"client\":3,\"op\":\"cas\",\"key\":7,\"value\":9,\"expected\":null,\
             \"start_ns\":100,\"end_ns\":18446744073709551615,\"ok\":null,\"result\":null}\n"
        );
        let g = get(1, 2, Some(5), 10, 20);
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            "{\"client\":1,\"op\":\"get\",\"key\":2,\"value\":null,\"expected\":null,\
             \"start_ns\":10,\"end_ns\":20,\"ok\":true,\"result\":5}"
        );
        assert!(serde_json::to_string(&put(1, 2, 3, 4, 5))
            .unwrap()
            .contains("\"op\":\"put\""));
    }

    #[test]
    fn history_round_trips_through_json_lines() {
        let mut failed = put(4, 2, 8, 5, 6);
        failed.ok = Some(false);
        let h = vec![
            put(1, 0, 1, 0, 10),
            get(2, 0, Some(1), 20, 30),
            get(2, 1, None, 20, 30),
            cas_failed(3, 0, Some(2), 3, Some(1), 40, 50),
            unknown(cas_ok(3, 0, None, 4, 60, 70)),
            failed,
        ];
        let mut buf = Vec::new();
        write_history(&mut buf, &h).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert_eq!(text.lines().count(), h.len());
        let back = read_history(std::io::Cursor::new(buf)).unwrap();
        assert_eq!(back, h);

        // Blank lines are tolerated.
        let spaced = text.replace('\n', "\n\n");
        assert_eq!(read_history(spaced.as_bytes()).unwrap(), h);
    }

    #[test]
    fn read_history_reports_line_numbers() {
        let good = serde_json::to_string(&put(1, 0, 1, 0, 10)).unwrap();
        let input = format!("{good}\n{good}\n{{\"client\":1}}\n");
        let err = read_history(input.as_bytes()).unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");

        let input = format!("{good}\nnot json\n");
        let err = read_history(input.as_bytes()).unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");

        let bad_kind = good.replace("\"put\"", "\"delete\"");
        let err = read_history(bad_kind.as_bytes()).unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
    }

    #[test]
    fn tiny_budget_is_inconclusive() {
        // Many fully concurrent writes and reads: plenty of work to do.
        let mut h = Vec::new();
        for i in 0..200u64 {
            h.push(put(i % 5, 3, i + 1, i, 10_000 + i));
            h.push(get(i % 5, 3, Some((i * 7) % 200 + 1), i, 10_000 + i));
        }
        assert_eq!(
            check_with_budget(&h, 50),
            CheckResult::Inconclusive { key: 3 }
        );
        assert_eq!(
            check_with_budget(&h, 0),
            CheckResult::Inconclusive { key: 3 }
        );

        // A violation that needs more than the budget to prove stays inconclusive.
        let mut h: Vec<Operation> = (0..100).map(|i| put(i, 0, i + 1, 0, 1_000)).collect();
        h.push(get(200, 0, None, 2_000, 2_010));
        assert_eq!(
            check_with_budget(&h, 10),
            CheckResult::Inconclusive { key: 0 }
        );
    }

    // ---- Property-style tests against a simulated register ----

    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n.max(1)
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// An operation plus the instant (and whether) it takes effect.
    struct Planned {
        op: Operation,
        at: u64,
        happens: bool,
    }

    /// Generates a history by running clients against a real register: each
    /// operation takes effect at a random instant inside its interval, and
    /// results are computed by applying operations in that order.
    fn simulate(seed: u64, clients: u64, keys: u64, ops_per_client: usize) -> Vec<Operation> {
        let mut rng = SplitMix64(seed);
        let mut next_value = 1u64;
        let mut written: Vec<Vec<u64>> = vec![Vec::new(); keys as usize];
        let mut plan: Vec<Planned> = Vec::new();

        for client in 0..clients {
            let mut t = rng.below(20);
            for _ in 0..ops_per_client {
                let key = rng.below(keys);
                let start = t + rng.below(15);
                let kind = match rng.below(10) {
                    0..=3 => OpKind::Get,
                    4..=6 => OpKind::Put,
                    _ => OpKind::Cas,
                };
                let mut o = op(client, kind, key, start, start);
                if kind != OpKind::Get {
                    o.value = Some(next_value);
                    next_value += 1;
                }
                if kind == OpKind::Cas {
                    let seen = &written[key as usize];
                    o.expected = if seen.is_empty() || rng.chance(15) {
                        None
                    } else if rng.chance(70) {
                        seen.last().copied()
                    } else {
                        Some(seen[rng.below(seen.len() as u64) as usize])
                    };
                }
                if let Some(v) = o.value {
                    written[key as usize].push(v);
                }

                let timed_out = rng.chance(6);
                let (at, happens) = if timed_out {
                    o.ok = None;
                    o.end_ns = UNKNOWN_END;
                    t = start + 100;
                    (start + rng.below(400), rng.chance(50))
                } else {
                    let at = start + rng.below(40);
                    o.end_ns = at + rng.below(40);
                    t = o.end_ns;
                    if kind == OpKind::Put && rng.chance(3) {
                        // Rejected outright: definitely never applied.
                        o.ok = Some(false);
                        (at, false)
                    } else {
                        (at, true)
                    }
                };
                plan.push(Planned { op: o, at, happens });
            }
        }

        let mut order: Vec<usize> = (0..plan.len()).collect();
        order.sort_by_key(|&i| (plan[i].at, i));
        let mut register: Vec<Option<u64>> = vec![None; keys as usize];
        for i in order {
            let p = &mut plan[i];
            let cell = &mut register[p.op.key as usize];
            let known = p.op.ok.is_some();
            match p.op.op {
                OpKind::Put => {
                    if p.happens {
                        *cell = p.op.value;
                    }
                }
                OpKind::Get => {
                    if known {
                        p.op.result = *cell;
                    }
                }
                OpKind::Cas => {
                    let matches = *cell == p.op.expected;
                    if matches && p.happens {
                        *cell = p.op.value;
                    }
                    if known {
                        p.op.ok = Some(matches);
                        if !matches {
                            p.op.result = *cell;
                        }
                    }
                }
            }
        }
        plan.into_iter().map(|p| p.op).collect()
    }

    /// Sets one known get's result to a value nobody wrote; returns its key.
    fn corrupt(history: &mut [Operation], rng: &mut SplitMix64) -> Option<u64> {
        let gets: Vec<usize> = (0..history.len())
            .filter(|&i| history[i].op == OpKind::Get && history[i].ok == Some(true))
            .collect();
        if gets.is_empty() {
            return None;
        }
        let i = gets[rng.below(gets.len() as u64) as usize];
        history[i].result = Some(1 << 40);
        Some(history[i].key)
    }

    fn check_simulated(seed: u64, clients: u64, keys: u64, ops_per_client: usize) {
        let mut history = simulate(seed, clients, keys, ops_per_client);
        assert_eq!(
            check(&history),
            CheckResult::Linearizable,
            "seed {seed} falsely rejected"
        );
        let mut rng = SplitMix64(seed ^ 0xdead_beef);
        if let Some(key) = corrupt(&mut history, &mut rng) {
            match check(&history) {
                CheckResult::NotLinearizable { key: k, .. } => {
                    assert_eq!(k, key, "seed {seed}")
                }
                other => panic!("seed {seed}: corruption not detected: {other:?}"),
            }
        }
    }

    #[test]
    fn simulated_histories_small() {
        for seed in 0..300 {
            check_simulated(seed, 3, 2, 12);
        }
    }

    #[test]
    fn simulated_histories_medium() {
        for seed in 1_000..1_100 {
            check_simulated(seed, 5, 3, 40);
        }
    }

    #[test]
    fn simulated_histories_few_hundred_ops_per_key() {
        for seed in 5_000..5_010 {
            check_simulated(seed, 5, 1, 80);
        }
    }

    #[test]
    fn simulated_histories_exercise_every_outcome() {
        let (mut unknown_ops, mut failed_cas, mut ok_cas, mut rejected_put) = (0, 0, 0, 0);
        for seed in 0..50 {
            for o in simulate(seed, 5, 3, 40) {
                match (o.op, o.ok) {
                    (_, None) => unknown_ops += 1,
                    (OpKind::Cas, Some(false)) => failed_cas += 1,
                    (OpKind::Cas, Some(true)) => ok_cas += 1,
                    (OpKind::Put, Some(false)) => rejected_put += 1,
                    _ => {}
                }
            }
        }
        assert!(unknown_ops > 50, "{unknown_ops}");
        assert!(failed_cas > 50, "{failed_cas}");
        assert!(ok_cas > 50, "{ok_cas}");
        assert!(rejected_put > 5, "{rejected_put}");
    }

    /// Reference checker by exhaustive enumeration, written directly from the
    /// semantics: try every subset of unknown-outcome ops and every order.
    fn brute_force(history: &[Operation]) -> bool {
        // (start, end, is_required, operation)
        let ops: Vec<(u64, u64, bool, &Operation)> = history
            .iter()
            .filter_map(|o| {
                let end = o.end_ns.max(o.start_ns);
                match (o.op, o.ok) {
                    (OpKind::Put, Some(false)) | (OpKind::Get, None | Some(false)) => None,
                    (_, None) => Some((o.start_ns, u64::MAX, false, o)),
                    (_, Some(_)) => Some((o.start_ns, end, true, o)),
                }
            })
            .collect();

        fn step(o: &Operation, state: Option<u64>) -> Option<Option<u64>> {
            match (o.op, o.ok) {
                (OpKind::Put, _) => Some(o.value),
                (OpKind::Get, _) => (state == o.result).then_some(state),
                (OpKind::Cas, Some(false)) => {
                    (state != o.expected && state == o.result).then_some(state)
                }
                (OpKind::Cas, _) => (state == o.expected).then_some(o.value),
            }
        }

        fn dfs(
            ops: &[(u64, u64, bool, &Operation)],
            used: &mut [bool],
            state: Option<u64>,
        ) -> bool {
            let pending: Vec<usize> = (0..ops.len()).filter(|&i| !used[i]).collect();
            if pending.is_empty() {
                return true;
            }
            for &i in &pending {
                let blocked = pending.iter().any(|&j| ops[j].1 < ops[i].0);
                if blocked {
                    continue;
                }
                if let Some(next) = step(ops[i].3, state) {
                    used[i] = true;
                    let found = dfs(ops, used, next);
                    used[i] = false;
                    if found {
                        return true;
                    }
                }
            }
            false
        }

        let optional: Vec<usize> = (0..ops.len()).filter(|&i| !ops[i].2).collect();
        for mask in 0u64..(1 << optional.len()) {
            let chosen: Vec<(u64, u64, bool, &Operation)> = ops
                .iter()
                .enumerate()
                .filter(|(i, o)| {
                    o.2 || optional
                        .iter()
                        .position(|j| j == i)
                        .is_some_and(|bit| mask & (1 << bit) != 0)
                })
                .map(|(_, o)| *o)
                .collect();
            let mut used = vec![false; chosen.len()];
            if dfs(&chosen, &mut used, None) {
                return true;
            }
        }
        false
    }

    #[test]
    fn agrees_with_brute_force_on_random_small_histories() {
        let mut rng = SplitMix64(7);
        let small = |rng: &mut SplitMix64| match rng.below(4) {
            0 => None,
            v => Some(v),
        };
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..4_000 {
            let n = 1 + rng.below(7) as usize;
            let mut h = Vec::with_capacity(n);
            for c in 0..n as u64 {
                let kind = match rng.below(3) {
                    0 => OpKind::Put,
                    1 => OpKind::Get,
                    _ => OpKind::Cas,
                };
                let start = rng.below(30);
                let mut o = op(c, kind, 0, start, start + rng.below(20));
                if rng.chance(3) {
                    o.end_ns = start.saturating_sub(1); // end before start
                }
                o.ok = match rng.below(10) {
                    0 => None,
                    1 => Some(false),
                    _ => Some(true),
                };
                if o.ok.is_none() {
                    o.end_ns = UNKNOWN_END;
                }
                match kind {
                    OpKind::Put => o.value = small(&mut rng),
                    OpKind::Get => o.result = small(&mut rng),
                    OpKind::Cas => {
                        o.value = small(&mut rng);
                        o.expected = small(&mut rng);
                        if o.ok == Some(false) {
                            o.result = small(&mut rng);
                        }
                    }
                }
                h.push(o);
            }
            let expected = brute_force(&h);
            let got = check(&h);
            if expected {
                accepted += 1;
                assert_eq!(got, CheckResult::Linearizable, "{h:?}");
            } else {
                rejected += 1;
                assert!(
                    matches!(got, CheckResult::NotLinearizable { key: 0, .. }),
                    "{h:?} -> {got:?}"
                );
            }
        }
        assert!(accepted > 500 && rejected > 500, "{accepted} / {rejected}");
    }

    #[test]
    fn simulated_history_survives_json_round_trip() {
        let history = simulate(42, 5, 3, 30);
        let mut buf = Vec::new();
        write_history(&mut buf, &history).unwrap();
        let back = read_history(buf.as_slice()).unwrap();
        assert_eq!(back, history);
        assert_eq!(check(&back), CheckResult::Linearizable);
    }
}
