//! One core: a pinned thread running its own monoio runtime with its own
//! socket for every listener, mesh inbox, housekeeping tick and connections.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::Canceller;

use super::context::Ctx;
use super::listener::bind_reuseport;
use super::mesh::{Inbox, Parcel};
use super::notify::{yield_now, Notify};
use super::parking::READY_BATCH;
use super::{accept, sys, Shared};
use crate::config::IoDriver;
use crate::router::{CloseReason, ConnId, Core};

/// How often each core checks keep-alives and publishes its counters.
const TICK: Duration = Duration::from_millis(500);

/// Thread entry: pins, builds the runtime with the chosen driver, serves until
/// shutdown. Reports the bound address (or the error) on `bound`.
pub fn run(
    id: usize,
    core: Core,
    shared: Arc<Shared>,
    inbox: Inbox,
    bound: Sender<std::io::Result<SocketAddr>>,
) {
    if shared.config.pin_cores {
        pin(id);
    }
    let entries = shared.config.ring_entries;
    let required = shared.config.io_driver == IoDriver::IoUring;
    let want_uring = match shared.config.io_driver {
        IoDriver::Epoll => false,
        IoDriver::IoUring | IoDriver::Auto => monoio::utils::detect_uring(),
    };
    if want_uring {
        let mut ring = io_uring::IoUring::builder();
        ring.setup_cqsize(completion_entries(entries));
        let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(ring)
            .enable_timer()
            .build();
        match rt {
            Ok(mut rt) => {
                tracing::info!(core = id, driver = "io_uring", entries, "core started");
                let _ = shared.drivers[id].set("io_uring");
                return rt.block_on(serve(id, core, shared, inbox, bound));
            }
            Err(e) if required => {
                let _ = bound.send(Err(std::io::Error::other(format!(
                    "--io-driver io-uring: cannot set up io_uring: {e}"
                ))));
                return;
            }
            Err(e) => {
                tracing::warn!(core = id, error = %e, "io_uring unavailable; falling back to epoll")
            }
        }
    } else if required {
        let msg =
            "--io-driver io-uring: the kernel does not allow io_uring here (use auto or epoll)";
        let _ = bound.send(Err(std::io::Error::other(msg)));
        return;
    } else if shared.config.io_driver == IoDriver::Auto {
        tracing::warn!(core = id, "io_uring blocked by the kernel; using epoll");
    }
    let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build();
    match rt {
        Ok(mut rt) => {
            tracing::info!(core = id, driver = "epoll", "core started");
            let _ = shared.drivers[id].set("epoll");
            rt.block_on(serve(id, core, shared, inbox, bound));
        }
        Err(e) => {
            let _ = bound.send(Err(e));
        }
    }
}

fn pin(id: usize) {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(core_id) = ids.get(id % ids.len().max(1)) {
        if !core_affinity::set_for_current(*core_id) {
            tracing::warn!(core = id, "could not pin thread to a CPU");
        }
    }
}

async fn serve(
    id: usize,
    core: Core,
    shared: Arc<Shared>,
    inbox: Inbox,
    bound: Sender<std::io::Result<SocketAddr>>,
) {
    let mut sockets = Vec::with_capacity(shared.listeners.len());
    for l in &shared.listeners {
        let opened = bind_reuseport(l.config.addr(), 4096)
            .and_then(monoio::net::TcpListener::from_std)
            .map_err(|e| std::io::Error::new(e.kind(), format!("listener {}: {e}", l.config)));
        match opened {
            Ok(socket) => sockets.push(socket),
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        }
    }
    let _ = bound.send(Ok(shared.listeners[0].config.addr()));
    let ctx = Rc::new(Ctx::new(id, core, shared));
    let stop = Canceller::new();
    let stop_handle = stop.handle();
    STOP.with(|s| *s.borrow_mut() = Some(stop));
    let ticks_stop = Rc::new(Notify::default());
    let ticks = monoio::spawn(tick_loop(ctx.clone(), ticks_stop.clone()));
    let mesh_task = monoio::spawn(mesh_loop(ctx.clone(), inbox));
    let parking_stop = Rc::new(Notify::default());
    let parking_task = monoio::spawn(parking_loop(ctx.clone(), parking_stop.clone()));
    let accepting: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(index, socket)| {
            let (ctx, stop) = (ctx.clone(), stop_handle.clone());
            monoio::spawn(async move { accept_loop(&ctx, &socket, index, stop).await })
        })
        .collect();
    for task in accepting {
        task.await;
    }
    close_all(&ctx).await;
    ctx.shared.quiet.fetch_add(1, Ordering::AcqRel);
    let _ = mesh_task.await;
    // Every task that holds the context ends before the runtime does, so
    // the broker's shared state (the store and its lock) goes with it.
    ticks_stop.notify();
    ticks.await;
    parking_stop.notify();
    parking_task.await;
    if let Some(parking) = ctx.parking() {
        parking.clear();
    }
}

