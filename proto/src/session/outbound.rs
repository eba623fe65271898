//! Messages travelling from the broker to one client: the QoS 1/2 inflight window
//! and the queue behind it. Pure bookkeeping; the session encodes.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::codec::{Pid, QoS};
use crate::message::Message;
use crate::topic::SharedFilter;

/// Where an outgoing QoS 1/2 message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutState {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// A message routed to this session, with what its delivery needs.
#[derive(Clone, Debug)]
pub struct Routed {
    pub msg: Arc<Message>,
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// 5.0 subscription identifiers of the matching subscriptions.
    pub sub_ids: Box<[u32]>,
    /// The shared subscription (`$share/g/f`) it came through: if this client
    /// goes away unacknowledged, the message goes to another member.
    pub shared: Option<SharedFilter>,
}

#[derive(Clone, Debug)]
pub struct Inflight {
    pub pid: Pid,
    pub item: Routed,
    pub state: OutState,
}

/// The outgoing side of a session, allocated only while it is used: most
/// sessions of an idle fleet have nothing in flight or queued, and the state
/// would cost each of them 80 bytes. Reading an unallocated one sees an empty
/// state, the first mutable access allocates it, and [`Outbound::trim`] frees
/// it again once it is empty.
#[derive(Debug, Default)]
pub struct Outbound(Option<Box<OutboundState>>);

const EMPTY: &OutboundState = &OutboundState::new();

impl Deref for Outbound {
    type Target = OutboundState;

    fn deref(&self) -> &OutboundState {
        self.0.as_deref().unwrap_or(EMPTY)
    }
}

impl DerefMut for Outbound {
    fn deref_mut(&mut self) -> &mut OutboundState {
        self.0.get_or_insert_with(Default::default)
    }
}

impl Outbound {
    /// As [`OutboundState::dequeue`], without allocating an empty state.
    pub fn dequeue(&mut self) -> Option<Routed> {
        self.0.as_mut()?.dequeue()
    }

    /// As [`OutboundState::take_shared_unacked`], without allocating.
    pub fn take_shared_unacked(&mut self) -> Vec<Routed> {
        self.0
            .as_mut()
            .map(|s| s.take_shared_unacked())
            .unwrap_or_default()
    }

    /// Frees the state when nothing is in flight or queued. Packet ids then
    /// start over, which is allowed: only ids in use must be distinct.
    pub fn trim(&mut self) {
        if self.0.as_ref().is_some_and(|s| s.is_empty()) {
            self.0 = None;
        }
    }

    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

/// The QoS 1/2 inflight window and the queue behind it.
#[derive(Debug)]
pub struct OutboundState {
    next_pid: Pid,
    pub inflight: VecDeque<Inflight>,
    pub queue: VecDeque<Routed>,
    pub queued_bytes: usize,
}

impl Default for OutboundState {
    fn default() -> Self {
        Self::new()
    }
}

impl OutboundState {
    const fn new() -> Self {
        OutboundState {
            next_pid: Pid::MIN,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.inflight.is_empty() && self.queue.is_empty()
    }

    /// A packet id not used by any inflight message. The window is far smaller than
    /// 65535, so the scan ends quickly.
    pub fn allocate_pid(&mut self) -> Pid {
        loop {
            let pid = self.next_pid;
            self.next_pid = pid.next();
            if !self.inflight.iter().any(|e| e.pid == pid) {
                return pid;
            }
        }
    }

    pub fn position(&self, pid: Pid, state: OutState, qos: QoS) -> Option<usize> {
        self.inflight
            .iter()
            .position(|e| e.pid == pid && e.state == state && e.item.qos == qos)
    }

    pub fn enqueue(&mut self, item: Routed) {
        self.queued_bytes += item.msg.weight();
        self.queue.push_back(item);
    }

    pub fn dequeue(&mut self) -> Option<Routed> {
        let item = self.queue.pop_front()?;
        self.queued_bytes -= item.msg.weight();
        Some(item)
    }

    /// True when one more message of `weight` bytes fits the queue caps.
    pub fn has_room(&self, weight: usize, max_messages: usize, max_bytes: usize) -> bool {
        self.queue.len() < max_messages && self.queued_bytes + weight <= max_bytes
    }

    /// Removes the messages that came through a shared subscription and that the
    /// client has not received for sure: queued ones, and QoS 1 PUBLISHes not yet
    /// acknowledged. A QoS 2 message whose delivery started stays with this
    /// client: it must never reach another member [MQTT-4.8.2-4], [MQTT-4.8.2-5].
    pub fn take_shared_unacked(&mut self) -> Vec<Routed> {
        let mut taken = Vec::new();
        self.inflight.retain(|e| {
            let move_it = e.item.shared.is_some()
                && e.state == OutState::Published
                && e.item.qos == QoS::AtLeastOnce;
            if move_it {
                taken.push(e.item.clone());
            }
            !move_it
        });
        let queue = std::mem::take(&mut self.queue);
        for item in queue {
            if item.shared.is_some() {
                self.queued_bytes -= item.msg.weight();
                taken.push(item);
            } else {
                self.queue.push_back(item);
            }
        }
        taken
    }
}
