//! The writer side of a connection: drains the session's output, one write per
//! wake-up, and exists as a task only while there is something to write.
//!
//! With `write_coalesce_ms`, a writer that found output already waiting when
//! two writes in a row ended (the connection's output keeps coming) waits
//! for the core's next coalescing tick (`server::coalesce`) after each
//! write, so what comes meanwhile goes with the next, until a wait brings
//! nothing and the task ends. At high fixed rates most of a delivery's CPU
//! is the kernel's cost per write, which larger writes share. A connection
//! left with nothing to send is written at once next time: light traffic
//! and request-and-answer exchanges never wait.

use std::rc::Rc;

use bytes::BytesMut;

use super::state::Connection;
use crate::codec::{encode_with_reason, Disconnect, Packet, Protocol};
use crate::router::CloseReason;
use crate::server::context::Ctx;
use crate::server::transport::{Transport, WriteHalf};

/// Above this, a drained output buffer is released rather than kept.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Writes in a row that ended with output waiting before a writer counts
/// its connection as a stream. One is a pipelined exchange (CONNECT and
/// SUBSCRIBE in one segment: the SUBACK is ready when the CONNACK's write
/// ends); two are a stream.
const STREAMING_WRITES: u32 = 2;

/// One writer task's `write_coalesce_ms` state: writes in a row that ended
/// with output waiting, up to [`STREAMING_WRITES`]; from there the task
/// stays a stream.
#[derive(Default)]
struct Coalescing {
    busy_ends: u32,
}

impl Coalescing {
    /// A write ended, with more output waiting or not: whether to wait for
    /// the tick before the next.
    fn wait_after_write(&mut self, more: bool) -> bool {
        if more {
            self.busy_ends = (self.busy_ends + 1).min(STREAMING_WRITES);
        } else if self.busy_ends < STREAMING_WRITES {
            self.busy_ends = 0;
        }
        self.busy_ends == STREAMING_WRITES
    }
}

/// Writes whatever the session accumulated, one write per turn, until it is
/// dry. An open connection then parks the write half and the task ends; a
/// finishing one sends the final DISCONNECT and shuts the write side down.
pub(super) async fn write_loop<S: Transport>(
    ctx: Rc<Ctx>,
    conn: Rc<Connection<S>>,
    mut wr: S::Writer,
) {
    let mut spare = BytesMut::new();
    let mut coalescing = Coalescing::default();
    let mut waited = false;
    loop {
        let (taken, sample) = ctx.with_core(|core| {
            let taken = core.take_tx(conn.key, conn.id, spare);
            let sample = taken.is_ok().then(|| core.take_latency_sample(conn.key));
            (taken, sample.flatten())
        });
        let buf = match taken {
            Ok(buf) => {
                if waited {
                    ctx.count(|c| c.coalesced_writes += 1);
                }
                buf
            }
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
        let more = ctx.with_core(|core| {
            if let Some(received_at) = sample {
                core.record_latency(now.since(received_at));
            }
            core.written(conn.key, conn.id, len, now);
            // Looked up only for the option: the default path is as before.
            ctx.write_tick().is_some() && core.has_tx(conn.key, conn.id)
        });
        waited = false;
        if let Some(tick) = ctx.write_tick() {
            waited = coalescing.wait_after_write(more);
            if waited {
                tick.next().await;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipelined_answer_does_not_wait() {
        let mut c = Coalescing::default();
        assert!(!c.wait_after_write(true), "the CONNACK, a SUBACK ready");
        assert!(!c.wait_after_write(false), "the SUBACK, nothing more");
        assert!(!c.wait_after_write(true), "a new exchange starts over");
    }

    #[test]
    fn a_stream_waits_after_each_write_once_it_is_one() {
        let mut c = Coalescing::default();
        assert!(!c.wait_after_write(true));
        assert!(c.wait_after_write(true), "two busy ends: a stream");
        assert!(c.wait_after_write(false), "a write that took it all");
        assert!(c.wait_after_write(true));
    }
}
