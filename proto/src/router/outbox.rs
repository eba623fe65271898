//! What a core asks of the world after a call: bytes to write, connections to
//! close or to read again, messages for other cores. The server drains it
//! after every call into the core.

use std::sync::Arc;

use super::{CloseReason, ClusterMsg, ConnId, MeshMsg};

/// Policy events the server logs (rate limited): the core only reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `subscriber`'s full queue started holding back `publisher`.
    HoldStarted {
        subscriber: Arc<str>,
        publisher: Arc<str>,
    },
    /// `client` held its publishers back for `max_stall` without reading
    /// and is disconnected.
    SlowConsumer { client: Arc<str> },
    /// A delivery to `client` was dropped for `reason` (a policy or a
    /// limit); told at most once per [`DROP_NOTICE_EVERY`] per client and
    /// reason, however many follow.
    Dropped {
        client: Arc<str>,
        reason: &'static str,
    },
}

/// How often the drops of one client for one reason are told again.
pub const DROP_NOTICE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// One core's pending effects. Filled by the router, emptied by the server.
#[derive(Debug)]
pub struct Outbox {
    /// Per destination core, what to send it, in order.
    mesh: Vec<Vec<MeshMsg>>,
    /// Per destination core, the summed [`MeshMsg::weight`] of its batch.
    weights: Vec<usize>,
    /// Whether any of `mesh` is non-empty (checked after every call).
    mesh_pending: bool,
    /// Connections whose session has new bytes to write.
    pub writable: Vec<ConnId>,
    /// Connections to end, and why.
    pub close: Vec<(ConnId, CloseReason)>,
    /// Paused connections that may read again: their SUBACK is written.
    pub resume: Vec<ConnId>,
    /// Journal records for this core's store, in order (only while the core
    /// keeps a journal, see [`super::Core::keep_journal`]).
    pub journal: Vec<bytes::Bytes>,
    /// Policy events to log.
    pub notices: Vec<Notice>,
    /// For the cluster link, in order (only once the core joined a cluster).
    pub cluster: Vec<ClusterMsg>,
}

impl Outbox {
    pub fn new(cores: usize) -> Outbox {
        Outbox {
            mesh: (0..cores).map(|_| Vec::new()).collect(),
            weights: vec![0; cores],
            mesh_pending: false,
            writable: Vec::new(),
            close: Vec::new(),
            resume: Vec::new(),
            journal: Vec::new(),
            notices: Vec::new(),
            cluster: Vec::new(),
        }
    }

    pub(super) fn send(&mut self, core: usize, msg: MeshMsg) {
        self.weights[core] += msg.weight();
        self.mesh[core].push(msg);
        self.mesh_pending = true;
    }

    /// Takes every non-empty batch for other cores, with its destination.
    pub fn take_batches(&mut self) -> impl Iterator<Item = (usize, Vec<MeshMsg>)> + '_ {
        self.take_weighed_batches()
            .map(|(core, batch, _)| (core, batch))
    }

    /// Takes every non-empty batch for other cores, with its destination and
    /// its summed [`MeshMsg::weight`].
    pub fn take_weighed_batches(
        &mut self,
    ) -> impl Iterator<Item = (usize, Vec<MeshMsg>, usize)> + '_ {
        let pending = std::mem::take(&mut self.mesh_pending);
        self.mesh
            .iter_mut()
            .zip(self.weights.iter_mut())
            .enumerate()
            .filter(move |(_, (batch, _))| pending && !batch.is_empty())
            .map(|(core, (batch, weight))| (core, std::mem::take(batch), std::mem::take(weight)))
    }

    /// True when nothing waits to be drained.
    pub fn is_empty(&self) -> bool {
        !self.mesh_pending
            && self.writable.is_empty()
            && self.close.is_empty()
            && self.resume.is_empty()
            && self.journal.is_empty()
            && self.notices.is_empty()
            && self.cluster.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_taken_once_per_destination() {
        let mut out = Outbox::new(3);
        assert!(out.is_empty());
        out.send(2, MeshMsg::Ack { token: 1 });
        out.send(2, MeshMsg::Ack { token: 2 });
        out.send(0, MeshMsg::Ack { token: 3 });
        assert!(!out.is_empty());
        let taken: Vec<(usize, usize)> = out.take_batches().map(|(c, b)| (c, b.len())).collect();
        assert_eq!(taken, [(0, 1), (2, 2)]);
        assert!(out.is_empty());
        assert_eq!(out.take_batches().count(), 0);
    }

    #[test]
    fn a_batch_is_weighed_by_its_messages() {
        let mut out = Outbox::new(2);
        out.send(1, MeshMsg::Ack { token: 1 });
        out.send(1, MeshMsg::Ack { token: 2 });
        let taken: Vec<usize> = out.take_weighed_batches().map(|(_, _, w)| w).collect();
        assert_eq!(taken, [2 * MeshMsg::Ack { token: 0 }.weight()]);
        out.send(1, MeshMsg::Ack { token: 3 });
        let again: Vec<usize> = out.take_weighed_batches().map(|(_, _, w)| w).collect();
        assert_eq!(
            again,
            [MeshMsg::Ack { token: 0 }.weight()],
            "weights restart per batch"
        );
    }
}