/// Completion queue entries at least. The kernel sizes the hash a cancel
/// looks the pending read up in from the completion queue (1/32 of its
/// entries in buckets, at most 256): at the 2048 completion entries of a
/// 1024-entry ring, each reader parked at 10,000 connections walked about 150
/// pending reads (10 us), and the parking of a connect storm's first clients
/// held up the connects of the last.
const MIN_COMPLETION_ENTRIES: u32 = 8192;

/// The completion queue for a ring of `entries`: twice them as the kernel's
/// default, at least [`MIN_COMPLETION_ENTRIES`] (128 KiB of kernel memory).
fn completion_entries(entries: u32) -> u32 {
    entries.saturating_mul(2).max(MIN_COMPLETION_ENTRIES)
}

/// Spawns the readers of parked connections whose sockets became readable,
/// one batch of [`READY_BATCH`] at a time with a turn of the core between
/// batches: when a whole fleet wakes at once (a mass disconnect, a broadcast
/// that every device acknowledges), most woken readers have read and, on a
/// close, ended before the next batch is spawned, so the core holds about
/// two batches of reader tasks and read buffers instead of one per client.
async fn parking_loop(ctx: Rc<Ctx>, stop: Rc<Notify>) {
    let Some(parking) = ctx.parking() else {
        return;
    };
    let watched = parking
        .watchable()
        .map(std::os::unix::net::UnixStream::from)
        .and_then(monoio::net::UnixStream::from_std);
    let epoll = match watched {
        Ok(epoll) => epoll,
        Err(e) => {
            tracing::warn!(core = ctx.id, error = %e, "cannot watch parked readers");
            return;
        }
    };
    loop {
        let ready = std::pin::pin!(epoll.readable(false));
        let stopped = std::pin::pin!(stop.notified());
        if let futures::future::Either::Right(_) = futures::future::select(ready, stopped).await {
            return;
        }
        let ready = parking.ready();
        for &conn in &ready {
            ctx.take_ready_input(conn);
        }
        if ready.len() == READY_BATCH {
            // More may be ready: let this batch run first (on the epoll
            // driver a ready set would not go back to the scheduler).
            yield_now().await;
        }
    }
}

