//! One core's context, shared by its tasks through `Rc` (a core is one thread):
//! the routing core, the connections it serves, and the one place where the
//! core's outbox is carried out.

use std::cell::{Cell, Ref, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::busy_poll::BusyPoll;
use super::coalesce::Tick;
use super::durability::{Durability, Mark};
use super::edge::{self, RateLimit};
use super::log_gate::{ClientLogGate, LogGate};
use super::mesh::Parcel;
use super::parking::{Parking, QUIET_AFTER};
use super::Shared;
use crate::metrics::Counters;
use crate::router::{CloseReason, ConnId, Core, Notice, SessionKey};
use crate::time::Time;

/// How often a core retries sending to a full queue of another core.
const MESH_RETRY: Duration = Duration::from_micros(200);

/// What the drain point asks of a connection, whatever its byte stream.
pub trait Link {
    /// Its session has new bytes: make sure a writer runs.
    fn wake_writer(self: Rc<Self>, ctx: &Rc<Ctx>);
    /// End the connection (the reader acts on it).
    fn close(&self, reason: CloseReason);
    /// A reader paused for a SUBACK may go on.
    fn resume(&self);
    /// Whether the client sent nothing since `cutoff` and its reader may park.
    fn is_quiet_since(&self, cutoff: Time) -> bool;
    /// Park the reader if [`Link::is_quiet_since`] `cutoff`.
    fn park_if_quiet(&self, cutoff: Time);
    /// Spawn the parked reader's task again (the connection must close, or
    /// its socket could not be parked).
    fn wake_parked(self: Rc<Self>, ctx: &Rc<Ctx>);
    /// The parked socket is readable: take what came, answering an idle
    /// client's ping without the reader, else spawn the reader.
    fn take_ready_input(self: Rc<Self>, ctx: &Rc<Ctx>);
}

pub struct Ctx {
    pub id: usize,
    core: RefCell<Core>,
    pub shared: Arc<Shared>,
    links: RefCell<HashMap<ConnId, Rc<dyn Link>>>,
    /// Readers of quiet connections, parked without a task (`None` if this
    /// core could not make an epoll set: then no reader parks).
    parking: Option<Parking>,
    /// Per destination core, parcels its full queue did not take yet, in order.
    outgoing: RefCell<Vec<VecDeque<Parcel>>>,
    next_conn: Cell<u64>,
    flush_retry: Cell<bool>,
    /// The core's log grew enough to be compacted at the next tick.
    compact_due: Cell<bool>,
    /// With `persistence_fsync = "always"`: what is on disk where.
    durability: Option<Durability>,
    /// Per listener: this core's share of `max_connection_rate`.
    connection_rates: RefCell<Vec<Option<RateLimit>>>,
    /// Log lines for the edge's refusals (rate, per address), rate limited.
    refusal_logs: RefCell<[LogGate; 2]>,
    /// Log lines for the core's policy notices, per kind: per client and
    /// rate limited.
    notice_logs: RefCell<[ClientLogGate; 2]>,
    /// One gate per drop reason.
    drop_logs: RefCell<HashMap<&'static str, ClientLogGate>>,
    /// With `busy_poll_us`: this core polls for a while after input.
    busy_poll: Option<BusyPoll>,
    /// With `write_coalesce_ms`: the tick a connection's writer waits for
    /// after each write once its output keeps coming.
    write_tick: Option<Rc<Tick>>,
    /// With `read_coalesce_ms`: the tick a connection's reader waits for
    /// before each read once its input keeps coming (the same as the
    /// writers' when the periods are equal).
    read_tick: Option<Rc<Tick>>,
}

impl Ctx {
    pub fn new(id: usize, core: Core, shared: Arc<Shared>) -> Ctx {
        let cores = core.cores();
        let (read_tick, write_tick) = coalescing_ticks(&shared, id);
        Ctx {
            id,
            core: RefCell::new(core),
            links: RefCell::new(HashMap::new()),
            parking: Parking::new()
                .inspect_err(
                    |e| tracing::warn!(core = id, error = %e, "idle readers will not park"),
                )
                .ok(),
            outgoing: RefCell::new((0..cores).map(|_| VecDeque::new()).collect()),
            next_conn: Cell::new(0),
            flush_retry: Cell::new(false),
            compact_due: Cell::new(false),
            connection_rates: RefCell::new(connection_rates(&shared, cores)),
            refusal_logs: RefCell::default(),
            notice_logs: RefCell::default(),
            drop_logs: RefCell::default(),
            busy_poll: BusyPoll::new(shared.config.busy_poll_us),
            write_tick,
            read_tick,
            durability: shared
                .store
                .as_ref()
                .filter(|s| s.always())
                .map(|_| Durability::new(id, cores)),
            shared,
        }
    }

    /// The broker's monotonic clock (one base for all cores, so deadlines
    /// carried by messages mean the same everywhere): the `now` the pure core
    /// gets.
    pub fn now(&self) -> Time {
        Time::from_micros(self.shared.started.elapsed().as_micros() as u64)
    }

    /// The core's poller, when `busy_poll_us` is set.
    pub fn busy_poll(&self) -> Option<&BusyPoll> {
        self.busy_poll.as_ref()
    }

    /// The tick a streaming connection's writer waits for after each write
    /// (`write_coalesce_ms`), when set.
    pub fn write_tick(&self) -> Option<&Rc<Tick>> {
        self.write_tick.as_ref()
    }

    /// The tick a streaming connection's reader waits for before each read
    /// (`read_coalesce_ms`), when set.
    pub fn read_tick(&self) -> Option<&Rc<Tick>> {
        self.read_tick.as_ref()
    }

    /// A connection's read brought input (restarts a busy-poll window).
    pub fn note_input(&self) {
        if let Some(poll) = &self.busy_poll {
            poll.note_input();
        }
    }

    pub fn next_conn_id(&self) -> ConnId {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        (self.id as u64) << 48 | n
    }

    /// Every call into the core goes through here: runs `f`, then carries out
    /// what the core asked for in its outbox. No caller can forget the drain.
    pub fn with_core<R>(self: &Rc<Self>, f: impl FnOnce(&mut Core) -> R) -> R {
        let mut core = self.core.borrow_mut();
        let result = f(&mut core);
        if !core.outbox.is_empty() {
            self.drain(&mut core);
        }
        result
    }

    /// Writes the core's whole state as a snapshot into its log if the log
    /// grew enough since the last one (called from the tick).
    pub fn compact_if_due(self: &Rc<Self>) {
        let Some(store) = self.shared.store.as_ref() else {
            return;
        };
        if self.compact_due.replace(false) {
            let snapshot = self.with_core(|core| core.journal_snapshot());
            store.compact(self.id, snapshot);
        }
    }

    /// Bumps counters only: no routing happens, so there is nothing to drain.
    pub fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.core.borrow_mut().counters);
    }

    /// True while the connection waits for a barrier of the core (its SUBACK
    /// or a retained PUBLISH's PUBACK); see [`Link::resume`].
    pub fn is_paused(&self, key: SessionKey, conn: ConnId) -> bool {
        self.core.borrow().is_paused(key, conn)
    }

    /// True while a subscriber's full queue holds this publisher back.
    pub fn is_held_back(&self, key: SessionKey, conn: ConnId) -> bool {
        self.core.borrow().is_held_back(key, conn)
    }

    /// True when session `key` has nothing on its way to its client: no
    /// delivery waiting for an acknowledgement and none queued.
    pub fn has_nothing_in_flight(&self, key: SessionKey) -> bool {
        self.core
            .borrow()
            .session(key)
            .is_some_and(|s| s.inflight_len() == 0 && s.queued_len() == 0)
    }

    /// This core's counters, to publish.
    pub fn counters(&self) -> Ref<'_, Counters> {
        Ref::map(self.core.borrow(), |core| &core.counters)
    }

    pub fn add_link(&self, conn: ConnId, link: Rc<dyn Link>) {
        self.links.borrow_mut().insert(conn, link);
    }

    pub fn remove_link(&self, conn: ConnId) {
        self.links.borrow_mut().remove(&conn);
        if let Some(parking) = &self.parking {
            parking.forget(conn);
        }
    }

    pub fn has_links(&self) -> bool {
        !self.links.borrow().is_empty()
    }

    /// Asks every connection to close.
    pub fn close_all(self: &Rc<Self>, reason: CloseReason) {
        let links = self.links.borrow();
        for link in links.values() {
            link.close(reason);
        }
        let ids: Vec<ConnId> = links.keys().copied().collect();
        drop(links);
        for conn in ids {
            self.unpark(conn);
        }
    }

    /// Parks a quiet connection's reader until its socket is readable or
    /// [`Ctx::unpark`]; an error if it cannot (the reader then goes on).
    pub fn park(&self, conn: ConnId, socket: std::os::fd::RawFd) -> std::io::Result<()> {
        match &self.parking {
            Some(parking) => parking.park(conn, socket),
            None => Err(std::io::Error::other("this core parks no reader")),
        }
    }

    /// Whether this core parks quiet readers (it could make its epoll set).
    pub fn parks_readers(&self) -> bool {
        self.parking.is_some()
    }

    /// How many of this core's connections have a reader task (not parked).
    pub fn awake_readers(&self) -> usize {
        let parked = self.parking.as_ref().map_or(0, Parking::parked);
        self.links.borrow().len().saturating_sub(parked)
    }

    /// Spawns the reader of `conn` again if it is parked.
    pub fn unpark(self: &Rc<Self>, conn: ConnId) {
        if self.parking.as_ref().is_some_and(|p| p.unpark(conn)) {
            self.wake_parked(conn);
        }
    }

    /// Spawns the reader of `conn` again: it must close.
    fn wake_parked(self: &Rc<Self>, conn: ConnId) {
        let link = self.links.borrow().get(&conn).cloned();
        if let Some(link) = link {
            link.wake_parked(self);
        }
    }

    /// The parked socket of `conn` is readable (see [`Link::take_ready_input`]).
    pub fn take_ready_input(self: &Rc<Self>, conn: ConnId) {
        let link = self.links.borrow().get(&conn).cloned();
        if let Some(link) = link {
            link.take_ready_input(self);
        }
    }

    /// Fills `quiet` with the connections quiet for [`QUIET_AFTER`] at
    /// `now`, whose readers should park; returns the cutoff to ask them with
    /// (none without parking).
    pub fn quiet_connections(&self, now: Time, quiet: &mut Vec<ConnId>) -> Option<Time> {
        quiet.clear();
        self.parking.as_ref()?;
        let cutoff = now
            .as_millis()
            .checked_sub(QUIET_AFTER.as_millis() as u64)?;
        let cutoff = Time::from_millis(cutoff);
        let links = self.links.borrow();
        let asked = links.iter().filter(|(_, link)| link.is_quiet_since(cutoff));
        quiet.extend(asked.map(|(&conn, _)| conn));
        Some(cutoff)
    }

    /// Asks the readers of `conns` to park, each only if its client is still
    /// quiet since `cutoff` and still connected.
    pub fn ask_to_park(&self, conns: &[ConnId], cutoff: Time) {
        let links = self.links.borrow();
        for link in conns.iter().filter_map(|conn| links.get(conn)) {
            link.park_if_quiet(cutoff);
        }
    }

    /// The parking's epoll set (for `worker::parking_loop`) and how many
    /// readers are parked.
    pub fn parking(&self) -> Option<&Parking> {
        self.parking.as_ref()
    }

    /// Wakes writers, closes and resumes connections, and queues the batches
    /// for other cores. Nothing here calls back into the core.
    fn drain(self: &Rc<Self>, core: &mut Core) {
        let out = &mut core.outbox;
        if let Some(store) = self
            .shared
            .store
            .as_ref()
            .filter(|_| !out.journal.is_empty())
        {
            if store.append(self.id, out.journal.drain(..)) {
                self.compact_due.set(true);
            }
        }
        for notice in out.notices.drain(..) {
            self.log_notice(notice);
        }
        if !out.cluster.is_empty() {
            match &self.shared.cluster {
                Some(link) => link.send(self.id, out.cluster.drain(..)),
                None => out.cluster.clear(),
            }
        }
        let links = self.links.borrow();
        for conn in out.writable.drain(..) {
            if let Some(link) = links.get(&conn) {
                link.clone().wake_writer(self);
            }
        }
        let mut closed = Vec::new();
        for (conn, reason) in out.close.drain(..) {
            if let Some(link) = links.get(&conn) {
                link.close(reason);
                closed.push(conn);
            }
        }
        for conn in out.resume.drain(..) {
            if let Some(link) = links.get(&conn) {
                link.resume();
            }
        }
        drop(links);
        for conn in closed {
            self.unpark(conn);
        }
        let mut queued = false;
        let mut outgoing = self.outgoing.borrow_mut();
        for (dest, batch, weight) in out.take_weighed_batches() {
            let seq = self.durability.as_ref().map_or(0, |d| d.next_batch(dest));
            outgoing[dest].push_back(Parcel::Routing {
                from: self.id,
                seq,
                batch,
                weight,
            });
            queued = true;
        }
        drop(outgoing);
        if queued {
            self.send_outgoing();
        }
    }

    /// With `persistence_fsync = "always"`, what output of session `key`
    /// taken now must wait for: all of it when the session is persistent,
    /// or when its client sent QoS 1/2 publishes (`acks_publishes`), whose
    /// acknowledgements it carries. `None`: write at once.
    pub fn output_mark(&self, key: SessionKey, acks_publishes: bool) -> Option<Mark> {
        let durability = self.durability.as_ref()?;
        if !acks_publishes && !self.core.borrow().is_journaled(key) {
            return None;
        }
        let store = self.shared.store.as_ref()?;
        Some(durability.mark(store.last_lsn(self.id)))
    }

    /// True with `persistence_fsync = "always"`.
    pub fn tracks_durability(&self) -> bool {
        self.durability.is_some()
    }

    /// Waits until everything `mark` depends on is on disk.
    pub async fn wait_durable(&self, mark: &Mark) {
        let (Some(durability), Some(store)) = (&self.durability, &self.shared.store) else {
            return;
        };
        let durable = || durability.is_durable(mark, store.synced(self.id));
        if !durable() {
            self.count(|c| c.durable_waits += 1);
            durability.wait(durable).await;
        }
    }

    /// Routing batches from other cores were handled (and what they caused
    /// appended to the log): they are confirmed once it is synced.
    pub fn handled_batches(self: &Rc<Self>, batches: &[(usize, u64)]) {
        let (Some(durability), Some(store)) = (&self.durability, &self.shared.store) else {
            return;
        };
        let lsn = store.last_lsn(self.id);
        for &(from, seq) in batches {
            durability.handled(from, seq, lsn);
        }
    }

    /// Another core confirmed batches this core sent it as durable.
    pub fn batches_durable(&self, from: usize, seq: u64) {
        if let Some(durability) = &self.durability {
            durability.confirmed(from, seq);
        }
    }

    /// After the log synced or confirmations came: confirms to other cores
    /// the batches now on disk here, and lets waiting writers look again.
    pub fn durability_advanced(self: &Rc<Self>) {
        let (Some(durability), Some(store)) = (&self.durability, &self.shared.store) else {
            return;
        };
        for (core, seq) in durability.due_confirmations(store.synced(self.id)) {
            let from = self.id;
            self.send_to(core, Parcel::Durable { from, seq });
        }
        durability.wake_all();
    }

    /// Logs a policy event: the first for each client (the publisher held,
    /// the consumer disconnected), then rarely, with how many were not
    /// logged, so that an overload cannot fill a disk.
    fn log_notice(&self, notice: Notice) {
        let now = std::time::Instant::now();
        let (kind, client) = match &notice {
            Notice::HoldStarted { publisher, .. } => (0, publisher),
            Notice::SlowConsumer { client } => (1, client),
            Notice::Dropped { client, reason } => return self.log_drop(client, reason, now),
        };
        let Some(not_logged) = self.notice_logs.borrow_mut()[kind].pass(client, now) else {
            return;
        };
        match notice {
            Notice::HoldStarted {
                subscriber,
                publisher,
            } => tracing::warn!(
                subscriber = &*subscriber,
                publisher = &*publisher,
                not_logged,
                "back-pressure: the subscriber's queue is full; its publisher is not read until it drains"
            ),
            Notice::SlowConsumer { client } => tracing::warn!(
                client_id = &*client,
                not_logged,
                "slow consumer: held its publishers back for max_stall without reading; disconnecting"
            ),
            Notice::Dropped { .. } => {}
        }
    }

    /// A client's deliveries were dropped for `reason`: logged once per
    /// client and reason, then rarely (the count is in the metrics). QoS 0
    /// for an offline session is Mosquitto's default policy, so info; the
    /// others mean a limit was reached.
    fn log_drop(&self, client: &Arc<str>, reason: &'static str, now: std::time::Instant) {
        let mut gates = self.drop_logs.borrow_mut();
        let Some(not_logged) = gates.entry(reason).or_default().pass(client, now) else {
            return;
        };
        let message =
            "dropping deliveries to this client (counted in ringmq_messages_dropped_total)";
        match reason {
            "offline_qos0" | "expired" => {
                tracing::info!(client_id = &**client, reason, not_logged, "{message}")
            }
            _ => tracing::warn!(client_id = &**client, reason, not_logged, "{message}"),
        }
    }

    /// Takes a token of this core's share of listener `listener`'s
    /// `max_connection_rate`.
    pub fn allow_connection(&self, listener: usize) -> bool {
        match &mut self.connection_rates.borrow_mut()[listener] {
            Some(rate) => rate.allow(std::time::Instant::now()),
            None => true,
        }
    }

    /// Whether a refused CONNECT is logged: the edge's refusals (a flood of
    /// them) at most once per period, with how many were not; others always.
    pub fn may_log_refusal(&self, rule: &str) -> Option<u64> {
        let gate = match rule {
            edge::RATE_RULE => 0,
            edge::PER_IP_RULE => 1,
            _ => return Some(0),
        };
        self.refusal_logs.borrow_mut()[gate].pass(std::time::Instant::now())
    }

    /// Queues a parcel for another core and sends what its queue takes.
    pub fn send_to(self: &Rc<Self>, core: usize, parcel: Parcel) {
        self.outgoing.borrow_mut()[core].push_back(parcel);
        self.send_outgoing();
    }

    /// Sends queued parcels in order; false when a destination queue is full.
    fn try_send_outgoing(&self) -> bool {
        let mesh = &self.shared.mesh;
        let mut all_sent = true;
        for (dest, queue) in self.outgoing.borrow_mut().iter_mut().enumerate() {
            while let Some(parcel) = queue.pop_front() {
                if let Err(parcel) = mesh.try_send(dest, parcel) {
                    queue.push_front(parcel);
                    all_sent = false;
                    break;
                }
            }
        }
        all_sent
    }

    fn send_outgoing(self: &Rc<Self>) {
        if !self.try_send_outgoing() {
            self.schedule_retry();
        }
    }

    /// A destination queue was full: retry from a task of its own, so the mesh
    /// task never blocks (two cores waiting on each other would deadlock).
    fn schedule_retry(self: &Rc<Self>) {
        if self.flush_retry.replace(true) {
            return;
        }
        let ctx = self.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(MESH_RETRY).await;
                if ctx.try_send_outgoing() {
                    break;
                }
            }
            ctx.flush_retry.set(false);
        });
    }

    /// True while parcels wait for a full queue of another core.
    pub fn mesh_backlog(&self) -> bool {
        self.outgoing.borrow().iter().any(|q| !q.is_empty())
    }

    /// Back-pressure for publishers: wait until the parcels for other cores
    /// are on their way.
    pub async fn wait_mesh_drained(&self) {
        while self.mesh_backlog() {
            self.count(|c| c.mesh_full_waits += 1);
            monoio::time::sleep(MESH_RETRY).await;
            if self.try_send_outgoing() {
                return;
            }
        }
    }
}

