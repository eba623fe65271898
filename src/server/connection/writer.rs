//! The writer side of a connection: drains the session's output, one write per
//! wake-up, and exists as a task only while there is something to write.

use std::rc::Rc;

use bytes::BytesMut;

use super::state::Connection;
use crate::codec::{encode_with_reason, Disconnect, Packet, Protocol};
use crate::router::CloseReason;
use crate::server::context::Ctx;
use crate::server::transport::{Transport, WriteHalf};

/// Above this, a drained output buffer is released rather than kept.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Writes whatever the session accumulated, one write per turn, until it is
/// dry. An open connection then parks the write half and the task ends; a
/// finishing one sends the final DISCONNECT and shuts the write side down.
pub(super) async fn write_loop<S: Transport>(
    ctx: Rc<Ctx>,
    conn: Rc<Connection<S>>,
    mut wr: S::Writer,
) {
    let mut spare = BytesMut::new();
    loop {
        let (taken, sample) = ctx.with_core(|core| {
            let taken = core.take_tx(conn.key, conn.id, spare);
            let sample = taken.is_ok().then(|| core.take_latency_sample(conn.key));
            (taken, sample.flatten())
        });
        let buf = match taken {
            Ok(buf) => buf,
            // Protocol output of the stream itself (a pong, a TLS alert).
            Err(empty) if wr.has_pending() => empty,
            Err(_) => match conn.park(wr) {
                None => return,
                Some(w) => {
                    wr = w;
                    break;
                }
            },
        };
        if let Some(mark) = ctx.output_mark(conn.key, conn.acks_publishes()) {
            // Boxed: only with `persistence_fsync = "always"`.
            Box::pin(ctx.wait_durable(&mark)).await;
        }
        let len = buf.len();
        let (res, mut buf) = wr.write_all(buf).await;
        if res.is_err() {
            conn.output_closed();
            conn.request_close(CloseReason::WriteFailed);
            ctx.unpark(conn.id);
            return;
        }
        buf.clear();
        spare = if buf.capacity() > KEEP_CAPACITY {
            BytesMut::new()
        } else {
            buf
        };
        let now = ctx.now();
        ctx.with_core(|core| {
            if let Some(received_at) = sample {
                core.record_latency(now.since(received_at));
            }
            core.written(conn.key, conn.id, len, now)
        });
    }
    if let Some(farewell) = conn.take_farewell() {
        let disconnect = |properties| {
            Packet::Disconnect(Disconnect {
                reason: farewell.code,
                properties,
            })
        };
        let max = conn.max_packet_to_client;
        let out = encode_with_reason(disconnect, &farewell.reason, Protocol::V5, max);
        let _ = wr.write_all(out).await;
    }
    let _ = wr.shutdown().await;
    conn.output_closed();
}