/// Accepts on one listener until shutdown.
async fn accept_loop(
    ctx: &Rc<Ctx>,
    listener: &monoio::net::TcpListener,
    index: usize,
    stop: monoio::io::CancelHandle,
) {
    loop {
        match listener.cancelable_accept(stop.clone()).await {
            Ok((stream, peer)) => {
                ctx.count(|c| c.connections_total += 1);
                monoio::spawn(accept::accept(ctx.clone(), stream, peer, index));
            }
            Err(_)
                if ctx
                    .shared
                    .shutdown
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                return
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(core = ctx.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How long a stopping core waits for the others to close their connections
/// while it takes what they still route to it.
const QUIET_WAIT: Duration = Duration::from_secs(5);

/// Drains this core's inbox whenever another core rings: router messages in
/// one call into the core, connections moving here, the stop. After the stop
/// it goes on until every core's connections are closed, so a message a
/// publisher on another core had acknowledged still reaches its session here.
async fn mesh_loop(ctx: Rc<Ctx>, inbox: Inbox) {
    let mut stopping: Option<std::time::Instant> = None;
    // What each sender's batches weighed, given back to its budget after the
    // drain, not per batch: else a fast sender could refill the queue as
    // fast as this loop empties it, and one turn take far more than the budget.
    let mut handled_weight = vec![0; ctx.shared.mesh.cores()];
    loop {
        match stopping {
            None => match ctx.busy_poll() {
                None => inbox.doorbell.wait().await,
                Some(poll) => poll.wait(&inbox.doorbell).await,
            },
            Some(since) => {
                let all_quiet = ctx.shared.quiet.load(Ordering::Acquire) == ctx.shared.config.cores;
                if (all_quiet && inbox.rx.is_empty()) || since.elapsed() > QUIET_WAIT {
                    return;
                }
                let _ = monoio::time::timeout(QUIET_POLL, inbox.doorbell.wait()).await;
            }
        }
        let mut stop = false;
        let now = ctx.now();
        let mut handled = Vec::new();
        ctx.with_core(|core| {
            while let Ok(parcel) = inbox.rx.try_recv() {
                match parcel {
                    Parcel::Routing {
                        from,
                        seq,
                        batch,
                        weight,
                    } => {
                        for msg in batch {
                            core.handle_mesh(msg, now);
                        }
                        handled_weight[from] += weight;
                        if ctx.tracks_durability() {
                            handled.push((from, seq));
                        }
                    }
                    Parcel::Durable { from, seq } => ctx.batches_durable(from, seq),
                    // Dropped when stopping: the connection closes.
                    Parcel::Handoff(h) if stopping.is_none() => {
                        monoio::spawn(accept::adopt(ctx.clone(), *h));
                    }
                    Parcel::Handoff(_) => {}
                    Parcel::Cluster { filter, msgs } => {
                        for msg in &msgs {
                            core.deliver_from_cluster(msg, &filter, now);
                        }
                    }
                    Parcel::ClusterRetain(msg) => core.retain_from_cluster(&msg, now),
                    Parcel::ClusterShared { share, msgs } => {
                        for msg in &msgs {
                            core.deliver_shared_from_cluster(msg, &share, now);
                        }
                    }
                    Parcel::ClusterSharing(on) => core.set_cluster_shared(on),
                    Parcel::ClusterRelease {
                        client_id,
                        discard,
                        reply,
                    } => {
                        let _ = reply.send(core.release_to_cluster(&client_id, discard, now));
                    }
                    Parcel::ClusterAdopt(image) => core.adopt_from_cluster(*image, now),
                    Parcel::ClusterMerge { image, reply } => {
                        let _ = reply.send(core.merge_from_cluster(*image, now));
                    }
                    Parcel::Reauthorize => {
                        let backend = ctx.shared.auth.backend();
                        core.reauthorize(|id, user| backend.permissions(id, user));
                    }
                    Parcel::Limits(limits) => core.set_limits(limits),
                    Parcel::Shutdown => {
                        stop = true;
                        break;
                    }
                }
            }
        });
        for (from, weight) in handled_weight.iter_mut().enumerate() {
            if *weight > 0 {
                ctx.shared
                    .mesh
                    .handled(from, ctx.id, std::mem::take(weight));
            }
        }
        // Also where a sync of this core's log lands: its writer rings.
        ctx.handled_batches(&handled);
        ctx.durability_advanced();
        if stop && stopping.is_none() {
            stopping = Some(std::time::Instant::now());
            begin_shutdown(&ctx);
        }
    }
}

/// How often a stopping core looks whether every core is quiet.
const QUIET_POLL: Duration = Duration::from_millis(10);

/// Stops accepting (the accept loop sees the shutdown flag once its pending
/// accept is cancelled) and asks every connection to close.
fn begin_shutdown(ctx: &Rc<Ctx>) {
    STOP.with(|s| {
        if let Some(c) = s.borrow_mut().take() {
            c.cancel();
        }
    });
    ctx.close_all(CloseReason::ServerShutdown);
}

thread_local! {
    static STOP: std::cell::RefCell<Option<Canceller>> = const { std::cell::RefCell::new(None) };
}

async fn close_all(ctx: &Rc<Ctx>) {
    for _ in 0..300 {
        if !ctx.has_links() {
            break;
        }
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.shared.counters[ctx.id].publish(&ctx.counters());
}

/// Readers asked to park per turn of the core. Each ask cancels a pending
/// read, which the kernel finds by walking one bucket of a hash of every
/// read pending on the ring (64 buckets at 1024 entries): a tick that asked
/// all 1,500 readers gone quiet since the last one (10,000 clients
/// connecting at 3,000/s) held the core 4-10 ms in one submit, and the
/// clients connecting meanwhile waited for it.
const PARK_ASKS_PER_TURN: usize = 64;

/// Asks the readers of connections gone quiet to park, a batch per turn of
/// the core, so the accepts and reads between batches are not held up.
/// `quiet` is the tick's own list, kept between ticks: a list allocated at
/// each tick, as the readers it names free their memory, kept mimalloc from
/// handing that memory back (1.0 KB more per parked connection).
async fn park_quiet(ctx: &Rc<Ctx>, now: crate::time::Time, quiet: &mut Vec<ConnId>) {
    let Some(cutoff) = ctx.quiet_connections(now, quiet) else {
        return;
    };
    for (i, batch) in quiet.chunks(PARK_ASKS_PER_TURN).enumerate() {
        if i > 0 {
            yield_now().await;
        }
        ctx.ask_to_park(batch, cutoff);
    }
}

/// After this many readers parked (or woke) since the last time, a core
/// hands the memory their tasks and buffers held back to the OS.
const COLLECT_AFTER_PARKED: u64 = 256;

/// Housekeeping: keep-alive expiry, QoS 2 state expiry, counters, `$SYS`.
async fn tick_loop(ctx: Rc<Ctx>, stop: Rc<Notify>) {
    let mut sys = sys::SysPublisher::new(&ctx);
    let mut collected_at = 0;
    let mut quiet = Vec::new();
    loop {
        let tick = std::pin::pin!(monoio::time::sleep(TICK));
        let stopped = std::pin::pin!(stop.notified());
        if let futures::future::Either::Right(_) = futures::future::select(tick, stopped).await {
            return;
        }
        let now = ctx.now();
        ctx.with_core(|core| core.tick(now));
        park_quiet(&ctx, now, &mut quiet).await;
        let parked = ctx.parking().map_or(0, |p| p.parked() as u64);
        if parked.abs_diff(collected_at) >= COLLECT_AFTER_PARKED {
            // SAFETY: mi_collect takes no pointers; it frees this thread's
            // empty pages (a no-op where mimalloc is not the allocator).
            unsafe { libmimalloc_sys::mi_collect(false) };
            collected_at = parked;
        }
        ctx.count(|c| c.connections_parked = parked);
        if let Some(poll) = ctx.busy_poll() {
            let turns = poll.turns();
            ctx.count(|c| c.busy_poll_turns = turns);
        }
        ctx.compact_if_due();
        if let Some(store) = &ctx.shared.store {
            store.check_health(ctx.id);
            if ctx.id == 0 {
                let (failing, failed) = (store.failing() as u64, store.failed_writes());
                let syncs = store.syncs();
                ctx.count(|c| {
                    c.store_failing = failing;
                    c.store_failed_writes = failed;
                    c.store_syncs = syncs;
                });
            }
        }
        ctx.shared.counters[ctx.id].publish(&ctx.counters());
        ctx.with_core(|core| ctx.shared.latency[ctx.id].publish(&core.latency));
        sys.maybe_publish(&ctx, now);
        if ctx
            .shared
            .shutdown
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
    }
}