/// Each core's share of every listener's `max_connection_rate` (none when 0).
fn connection_rates(shared: &Shared, cores: usize) -> Vec<Option<RateLimit>> {
    let rate = shared.config.limits.max_connection_rate;
    let now = std::time::Instant::now();
    shared
        .listeners
        .iter()
        .map(|_| (rate > 0).then(|| RateLimit::new(f64::from(rate) / cores as f64, now)))
        .collect()
}

/// The core's reading and writing ticks (`read_coalesce_ms`,
/// `write_coalesce_ms`): one tick when the periods are equal, so that a
/// core's waiting readers and writers go in the same turn.
fn coalescing_ticks(shared: &Shared, core: usize) -> (Option<Rc<Tick>>, Option<Rc<Tick>>) {
    let io_uring = shared.drivers[core].get() == Some(&"io_uring");
    let tick = |ms: u32| (ms > 0).then(|| Tick::new(Duration::from_millis(ms.into()), io_uring));
    let (read_ms, write_ms) = (
        shared.config.read_coalesce_ms,
        shared.config.write_coalesce_ms,
    );
    let write = tick(write_ms);
    let read = match &write {
        Some(w) if read_ms == write_ms => Some(w.clone()),
        _ => tick(read_ms),
    };
    (read, write)
}
