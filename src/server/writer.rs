//! The writer side of a connection: drains the session's output, one write per
//! wake-up, and exists as a task only while there is something to write.

use std::rc::Rc;

use bytes::BytesMut;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use super::connection::encode_with_reason;
use super::context::{ConnSignals, Ctx, WriteHalf};
use crate::codec::{Disconnect, Packet, Protocol};
use crate::router::CloseReason;

/// Above this, a drained output buffer is released rather than kept.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Flushes what the session still owes the client (and a 5.0 DISCONNECT), for at
/// most a second: a client that stopped reading does not hold the close up.
pub(super) async fn finish_writes(ctx: &Rc<Ctx>, signals: &Rc<ConnSignals>) {
    let grace = std::time::Duration::from_secs(1);
    signals.finishing.set(true);
    if signals.writer_active() {
        signals.writer.notify();
        let _ = Box::pin(monoio::time::timeout(grace, signals.writer_done.notified())).await;
    } else if let Some(half) = signals.take_write_half() {
        let flush = write_loop(ctx.clone(), signals.clone(), half);
        let _ = Box::pin(monoio::time::timeout(grace, flush)).await;
    }
}

/// Drains the session's output: one write per wake-up, whatever accumulated.
/// Runs while there is something to write, then parks the write half and ends;
/// when the connection is finishing, sends the last bytes and shuts it down.
pub(super) async fn write_loop(ctx: Rc<Ctx>, signals: Rc<ConnSignals>, mut wr: WriteHalf) {
    let mut spare = BytesMut::new();
    loop {
        let taken = ctx
            .core
            .borrow_mut()
            .take_tx(signals.key, signals.conn, spare);
        match taken {
            Ok(buf) => {
                let len = buf.len();
                let (res, mut buf) = wr.write_all(buf).await;
                if res.is_err() {
                    signals.close(CloseReason::WriteFailed);
                    break;
                }
                buf.clear();
                spare = if buf.capacity() > KEEP_CAPACITY {
                    BytesMut::new()
                } else {
                    buf
                };
                let now = ctx.now();
                ctx.core
                    .borrow_mut()
                    .written(signals.key, signals.conn, len, now);
                ctx.apply_effects();
            }
            Err(_) if !signals.finishing.get() => return signals.park_writer(wr),
            Err(_) => break,
        }
    }
    let last = signals.final_disconnect.borrow_mut().take();
    if let Some((code, text)) = last {
        let disconnect = |properties| {
            Packet::Disconnect(Disconnect {
                reason: code,
                properties,
            })
        };
        let max = signals.max_packet_to_client;
        let out = encode_with_reason(disconnect, &text, Protocol::V5, max);
        let _ = wr.write_all(out).await;
    }
    let _ = wr.shutdown().await;
    signals.writer_finished();
}
