//! Snapshots (§7): compaction when the application hands over a state-machine snapshot, and
//! chunked, resumable transfer to followers behind the compaction point.

use crate::error::SnapshotError;
use crate::node::{Effect, RaftNode};
use crate::progress::ProgressState;
use crate::types::{LogIndex, Membership, MessageBody, NodeId, Snapshot, SnapshotMeta};
use std::sync::Arc;

impl RaftNode {
    /// Hands over a state-machine snapshot taken at applied index `index`. The log is compacted
    /// up to `Config::snapshot_trailing` entries before it (those stay, for followers that lag
    /// a little) and the snapshot is written (a `Persist` effect). Appends and applies went on
    /// while the application was taking it.
    pub fn snapshot_taken(&mut self, index: LogIndex, data: Vec<u8>) -> Result<(), SnapshotError> {
        if index <= self.snapshot_index() || index > self.applied {
            return Err(SnapshotError::OutOfRange {
                index,
                snapshot: self.snapshot_index(),
                applied: self.applied,
            });
        }
        let term = self.log.term(index).expect("applied entries are retained");
        let membership = self.membership_at(index);
        let snap = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership: membership.clone(),
            },
            data: Arc::new(data),
        };
        let keep_from = index
            .saturating_sub(self.cfg.snapshot_trailing)
            .max(self.log.base_index());
        let keep_term = self.log.term(keep_from).expect("between base and applied");
        self.log.compact_to(keep_from, keep_term);
        // Configurations in the trailing entries stay listed, as `rebuild_configs` would list
        // them; `snapshot_membership` is the one in force at the snapshot's index, which is
        // what every lookup at or after it needs.
        self.configs.retain(|(i, _)| *i > keep_from);
        self.snapshot_membership = membership;
        self.snapshot = Some(snap.clone());
        let reset = self.stage_snapshot.as_ref().is_some_and(|(_, r)| *r);
        self.stage_snapshot = Some((snap, reset));
        if let Some(from) = self.stage_from {
            self.stage_from = Some(from.max(index + 1));
        }
        self.flush();
        Ok(())
    }

    /// The configuration in force at `index` (the latest config entry at or before it).
    fn membership_at(&self, index: LogIndex) -> Membership {
        self.configs
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| self.snapshot_membership.clone())
    }

    /// Starts sending our latest snapshot to `peer`, which needs entries we compacted away.
    pub(crate) fn start_snapshot_transfer(&mut self, peer: NodeId) {
        let Some(snapshot) = self.snapshot.clone() else {
            return;
        };
        if let Some(pr) = self.progress.get_mut(&peer) {
            pr.state = ProgressState::Snapshot {
                snapshot,
                sent: 0,
                acked: 0,
                done_sent: false,
                stalled: false,
            };
            pr.inflight.clear();
        }
        self.send_snapshot_chunks(peer);
    }

    /// Sends chunks of the snapshot being transferred to `peer` within its chunk window. Each
    /// follower has its own window, so a slow one never holds up the others. The transfer goes
    /// on with the snapshot it started with, even if a newer one was taken since.
    pub(crate) fn send_snapshot_chunks(&mut self, peer: NodeId) {
        let chunk = self.cfg.snapshot_chunk_size as u64;
        let window = chunk * self.cfg.max_inflight_snapshot_chunks as u64;
        let seq = self.seq;
        loop {
            let Some(pr) = self.progress.get_mut(&peer) else {
                return;
            };
            let ProgressState::Snapshot {
                snapshot: snap,
                sent,
                acked,
                done_sent,
                ..
            } = &mut pr.state
            else {
                return;
            };
            let snap = snap.clone();
            let len = snap.data.len() as u64;
            if *done_sent || sent.saturating_sub(*acked) >= window {
                return;
            }
            let offset = (*sent).min(len);
            let end = (offset + chunk).min(len);
            let done = end == len;
            *sent = end;
            *done_sent = done;
            let data = snap.data[offset as usize..end as usize].to_vec();
            self.send(
                peer,
                MessageBody::Snapshot {
                    meta: snap.meta.clone(),
                    offset,
                    data,
                    done,
                    seq,
                },
            );
        }
    }

    pub(crate) fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
        seq: u64,
    ) {
        if meta.index <= self.commit {
            // We already have everything it covers.
            self.incoming = None;
            self.send_durable(
                from,
                MessageBody::SnapshotResp {
                    index: meta.index,
                    next_offset: 0,
                    done: true,
                    seq,
                },
            );
            return;
        }
        let term = self.term;
        let same = self
            .incoming
            .as_ref()
            .is_some_and(|(m, f, t, _)| *m == meta && *f == from && *t == term);
        if !same {
            if offset != 0 {
                self.send(
                    from,
                    MessageBody::SnapshotResp {
                        index: meta.index,
                        next_offset: 0,
                        done: false,
                        seq,
                    },
                );
                return;
            }
            self.incoming = Some((meta.clone(), from, term, Vec::new()));
        }
        let (_, _, _, buf) = self.incoming.as_mut().expect("set above");
        let mut completed = false;
        if offset == buf.len() as u64 {
            buf.extend_from_slice(&data);
            completed = done;
        }
        let next_offset = buf.len() as u64;
        if !completed {
            self.send(
                from,
                MessageBody::SnapshotResp {
                    index: meta.index,
                    next_offset,
                    done: false,
                    seq,
                },
            );
            return;
        }
        let (meta, _, _, buf) = self.incoming.take().expect("set above");
        if self.snapshot_validator.is_some_and(|valid| !valid(&buf)) {
            // Not a state the application can restore: never install it (a peer's garbage
            // must not reach the state machine). No answer: a faulty sender times out.
            self.stats.snapshots_rejected += 1;
            return;
        }
        self.install_snapshot(Snapshot {
            meta,
            data: Arc::new(buf),
        });
        self.send_durable(
            from,
            MessageBody::SnapshotResp {
                index: self.snapshot_index(),
                next_offset,
                done: true,
                seq,
            },
        );
    }

    fn install_snapshot(&mut self, snap: Snapshot) {
        let SnapshotMeta {
            index,
            term,
            ref membership,
        } = snap.meta;
        let reset = self.log.term(index) != Some(term);
        if reset {
            self.log.reset(index, term);
            self.durable = 0;
        } else {
            // Our log already has the snapshot's last entry: keep what follows it.
            self.log.compact_to(index, term);
        }
        self.snapshot_membership = membership.clone();
        self.rebuild_configs();
        if let Some(from) = self.stage_from {
            self.stage_from = Some(from.max(index + 1));
        }
        self.commit = self.commit.max(index);
        self.applied = self.applied.max(index);
        self.stats.snapshots_installed += 1;
        self.snapshot = Some(snap.clone());
        let reset = reset || self.stage_snapshot.as_ref().is_some_and(|(_, r)| *r);
        self.stage_snapshot = Some((snap.clone(), reset));
        self.effects.push(Effect::InstallSnapshot(snap));
    }

    pub(crate) fn handle_snapshot_resp(
        &mut self,
        from: NodeId,
        index: LogIndex,
        next_offset: u64,
        done: bool,
        seq: u64,
    ) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.acked_seq = pr.acked_seq.max(seq);
        if done {
            if pr.ack(index) {
                self.maybe_commit();
            }
            let pr = self.progress.get_mut(&from).expect("present");
            if matches!(pr.state, ProgressState::Snapshot { .. }) {
                pr.become_probe();
            }
            self.release_reads();
            self.send_append(from, true);
            return;
        }
        if let ProgressState::Snapshot {
            snapshot,
            sent,
            acked,
            done_sent,
            stalled,
        } = &mut pr.state
        {
            // `validate` refuses offsets beyond the end; never slice past it regardless.
            if snapshot.meta.index == index && next_offset <= snapshot.data.len() as u64 {
                if next_offset < *acked || next_offset > *sent {
                    // The follower lost (or already had) part of it: resume from where it is.
                    *sent = next_offset;
                    *done_sent = false;
                } else if next_offset > *acked {
                    *stalled = false;
                }
                *acked = next_offset;
                if *sent < *acked {
                    *sent = *acked;
                }
            }
        }
        self.release_reads();
        self.send_snapshot_chunks(from);
    }
}
