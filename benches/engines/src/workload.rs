//! The persistence workload of ringmq: one message record per QoS 1/2
//! PUBLISH, one "queued for session S" record per offline subscriber, and
//! later one "acknowledged" record per subscriber plus the deletion of the
//! message once every subscriber has acknowledged it.

/// Payload bytes per message (the 64 B).
pub const PAYLOAD: usize = 64;

/// One loop turn's worth of records, written by one commit.
#[derive(Default)]
pub struct Batch {
    /// (message id, range of the body in `arena`)
    pub msgs: Vec<(u64, std::ops::Range<usize>)>,
    pub arena: Vec<u8>,
    /// (session, message id): queued for an offline subscriber
    pub queued: Vec<(u32, u64)>,
    /// (session, message id): acknowledged, the queue entry goes
    pub acks: Vec<(u32, u64)>,
    /// message ids whose last subscriber acknowledged: the message goes
    pub dels: Vec<u64>,
}

impl Batch {
    pub fn clear(&mut self) {
        self.msgs.clear();
        self.arena.clear();
        self.queued.clear();
        self.acks.clear();
        self.dels.clear();
    }

    pub fn body(&self, range: &std::ops::Range<usize>) -> &[u8] {
        &self.arena[range.clone()]
    }

    /// A new message `id`, queued for `subs` offline sessions.
    pub fn publish(&mut self, id: u64, subs: u32) {
        let start = self.arena.len();
        encode_body(id, &mut self.arena);
        self.msgs.push((id, start..self.arena.len()));
        for k in 0..subs {
            self.queued.push((session(id, k), id));
        }
    }

    /// Every subscriber of message `id` acknowledged it.
    pub fn ack_all(&mut self, id: u64, subs: u32) {
        for k in 0..subs {
            self.acks.push((session(id, k), id));
        }
        self.dels.push(id);
    }
}

/// The k-th offline subscriber of message `id`: 1000 sessions per
/// subscriber slot, so queue keys interleave as they would per session.
pub fn session(id: u64, k: u32) -> u32 {
    k * 1_000_000 + (id % 1000) as u32
}

/// A stored PUBLISH: qos, flags, message expiry, topic, payload; ~115 bytes.
pub fn encode_body(id: u64, out: &mut Vec<u8>) {
    let topic = format!(
        "ringmq/site-{:03}/dev-{:05}/temperature",
        id % 997,
        id % 65_521
    );
    out.push(1); // QoS 1
    out.push(0); // flags: retain/dup
    out.extend_from_slice(&3600u32.to_le_bytes()); // message expiry interval
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&(PAYLOAD as u16).to_le_bytes());
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..PAYLOAD {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
}

/// Logical bytes of the live data, the same for every engine: key + value
/// of each live record (8 B id + body per message, 12 B key per queue entry).
pub fn live_bytes(live_msgs: u64, subs: u32) -> u64 {
    let mut body = Vec::new();
    encode_body(live_msgs, &mut body);
    live_msgs * (8 + body.len() as u64) + live_msgs * subs as u64 * 12
}

/// What recovery hands the broker: every live message and queue entry.
#[derive(Default)]
pub struct Loaded {
    pub msgs: Vec<(u64, Vec<u8>)>,
    pub queued: Vec<(u32, u64)>,
    /// seconds the open took (for the log: reading the file)
    pub opened: f64,
}
