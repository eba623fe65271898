//! The journal: one record per change to what must outlive the process (a
//! persistent session's subscriptions, its outgoing messages, the QoS 2 ids
//! it awaits PUBREL for; the retained messages of the topics a core owns),
//! in the order the core made them. The store appends each record as one
//! entry of the core's log; [`Replay`] folds a log back into session images
//! and retained messages.
//!
//! The outgoing side is journaled as the session moves it: `Queued` appends
//! to the queue, `Sent` moves the queue's head into flight with its packet
//! id, `Skipped` drops the head (expired, too large), `Released` marks a QoS
//! 2 message PUBREC'd, `Settled` removes an acknowledged one. Anything less
//! regular (a shared member handing its messages back) writes the whole
//! image again (`Put`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    get_message, get_routed, get_session, put_bytes, put_message, put_routed, put_session, Corrupt,
    Cursor, Epoch, SessionImage,
};
use crate::codec::{Pid, Properties, QoS, Will};
use crate::message::Message;
use crate::session::{OutState, Routed, WillRelease};
use crate::time::Time;
use crate::topic::TopicName;

const PUT: u8 = 1;
const META: u8 = 2;
const GONE: u8 = 3;
const QUEUED: u8 = 4;
const SENT: u8 = 5;
const SKIPPED: u8 = 6;
const RELEASED: u8 = 7;
const SETTLED: u8 = 8;
const AWAIT_REL: u8 = 9;
const REL_DONE: u8 = 10;
const RETAINED: u8 = 11;
const RETAINED_CLEARED: u8 = 12;
const WILL: u8 = 13;
const WILL_DONE: u8 = 14;

/// Builds journal records; each is one entry for the store.
#[derive(Debug)]
pub struct Recorder {
    epoch: Epoch,
    scratch: BytesMut,
    records: Vec<Bytes>,
}

