//! The reading half of a connection: one large read, then every complete frame
//! in it decoded and handled, with all the acks it calls for queued for a
//! single write.

use std::rc::Rc;

use anyhow::{bail, Result};
use bytes::BytesMut;
use ringmq_proto::codec::{decode, Ack, Packet, Publish, QosPid};

use super::{Conn, MAX_PACKET};
use crate::context::Thread;
use crate::payload::Header;
use crate::scenario::Role;
use crate::shared::{Counters, Phase};
use crate::stats::PairKey;
use crate::transport::ReadHalf;

/// What one read's worth of frames added up to, flushed to the shared counters once.
#[derive(Default)]
struct Tally {
    received: u64,
    acked: u64,
    foreign: u64,
    errors: u64,
}

pub async fn run(
    t: Rc<Thread>,
    conn: Rc<Conn>,
    role: Role,
    mut rd: ReadHalf,
    mut buf: BytesMut,
    capacity: usize,
) -> Result<()> {
    let result = read_loop(&t, &conn, &role, &mut rd, &mut buf, capacity).await;
    conn.closed.set(true);
    conn.wake.notify();
    result
}

async fn read_loop(
    t: &Thread,
    conn: &Conn,
    role: &Role,
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    capacity: usize,
) -> Result<()> {
    let subscriber = match role {
        Role::Subscriber { id, .. } => Some(*id),
        _ => None,
    };
    let mut now = t.pacer.now_ns();
    loop {
        let mut tally = Tally::default();
        while let Some(packet) = decode(buf, t.settings.protocol, MAX_PACKET)? {
            handle(t, conn, subscriber, packet, now, &mut tally)?;
        }
        flush(t, conn, &tally, rd.wants_write());
        let (res, b) = rd.read(std::mem::take(buf), capacity).await;
        *buf = b;
        // One timestamp per read: every frame in it arrived together.
        now = t.pacer.now_ns();
        if res? == 0 {
            if t.phase() == Phase::Done {
                return Ok(());
            }
            bail!("broker closed the connection");
        }
    }
}

/// `owed`: the transport has something for the broker (a pong) that only the
/// writer sends.
fn flush(t: &Thread, conn: &Conn, tally: &Tally, owed: bool) {
    let c = t.counters();
    Counters::add(&c.received, tally.received);
    Counters::add(&c.acked, tally.acked);
    Counters::add(&c.foreign, tally.foreign);
    Counters::add(&c.errors, tally.errors);
    if tally.acked > 0 || owed || !conn.outbox.borrow().is_empty() {
        conn.wake.notify();
    }
}

fn handle(
    t: &Thread,
    conn: &Conn,
    subscriber: Option<u32>,
    packet: Packet,
    now: u64,
    tally: &mut Tally,
) -> Result<()> {
    match packet {
        Packet::Publish(p) => on_publish(t, conn, subscriber, p, now, tally),
        Packet::PubAck(a) | Packet::PubComp(a) => on_final_ack(conn, a, tally),
        Packet::PubRec(a) => conn.queue(&Packet::PubRel(Ack::new(a.pid)), t),
        Packet::PubRel(a) => conn.queue(&Packet::PubComp(Ack::new(a.pid)), t),
        Packet::Disconnect(d) => bail!("broker sent DISCONNECT (reason {:#04x})", d.reason),
        _ => {}
    }
    Ok(())
}

fn on_final_ack(conn: &Conn, ack: Ack, tally: &mut Tally) {
    if !conn.inflight.borrow_mut().release(ack.pid) {
        tally.errors += 1; // an ack for nothing we sent
    } else if ack.reason >= 0x80 {
        tally.errors += 1; // 5.0: the broker refused the publish
    } else {
        tally.acked += 1;
    }
}

fn on_publish(
    t: &Thread,
    conn: &Conn,
    subscriber: Option<u32>,
    p: Publish,
    now: u64,
    tally: &mut Tally,
) {
    match p.qos_pid {
        QosPid::AtMostOnce => {}
        QosPid::AtLeastOnce(pid) => conn.queue(&Packet::PubAck(Ack::new(pid)), t),
        QosPid::ExactlyOnce(pid) => conn.queue(&Packet::PubRec(Ack::new(pid)), t),
    }
    let header = Header::read(&p.payload).filter(|h| h.run_id == t.settings.run_id);
    let (Some(h), Some(sub)) = (header, subscriber) else {
        tally.foreign += 1;
        return;
    };
    tally.received += 1;
    let key = PairKey {
        subscriber: sub,
        publisher: h.publisher,
    };
    t.stats
        .borrow_mut()
        .on_message(key, h.seq, h.intended_ns, now);
}
