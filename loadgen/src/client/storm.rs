//! The connection storm at run time: this thread's share of the attempts,
//! each a connect, a CONNACK and a DISCONNECT, started on the open-loop
//! schedule with at most the planned number in flight (`scenario::storm`
//! plans it).

use std::cell::Cell;
use std::rc::Rc;

use bytes::BytesMut;
use ringmq_proto::codec::{encode, Disconnect, Packet};

use super::{client_id, connect_timed, Session};
use crate::context::Thread;
use crate::pacer::GRAIN_NS;
use crate::shared::Counters;
use crate::stats::Schedule;

/// This thread's share of the storm, from the start to the end of the window.
pub async fn churn(t: &Rc<Thread>, concurrency: usize) {
    let threads = t.settings.threads;
    let limit = concurrency.div_ceil(threads);
    let in_flight = Rc::new(Cell::new(0usize));
    let end = t.stats.borrow().window.end_ns;
    let rate = t.settings.connect_rate / threads as f64;
    // Threads interleave their schedules instead of connecting in lockstep.
    let offset = (t.index as f64 / threads as f64 * 1e9 / rate) as u64;
    let start = t.start_ns().unwrap_or_else(|| t.pacer.now_ns());
    let schedule = Schedule::new(start + offset, rate).with_grain(GRAIN_NS);
    for k in 0.. {
        let due = schedule.due(k);
        if due >= end {
            break;
        }
        t.pacer.sleep_until(due).await;
        t.wait_for(|| in_flight.get() < limit).await;
        in_flight.set(in_flight.get() + 1);
        monoio::spawn(attempt(t.clone(), k as usize, due, in_flight.clone()));
    }
}

async fn attempt(t: Rc<Thread>, k: usize, intended_ns: u64, in_flight: Rc<Cell<usize>>) {
    let _task = t.task_guard();
    let id = client_id(t.settings.run_id, &format!("s{}", t.index), k);
    if let Some(session) = connect_timed(&t, &id, None, intended_ns).await {
        if let Err(e) = goodbye(&t, session).await {
            Counters::add(&t.counters().errors, 1);
            t.log_error("disconnect", &e);
        }
        Counters::add(&t.counters().closed, 1);
    }
    in_flight.set(in_flight.get() - 1);
}

async fn goodbye(t: &Thread, session: Session) -> anyhow::Result<()> {
    let mut out = BytesMut::with_capacity(4);
    encode(
        &Packet::Disconnect(Disconnect::default()),
        t.settings.protocol,
        &mut out,
    );
    session.link.close(out).await
}
