//! The writing half of a connection: each turn gathers everything due (the
//! publisher's messages, the reader's acks, a keep-alive ping) into one buffer
//! and writes it with one call, then sleeps until the next reason to write.

use std::rc::Rc;

use anyhow::{Context, Result};
use bytes::BytesMut;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, OwnedWriteHalf};
use monoio::net::TcpStream;
use ringmq::codec::{Disconnect, Packet};

use super::{wait, Conn, Publisher};
use crate::pacer::Precision;
use crate::shared::Phase;
use crate::worker::Worker;

pub async fn run(
    w: &Rc<Worker>,
    conn: &Conn,
    mut wr: OwnedWriteHalf<TcpStream>,
    mut publisher: Option<Publisher>,
) -> Result<()> {
    // Ping at half the keep-alive so the broker never sees a silent client.
    let ping_every = u64::from(w.settings.keepalive) * 500_000_000;
    let mut last_write = w.pacer.now_ns();
    let mut spare = BytesMut::new();
    loop {
        if conn.closed.get() {
            return Ok(());
        }
        if w.phase() == Phase::Done {
            return disconnect(w, conn, wr).await;
        }
        let now = w.pacer.now_ns();
        if let Some(p) = publisher.as_mut() {
            p.fill(w, conn, now);
        }
        let ping_due = (ping_every > 0).then_some(last_write + ping_every);
        if ping_due.is_some_and(|due| due <= now) && conn.outbox.borrow().is_empty() {
            conn.queue(&Packet::PingReq, w);
        }
        if !conn.outbox.borrow().is_empty() {
            let buf = std::mem::replace(&mut *conn.outbox.borrow_mut(), spare);
            let (res, mut buf) = wr.write_all(buf).await;
            res.context("writing to the broker")?;
            buf.clear();
            spare = buf;
            last_write = now;
            continue;
        }
        let send_due = publisher.as_ref().and_then(|p| p.next_due(w, conn, now));
        let (due, precision) = match (send_due, ping_due) {
            (Some(s), Some(p)) if p < s => (Some(p), Precision::Coarse),
            (Some(s), _) => (Some(s), Precision::Precise),
            (None, p) => (p, Precision::Coarse),
        };
        wait(w, conn, due, precision).await;
    }
}

/// Flushes what is queued, says DISCONNECT and half-closes; the broker then
/// closes, which ends the reader.
async fn disconnect(w: &Worker, conn: &Conn, mut wr: OwnedWriteHalf<TcpStream>) -> Result<()> {
    conn.queue(&Packet::Disconnect(Disconnect::default()), w);
    let buf = std::mem::take(&mut *conn.outbox.borrow_mut());
    let (res, _) = wr.write_all(buf).await;
    res.context("sending DISCONNECT")?;
    wr.shutdown().await.context("closing")?;
    Ok(())
}
