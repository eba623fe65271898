//! The writing half of a connection: each turn gathers everything due (the
//! publisher's messages, the reader's acks, a keep-alive ping) into one buffer
//! and writes it with one call, then sleeps until the next reason to write:
//! the publisher's next send time, or a notification (an ack to send, a freed
//! window, a phase change, the worker's keep-alive sweep).

use std::rc::Rc;

use anyhow::{Context, Result};
use bytes::BytesMut;
use ringmq_proto::codec::{Disconnect, Packet};

use super::{wait, Conn, Publisher};
use crate::context::Thread;
use crate::shared::Phase;
use crate::signal::yield_now;
use crate::transport::WriteHalf;

pub async fn run(
    t: &Rc<Thread>,
    conn: &Conn,
    wr: WriteHalf,
    mut publisher: Option<Publisher>,
) -> Result<()> {
    if let Some(p) = &publisher {
        p.began(t);
    }
    let result = write_loop(t, conn, wr, publisher.as_mut()).await;
    if let Some(p) = publisher.as_mut() {
        p.finish(t);
    }
    result
}

async fn write_loop(
    t: &Rc<Thread>,
    conn: &Conn,
    mut wr: WriteHalf,
    mut publisher: Option<&mut Publisher>,
) -> Result<()> {
    let mut spare = BytesMut::new();
    loop {
        if conn.closed.get() {
            // The reader saw the broker go; answer a WebSocket close if owed.
            if wr.wants_write() {
                let _ = wr.write(spare).await;
            }
            return Ok(());
        }
        if t.phase() == Phase::Done {
            return disconnect(t, conn, wr).await;
        }
        let now = t.pacer.now_ns();
        if let Some(p) = publisher.as_mut() {
            p.fill(t, conn, now);
        }
        if conn.ping_due(t, now) && conn.outbox.borrow().is_empty() {
            conn.queue(&Packet::PingReq, t);
        }
        if !conn.outbox.borrow().is_empty() {
            let buf = std::mem::replace(&mut *conn.outbox.borrow_mut(), spare);
            let (res, mut buf) = wr.write(buf).await;
            res.context("writing to the broker")?;
            buf.clear();
            spare = buf;
            conn.last_write.set(now);
            // A max-rate publisher always has more to send; let the thread's
            // readers run (the epoll driver may complete writes without yielding).
            yield_now().await;
            continue;
        }
        if wr.wants_write() {
            // Only the transport has something to say (a WebSocket pong).
            let (res, buf) = wr.write(spare).await;
            res.context("writing to the broker")?;
            spare = buf;
            continue;
        }
        let send_due = publisher.as_ref().and_then(|p| p.next_due(t, conn, now));
        wait(t, conn, send_due).await;
    }
}

/// Flushes what is queued, says DISCONNECT (and the transport's goodbyes:
/// WebSocket close, TLS close_notify) and half-closes; the broker then
/// closes, which ends the reader.
async fn disconnect(t: &Thread, conn: &Conn, wr: WriteHalf) -> Result<()> {
    conn.queue(&Packet::Disconnect(Disconnect::default()), t);
    let buf = std::mem::take(&mut *conn.outbox.borrow_mut());
    wr.close(buf).await.context("sending DISCONNECT")
}
