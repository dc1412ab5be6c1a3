//! Log replication (§5.3) and commitment (§5.4.2): proposals with flow control, pipelined
//! AppendEntries with probe/replicate states, fast conflict back-off, heartbeats, commit counting.

use crate::error::{InvalidMessage, ProposeError};
use crate::node::{Proposal, RaftNode};
use crate::progress::ProgressState;
use crate::types::{Entry, LogIndex, MessageBody, NodeId, Payload, Role, Term};

impl RaftNode {
    /// Proposes an application command. On success the entry is in the leader's log (not yet
    /// committed); watch for an applied entry with the returned index and term.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<Proposal, ProposeError> {
        let p = self.propose_payload(Payload::Command(data))?;
        self.flush();
        Ok(p)
    }

    /// Proposes several commands at once: they take consecutive indices from the returned one
    /// and travel in as few messages as the batching bounds allow. All or nothing.
    pub fn propose_batch(&mut self, data: Vec<Vec<u8>>) -> Result<Proposal, ProposeError> {
        let n = data.len();
        let bytes: usize = data.iter().map(Vec::len).sum();
        self.check_can_propose(bytes)?;
        if n > 1 && self.uncommitted_entries + n > self.cfg.max_uncommitted_entries {
            return Err(ProposeError::Busy {
                entries: self.uncommitted_entries,
                bytes: self.uncommitted_bytes,
            });
        }
        let first = Proposal {
            index: self.log.last_index() + 1,
            term: self.term,
        };
        self.log.reserve(n);
        for d in data {
            let entry = Entry {
                term: self.term,
                index: self.log.last_index() + 1,
                payload: Payload::Command(d),
            };
            self.uncommitted_entries += 1;
            self.uncommitted_bytes += entry.payload.size();
            self.log.push(entry);
        }
        if n > 0 {
            self.stage_entries(first.index);
            self.maybe_commit();
            self.broadcast_append(false);
        }
        self.flush();
        Ok(first)
    }

    pub(crate) fn check_can_propose(&self, size: usize) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(t) = self.transfer {
            return Err(ProposeError::TransferInProgress(t));
        }
        if self.uncommitted_entries >= self.cfg.max_uncommitted_entries
            || (self.uncommitted_bytes > 0
                && self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes)
        {
            return Err(ProposeError::Busy {
                entries: self.uncommitted_entries,
                bytes: self.uncommitted_bytes,
            });
        }
        Ok(())
    }

    pub(crate) fn propose_payload(&mut self, payload: Payload) -> Result<Proposal, ProposeError> {
        self.check_can_propose(payload.size())?;
        let entry = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            payload,
        };
        let p = Proposal {
            index: entry.index,
            term: entry.term,
        };
        self.append_as_leader(entry);
        self.broadcast_append(false);
        Ok(p)
    }

    /// Appends an entry to the leader's own log (to be written; counted once durable).
    pub(crate) fn append_as_leader(&mut self, entry: Entry) {
        let index = entry.index;
        self.uncommitted_entries += 1;
        self.uncommitted_bytes += entry.payload.size();
        let is_config = matches!(entry.payload, Payload::Config(_));
        self.log.push(entry);
        self.stage_entries(index);
        if is_config {
            self.rebuild_configs();
        }
        // A single-voter group commits as soon as the entry is durable (see on_persisted).
        self.maybe_commit();
    }

    /// Sends pending entries to every follower (`probe`: also send empty probes).
    pub(crate) fn broadcast_append(&mut self, probe: bool) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for p in peers {
            self.send_append(p, probe);
        }
    }

    /// Sends as many AppendEntries to `peer` as its state and window allow.
    pub(crate) fn send_append(&mut self, peer: NodeId, allow_empty: bool) {
        let mut allow_empty = allow_empty;
        loop {
            let Some(pr) = self.progress.get(&peer) else {
                return;
            };
            match pr.state {
                ProgressState::Snapshot { .. } => {
                    self.send_snapshot_chunks(peer);
                    return;
                }
                ProgressState::Probe if pr.probe_sent => return,
                ProgressState::Replicate if pr.inflight.len() >= self.cfg.max_inflight_msgs => {
                    return
                }
                _ => {}
            }
            let next = pr.next_index;
            let prev = next - 1;
            let Some(prev_term) = self.log.term(prev) else {
                // The entries this follower needs were compacted away: send the snapshot.
                self.start_snapshot_transfer(peer);
                return;
            };
            let entries = self.log.slice(
                next,
                self.log.last_index(),
                self.cfg.max_entries_per_msg,
                self.cfg.max_bytes_per_msg,
            );
            if entries.is_empty() && !allow_empty {
                return;
            }
            let last_sent = entries.last().map(|e| e.index);
            let seq = self.seq;
            let commit = self.commit;
            let pr = self.progress.get_mut(&peer).expect("checked above");
            let replicate = pr.state == ProgressState::Replicate;
            if replicate {
                if let Some(l) = last_sent {
                    pr.next_index = l + 1;
                    pr.inflight.push_back(l);
                }
            } else {
                pr.probe_sent = true;
            }
            self.send(
                peer,
                MessageBody::Append {
                    prev_index: prev,
                    prev_term,
                    entries,
                    commit,
                    seq,
                },
            );
            if !replicate || last_sent.is_none() {
                return;
            }
            allow_empty = false;
        }
    }

    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
        seq: u64,
    ) -> Result<(), InvalidMessage> {
        let last_new = prev_index + entries.len() as u64;
        // Entries at or below our commit index are known to match the leader: skip them.
        let (prev_index, prev_term, entries) = if prev_index < self.commit {
            if last_new <= self.commit {
                let index = self.commit;
                self.send_durable(
                    from,
                    MessageBody::AppendResp {
                        success: true,
                        match_index: index,
                        hint_index: 0,
                        hint_term: 0,
                        seq,
                    },
                );
                return Ok(());
            }
            let skip = (self.commit - prev_index) as usize;
            let t = entries[skip - 1].term;
            (self.commit, t, entries[skip..].to_vec())
        } else {
            (prev_index, prev_term, entries)
        };

        if self.log.term(prev_index) != Some(prev_term) {
            let hint_index = self
                .log
                .find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
            let hint_term = self.log.term(hint_index).unwrap_or(0);
            self.send_durable(
                from,
                MessageBody::AppendResp {
                    success: false,
                    match_index: prev_index,
                    hint_index,
                    hint_term,
                    seq,
                },
            );
            return Ok(());
        }

        // Find the first entry that is new or conflicts.
        let mut first_new = None;
        for (i, e) in entries.iter().enumerate() {
            match self.log.term(e.index) {
                Some(t) if t == e.term => continue,
                _ => {
                    first_new = Some(i);
                    break;
                }
            }
        }
        if let Some(i) = first_new {
            let start = entries[i].index;
            if start <= self.commit {
                return Err(InvalidMessage {
                    from,
                    reason: format!(
                        "conflicts with committed entry {start} (commit {})",
                        self.commit
                    ),
                });
            }
            let has_config = start <= self.log.last_index()
                && self.configs.iter().any(|(ci, _)| *ci >= start)
                || entries[i..]
                    .iter()
                    .any(|e| matches!(e.payload, Payload::Config(_)));
            self.log.append_truncating(&entries[i..]);
            self.stage_entries(start);
            if has_config {
                self.rebuild_configs();
            }
        }
        let match_index = prev_index + entries.len() as u64;
        let new_commit = leader_commit.min(match_index);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        self.send_durable(
            from,
            MessageBody::AppendResp {
                success: true,
                match_index,
                hint_index: 0,
                hint_term: 0,
                seq,
            },
        );
        Ok(())
    }

    pub(crate) fn handle_append_resp(
        &mut self,
        from: NodeId,
        success: bool,
        index: LogIndex,
        hint_index: LogIndex,
        hint_term: Term,
        seq: u64,
    ) -> Result<(), InvalidMessage> {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.recent_active = true;
        pr.acked_seq = pr.acked_seq.max(seq);
        if success {
            let moved = pr.ack(index);
            match pr.state {
                ProgressState::Probe => pr.become_replicate(),
                ProgressState::Snapshot { ref snapshot, .. }
                    if pr.match_index >= snapshot.meta.index =>
                {
                    pr.become_replicate()
                }
                _ => {}
            }
            let caught_up = pr.match_index == last;
            if moved {
                self.maybe_commit();
            }
            if self.transfer == Some(from) && caught_up {
                self.send(from, MessageBody::TimeoutNow);
            }
            self.release_reads();
            self.send_append(from, false);
        } else {
            if index <= pr.match_index || matches!(pr.state, ProgressState::Snapshot { .. }) {
                // Stale rejection of something already acknowledged.
                self.release_reads();
                return Ok(());
            }
            let j = self.log.find_conflict_by_term(hint_index, hint_term);
            let j = j.min(index.saturating_sub(1).max(pr.match_index));
            pr.next_index = (j + 1).max(pr.match_index + 1);
            pr.become_probe();
            self.release_reads();
            self.send_append(from, true);
        }
        Ok(())
    }

    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, commit: LogIndex, seq: u64) {
        // The leader sends min(its commit, our match), so every index up to it matches its log.
        let c = commit.min(self.log.last_index());
        if c > self.commit {
            self.commit = c;
        }
        self.send(from, MessageBody::HeartbeatResp { seq });
    }

    pub(crate) fn handle_heartbeat_resp(&mut self, from: NodeId, seq: u64) {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.acked_seq = pr.acked_seq.max(seq);
        if pr.match_index < last {
            match pr.state {
                ProgressState::Probe => pr.probe_sent = false,
                ProgressState::Replicate if pr.inflight.len() >= self.cfg.max_inflight_msgs => {
                    // Something in the window was probably lost: make room for one message.
                    pr.inflight.pop_front();
                }
                _ => {}
            }
            // Allow an empty Append even when replicating: if everything was already sent but
            // the follower still lags, an Append was lost; the empty one at next_index - 1 either
            // is acknowledged or rejected, which rewinds next_index and resends (§5.3: retry
            // indefinitely, also when nothing new is proposed).
            self.send_append(from, true);
        }
        self.release_reads();
    }

    /// Sends a heartbeat round to every follower; the round number confirms leadership for reads
    /// and the lease.
    pub(crate) fn broadcast_heartbeat_round(&mut self) {
        self.seq += 1;
        self.rounds.push_back((self.seq, self.ticks));
        if self.rounds.len() > 1024 {
            self.rounds.pop_front();
        }
        let peers: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter()
            .map(|(id, p)| (*id, p.match_index))
            .collect();
        let seq = self.seq;
        for (peer, m) in peers {
            let commit = self.commit.min(m);
            self.send(peer, MessageBody::Heartbeat { commit, seq });
            if let Some(pr) = self.progress.get_mut(&peer) {
                if let ProgressState::Snapshot {
                    sent,
                    acked,
                    done_sent,
                    stalled,
                    ..
                } = &mut pr.state
                {
                    if *stalled {
                        *sent = *acked;
                        *done_sent = false;
                    }
                    *stalled = true;
                }
            }
        }
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for p in peers {
            if matches!(
                self.progress.get(&p).map(|pr| &pr.state),
                Some(ProgressState::Snapshot { .. })
            ) {
                self.send_snapshot_chunks(p);
            }
        }
        if self.progress.is_empty() {
            self.release_reads();
        }
    }

    /// The match index of `id`; the leader's own is its durable index.
    pub(crate) fn match_of(&self, id: NodeId) -> LogIndex {
        if id == self.id {
            self.durable
        } else {
            self.progress.get(&id).map_or(0, |p| p.match_index)
        }
    }

    /// Advances the commit index to the quorum match index if that entry is of our term (§5.4.2).
    pub(crate) fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let q = self.membership.quorum_value(|id| self.match_of(id));
        if q <= self.commit || self.log.term(q) != Some(self.term) {
            return;
        }
        let old = self.commit;
        self.commit = q;
        for i in old + 1..=q {
            if let Some(e) = self.log.entry(i) {
                if e.term == self.term {
                    self.uncommitted_entries = self.uncommitted_entries.saturating_sub(1);
                    self.uncommitted_bytes =
                        self.uncommitted_bytes.saturating_sub(e.payload.size());
                }
            }
        }
        // Followers learn the new commit index promptly.
        self.broadcast_append(false);
        self.on_commit_advanced();
        self.start_awaiting_reads();
    }
}
