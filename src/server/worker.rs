//! One core: a pinned thread running its own monoio runtime with its own
//! listener, mesh inbox, housekeeping tick and connections.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::Canceller;

use super::context::Ctx;
use super::listener::bind_reuseport;
use super::{connection, sys, Shared};
use crate::config::IoDriver;
use crate::router::{CloseReason, Core, Inbox, MeshMsg};

/// How often each core checks keep-alives and publishes its counters.
const TICK: Duration = Duration::from_millis(500);

/// Thread entry: pins, builds the runtime with the chosen driver, serves until
/// shutdown. Reports the bound address (or the error) on `bound`.
pub fn run(
    id: usize,
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
        let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build();
        match rt {
            Ok(mut rt) => {
                tracing::info!(core = id, driver = "io_uring", entries, "core started");
                return rt.block_on(serve(id, shared, inbox, bound));
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
            rt.block_on(serve(id, shared, inbox, bound));
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
    shared: Arc<Shared>,
    inbox: Inbox,
    bound: Sender<std::io::Result<SocketAddr>>,
) {
    let addr = SocketAddr::new(shared.config.bind, shared.config.port);
    let std_listener = match bind_reuseport(addr, 4096) {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let local = std_listener.local_addr();
    let listener = match monoio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let _ = bound.send(local);
    let core = Core::new(
        id,
        shared.config.cores,
        Arc::new(shared.config.limits.clone()),
        shared.config.shared_strategy,
    );
    let ctx = Rc::new(Ctx::new(id, core, shared));
    let stop = Canceller::new();
    let stop_handle = stop.handle();
    STOP.with(|s| *s.borrow_mut() = Some(stop));
    monoio::spawn(tick_loop(ctx.clone()));
    let mesh_task = monoio::spawn(mesh_loop(ctx.clone(), inbox));
    accept_loop(&ctx, &listener, stop_handle).await;
    drop(listener);
    let _ = mesh_task.await;
    close_all(&ctx).await;
}

async fn accept_loop(
    ctx: &Rc<Ctx>,
    listener: &monoio::net::TcpListener,
    stop: monoio::io::CancelHandle,
) {
    loop {
        match listener.cancelable_accept(stop.clone()).await {
            Ok((stream, peer)) => {
                ctx.core.borrow_mut().counters.connections_total += 1;
                monoio::spawn(connection::accept(ctx.clone(), stream, peer));
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

/// Drains this core's inbox whenever another core rings.
async fn mesh_loop(ctx: Rc<Ctx>, inbox: Inbox) {
    loop {
        inbox.doorbell.wait().await;
        while let Ok(batch) = inbox.rx.try_recv() {
            for msg in batch {
                let now = ctx.now();
                let rest = ctx.core.borrow_mut().handle_mesh(msg, now);
                match rest {
                    Some(MeshMsg::Handoff(h)) => {
                        monoio::spawn(connection::adopt(ctx.clone(), *h));
                    }
                    Some(MeshMsg::Shutdown) => {
                        begin_shutdown(&ctx);
                        ctx.apply_effects();
                        return;
                    }
                    _ => {}
                }
            }
        }
        ctx.apply_effects();
    }
}

/// Stops accepting (the accept loop sees the shutdown flag once its pending
/// accept is cancelled) and asks every connection to close.
fn begin_shutdown(ctx: &Rc<Ctx>) {
    STOP.with(|s| {
        if let Some(c) = s.borrow_mut().take() {
            c.cancel();
        }
    });
    for s in ctx.conns.borrow().values() {
        s.close(CloseReason::ServerShutdown);
    }
}

thread_local! {
    static STOP: std::cell::RefCell<Option<Canceller>> = const { std::cell::RefCell::new(None) };
}

async fn close_all(ctx: &Rc<Ctx>) {
    for _ in 0..300 {
        if ctx.conns.borrow().is_empty() {
            break;
        }
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    let counters = &ctx.core.borrow().counters;
    ctx.shared.counters[ctx.id].publish(counters);
}

/// Housekeeping: keep-alive expiry, QoS 2 state expiry, counters, `$SYS`.
async fn tick_loop(ctx: Rc<Ctx>) {
    let mut sys = sys::SysPublisher::new(&ctx);
    loop {
        monoio::time::sleep(TICK).await;
        let now = ctx.now();
        ctx.core.borrow_mut().tick(now);
        ctx.apply_effects();
        ctx.shared.counters[ctx.id].publish(&ctx.core.borrow().counters);
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