impl Recorder {
    pub fn new(epoch: Epoch) -> Recorder {
        Recorder {
            epoch,
            scratch: BytesMut::new(),
            records: Vec::new(),
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The records made since the last call, in order.
    pub fn take(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.records)
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn record(&mut self, kind: u8, client: &str, body: impl FnOnce(&mut BytesMut, Epoch)) {
        self.scratch.put_u8(kind);
        put_bytes(&mut self.scratch, client.as_bytes());
        body(&mut self.scratch, self.epoch);
        self.records.push(self.scratch.split().freeze());
    }

    /// The whole session: meta, outgoing messages, QoS 2 ids.
    pub fn put(&mut self, image: &SessionImage) {
        self.record(PUT, &image.client_id, |out, epoch| {
            put_session(out, image, epoch)
        });
    }

    /// Who the session is and what it subscribes to; its messages unchanged.
    pub fn meta(&mut self, image: &SessionImage) {
        let meta = SessionImage {
            awaiting_rel: Vec::new(),
            inflight: Vec::new(),
            queue: Vec::new(),
            ..image.clone()
        };
        self.record(META, &image.client_id, |out, epoch| {
            put_session(out, &meta, epoch)
        });
    }

    pub fn gone(&mut self, client: &str) {
        self.record(GONE, client, |_, _| {});
    }

    pub fn queued(&mut self, client: &str, item: &Routed) {
        self.record(QUEUED, client, |out, epoch| put_routed(out, item, epoch));
    }

    pub fn sent(&mut self, client: &str, pid: Pid) {
        self.record(SENT, client, |out, _| out.put_u16_le(pid.get()));
    }

    pub fn skipped(&mut self, client: &str) {
        self.record(SKIPPED, client, |_, _| {});
    }

    pub fn released(&mut self, client: &str, pid: Pid) {
        self.record(RELEASED, client, |out, _| out.put_u16_le(pid.get()));
    }

    pub fn settled(&mut self, client: &str, pid: Pid) {
        self.record(SETTLED, client, |out, _| out.put_u16_le(pid.get()));
    }

    pub fn await_rel(&mut self, client: &str, pid: Pid) {
        self.record(AWAIT_REL, client, |out, _| out.put_u16_le(pid.get()));
    }

    pub fn rel_done(&mut self, client: &str, pid: Pid) {
        self.record(REL_DONE, client, |out, _| out.put_u16_le(pid.get()));
    }

    /// A will waiting out its delay, due at `at`.
    pub fn will(&mut self, client: &str, at: Time, will: &WillRelease) {
        self.record(WILL, client, |out, epoch| {
            out.put_u64_le(epoch.to_unix(at));
            put_bytes(out, will.topic().as_bytes());
            let w = will.will();
            put_bytes(out, &w.payload);
            out.put_u8(w.qos as u8 | u8::from(w.retain) << 2);
            w.properties.encode(out);
        });
    }

    /// The delayed will was published or cancelled.
    pub fn will_done(&mut self, client: &str) {
        self.record(WILL_DONE, client, |_, _| {});
    }

    /// A retained message stored for its topic (the owner core journals it).
    pub fn retained(&mut self, msg: &Message) {
        self.record(RETAINED, "", |out, epoch| put_message(out, msg, epoch));
    }

    pub fn retained_cleared(&mut self, topic: &str) {
        self.record(RETAINED_CLEARED, "", |out, _| {
            put_bytes(out, topic.as_bytes())
        });
    }
}

/// What a journal folds into.
#[derive(Debug, Default)]
pub struct Recovered {
    pub sessions: Vec<SessionImage>,
    pub retained: Vec<Message>,
    /// Delayed wills of recovered sessions: client id, when due, the will.
    pub wills: Vec<(Arc<str>, Time, WillRelease)>,
}

/// Folds journal records, oldest first, into the state they describe.
#[derive(Debug)]
pub struct Replay {
    epoch: Epoch,
    sessions: HashMap<Arc<str>, Building>,
    retained: HashMap<String, Message>,
}

/// A session being rebuilt: its outgoing side as a queue and a window.
#[derive(Debug)]
struct Building {
    image: SessionImage,
    will: Option<(Time, WillRelease)>,
    inflight: VecDeque<(Pid, OutState, Routed)>,
    queue: VecDeque<Routed>,
}

impl Replay {
    pub fn new(epoch: Epoch) -> Replay {
        Replay {
            epoch,
            sessions: HashMap::new(),
            retained: HashMap::new(),
        }
    }

    /// Applies one record. A record about a session the journal never
    /// introduced is corrupt (the log lost its beginning).
    pub fn apply(&mut self, record: Bytes) -> Result<(), Corrupt> {
        let mut r = Cursor::new(record);
        let kind = r.u8()?;
        let client = r.str()?;
        match kind {
            PUT => {
                let mut image = get_session(&mut r, self.epoch)?;
                let inflight = std::mem::take(&mut image.inflight).into();
                let queue = std::mem::take(&mut image.queue).into();
                let b = Building {
                    image,
                    will: None,
                    inflight,
                    queue,
                };
                self.sessions.insert(client, b);
            }
            META => {
                let image = get_session(&mut r, self.epoch)?;
                match self.sessions.get_mut(&client) {
                    Some(b) => {
                        let awaiting = std::mem::take(&mut b.image.awaiting_rel);
                        b.image = SessionImage {
                            awaiting_rel: awaiting,
                            ..image
                        };
                    }
                    None => {
                        let b = Building {
                            image,
                            will: None,
                            inflight: VecDeque::new(),
                            queue: VecDeque::new(),
                        };
                        self.sessions.insert(client, b);
                    }
                }
            }
            GONE => {
                self.sessions.remove(&client);
            }
            RETAINED => {
                let msg = get_message(&mut r, self.epoch)?;
                self.retained.insert(msg.topic.as_str().to_owned(), msg);
            }
            RETAINED_CLEARED => {
                let topic = r.bytes()?;
                let topic = std::str::from_utf8(&topic).map_err(|_| Corrupt::Invalid("topic"))?;
                self.retained.remove(topic);
            }
            _ => {
                let epoch = self.epoch;
                let b = self
                    .sessions
                    .get_mut(&client)
                    .ok_or(Corrupt::Invalid("record for an unknown session"))?;
                b.apply(kind, &mut r, epoch)?;
            }
        }
        if r.remaining() != 0 {
            return Err(Corrupt::Invalid("bytes after the record"));
        }
        Ok(())
    }

    pub fn finish(self) -> Recovered {
        let mut wills = Vec::new();
        let mut sessions = Vec::with_capacity(self.sessions.len());
        for (client, mut b) in self.sessions {
            if let Some((at, will)) = b.will.take() {
                wills.push((client, at, will));
            }
            sessions.push(b.finish());
        }
        Recovered {
            sessions,
            retained: self.retained.into_values().collect(),
            wills,
        }
    }
}

impl Building {
    fn apply(&mut self, kind: u8, r: &mut Cursor, epoch: Epoch) -> Result<(), Corrupt> {
        match kind {
            QUEUED => self.queue.push_back(get_routed(r, epoch)?),
            SENT => {
                let pid = r.pid()?;
                let item = self
                    .queue
                    .pop_front()
                    .ok_or(Corrupt::Invalid("sent from an empty queue"))?;
                self.inflight.push_back((pid, OutState::Published, item));
            }
            SKIPPED => {
                self.queue
                    .pop_front()
                    .ok_or(Corrupt::Invalid("skipped in an empty queue"))?;
            }
            RELEASED => {
                let pid = r.pid()?;
                if let Some(e) = self.inflight.iter_mut().find(|e| e.0 == pid) {
                    e.1 = OutState::Released;
                }
            }
            SETTLED => {
                let pid = r.pid()?;
                self.inflight.retain(|e| e.0 != pid);
            }
            AWAIT_REL => {
                let pid = r.pid()?;
                if !self.image.awaiting_rel.contains(&pid) {
                    self.image.awaiting_rel.push(pid);
                }
            }
            REL_DONE => {
                let pid = r.pid()?;
                self.image.awaiting_rel.retain(|p| *p != pid);
            }
            WILL => {
                let at = epoch.to_time(r.u64()?);
                let topic = TopicName::new(r.bytes()?, usize::MAX)
                    .map_err(|_| Corrupt::Invalid("will topic"))?;
                let payload = r.bytes()?;
                let flags = r.u8()?;
                let qos = QoS::from_bits(flags & 3).ok_or(Corrupt::Invalid("will QoS"))?;
                let properties = Properties::decode(r.codec())?;
                let will = Will {
                    topic: topic.bytes().clone(),
                    payload,
                    qos,
                    retain: flags & 4 != 0,
                    properties,
                };
                let publisher = self.image.client_id.clone();
                self.will = Some((at, WillRelease::from_parts(topic, will, publisher)));
            }
            WILL_DONE => self.will = None,
            _ => return Err(Corrupt::Invalid("record kind")),
        }
        Ok(())
    }

    fn finish(mut self) -> SessionImage {
        self.image.inflight = self.inflight.into();
        self.image.queue = self.queue.into();
        self.image
    }
}
