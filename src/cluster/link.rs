//! The link's tasks on its thread: publishing what the cores send, one NATS
//! subscription per filter the node holds (each read by a task that hands
//! what arrives to the interested cores, in order) and per shared group it
//! has members of (in the group's queue group, on a second connection), and
//! the subscription to every retained update.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use ringmq_proto::durable::Epoch;
use ringmq_proto::message::Message;
use ringmq_proto::router::{owner_core, CoreSet};
use ringmq_proto::topic::subject::{filter_subject, queue_name, topic_subject};
use ringmq_proto::topic::{SharedFilter, TopicFilter};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{retained, sessions, wire, Drop, Handle, Outgoing};
use crate::config::Cluster;
use crate::server::mesh::{Mesh, Parcel};

/// Messages a subscription's task hands the cores in one parcel at most.
const BATCH: usize = 64;

/// How long a task waits before offering a parcel again to a full core.
const CORE_FULL_RETRY: Duration = Duration::from_millis(1);

/// Messages the NATS client buffers per subscription before it drops (and
/// reports a slow consumer): the bound on what a link whose cores are full
/// holds.
const SUBSCRIPTION_CAPACITY: usize = 8192;

/// How long the link waits for JetStream's answer at start.
pub(super) const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Subject and control line room NATS gives by default (`max_control_line`
/// is 4096 bytes); a longer subject would make the server close the link.
const MAX_SUBJECT: usize = 4000;

/// Everything the link's tasks need.
pub(super) struct Plan {
    /// This node's name, as the other nodes know it.
    pub servers: Vec<String>,
    pub node: String,
    pub prefix: String,
    pub mesh: Arc<Mesh>,
    pub handle: Arc<Handle>,
    pub epoch: Epoch,
    pub jetstream_replicas: usize,
}

/// The Unix time at which the broker clock (`Shared::started`) read zero.
pub(super) fn epoch(started: Instant) -> Epoch {
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Epoch(unix_now.saturating_sub(started.elapsed().as_millis() as u64))
}

/// The NATS client's settings: reconnecting forever, connection events
/// counted and logged. The main connection has echo off (a node never hears
/// its own messages); the one for shared groups (`cores`: the mesh, to tell
/// the cores whether it is up) has it on, since a node's own members are
/// among those NATS picks from.
pub(super) fn options(
    cluster: &Cluster,
    handle: Arc<Handle>,
    cores: Option<Arc<Mesh>>,
) -> anyhow::Result<async_nats::ConnectOptions> {
    let shared = cores.is_some();
    let mut options = async_nats::ConnectOptions::new()
        .name(match shared {
            false => format!("ringmq {}", cluster.node_name),
            true => format!("ringmq {} shared", cluster.node_name),
        })
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let (handle, cores) = (handle.clone(), cores.clone());
            async move {
                match cores {
                    Some(mesh) => on_shared_event(&handle, &mesh, event).await,
                    None => on_event(&handle, event),
                }
            }
        });
    if !shared {
        options = options.no_echo();
    }
    if let (Some(user), Some(password)) = (&cluster.username, &cluster.password) {
        options = options.user_and_password(user.clone(), password.0.clone());
    }
    if let Some(token) = &cluster.token {
        options = options.token(token.0.clone());
    }
    if let Some(cafile) = &cluster.cafile {
        if !cafile.is_file() {
            anyhow::bail!(
                "[cluster] cafile {} is not a readable file",
                cafile.display()
            );
        }
        options = options.add_root_certificates(cafile.clone());
    }
    Ok(options.require_tls(cluster.tls))
}

fn on_event(handle: &Handle, event: async_nats::Event) {
    let stats = &handle.stats;
    match event {
        async_nats::Event::Connected => {
            stats.up.store(true, Ordering::Relaxed);
            stats.connects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("cluster link connected to NATS");
        }
        async_nats::Event::Disconnected => {
            stats.up.store(false, Ordering::Relaxed);
            tracing::warn!("cluster link lost NATS; reconnecting (messages for other nodes may be lost meanwhile)");
        }
        async_nats::Event::SlowConsumer(sid) => {
            stats.slow_consumer.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sid, "cluster link too slow for a NATS subscription; NATS dropped messages for this node");
        }
        other => tracing::warn!(event = %other, "cluster link"),
    }
}

/// The shared groups' connection: while it is up, the cores hand their
/// shared groups' messages to NATS's queue groups; while not, to their own
/// members, as a lone node does.
async fn on_shared_event(handle: &Handle, mesh: &Mesh, event: async_nats::Event) {
    let stats = &handle.stats;
    let up = match event {
        async_nats::Event::Connected => true,
        async_nats::Event::Disconnected => false,
        async_nats::Event::SlowConsumer(_) => {
            stats.slow_consumer.fetch_add(1, Ordering::Relaxed);
            return;
        }
        _ => return,
    };
    stats.shared_up.store(up, Ordering::Relaxed);
    for core in 0..mesh.cores() {
        hand_to_core(mesh, core, Parcel::ClusterSharing(up)).await;
    }
}

/// The subject spaces under the configured prefix.
struct Subjects {
    live: String,
    retained: String,
    /// The writer of retained updates (see `retained::write_retained`).
    retained_writer: mpsc::Sender<(String, Bytes)>,
}

/// What one NATS subscription of the node brings: a filter's messages (for
/// every core that holds the filter) or a shared group's (for one core).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Filter(TopicFilter),
    Share(SharedFilter),
}

/// The NATS subscription of one target (read by its task) and the cores
/// that want what it brings.
struct Sub {
    cores: Rc<Cell<CoreSet>>,
    task: Option<JoinHandle<()>>,
}

/// The two connections: echo off for filters, on for shared groups.
struct Clients {
    main: async_nats::Client,
    shared: async_nats::Client,
}

pub(super) async fn run(
    plan: Plan,
    options: [async_nats::ConnectOptions; 2],
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut stop: watch::Receiver<bool>,
    restored: Vec<Arc<str>>,
) {
    let servers: Vec<&str> = plan.servers.iter().map(String::as_str).collect();
    let [main, shared] = options;
    let connected = async {
        let main = main.connect(servers.as_slice()).await?;
        let shared = shared.connect(servers.as_slice()).await?;
        Ok::<_, async_nats::ConnectError>(Clients { main, shared })
    };
    let clients = match connected.await {
        Ok(clients) => clients,
        Err(e) => {
            tracing::error!(error = %e, node = plan.node, "cluster link cannot start; this node serves its own clients only");
            return;
        }
    };
    let plan = Rc::new(plan);
    let (retained_writer, updates) = mpsc::channel(retained::QUEUE);
    let subjects = Subjects {
        live: format!("{}.m", plan.prefix),
        retained: format!("{}.r", plan.prefix),
        retained_writer,
    };
    let writer = retained::write_retained(clients.main.clone(), plan.clone(), updates);
    let writer = tokio::task::spawn_local(writer);
    let replicas = tokio::task::spawn_local(retained::follow_retained(
        clients.main.clone(),
        format!("{}.>", subjects.retained),
        plan.clone(),
    ));
    let sessions = Rc::new(sessions::Sessions::new(clients.main.clone(), plan.clone()));
    let releases = tokio::task::spawn_local(sessions::serve_releases(sessions.clone()));
    let merges = tokio::task::spawn_local(sessions::serve_merges(sessions.clone()));
    let bucket = tokio::task::spawn_local(sessions::open_owners(sessions.clone()));
    let records = tokio::task::spawn_local(sessions::write_records(sessions.clone()));
    tokio::task::spawn_local(sessions::hand_back(sessions.clone(), restored));
    let mut subs: HashMap<Target, Sub> = HashMap::new();
    loop {
        let item = tokio::select! {
            biased;
            _ = stop.changed() => break,
            item = rx.recv() => item,
        };
        let (core, target, add) = match item {
            None => break,
            Some(Outgoing::Publish(msgs)) => {
                publish(&clients.main, &subjects, &plan, msgs).await;
                continue;
            }
            Some(Outgoing::Interest { core, filter, add }) => (core, Target::Filter(filter), add),
            Some(Outgoing::SharedInterest { core, share, add }) => {
                (core, Target::Share(share), add)
            }
            Some(Outgoing::Session {
                client_id,
                meta,
                connected,
            }) => {
                let record = meta.map(|meta| sessions::Recorded { meta, connected });
                sessions.note(client_id, record);
                continue;
            }
            Some(Outgoing::Claim {
                client_id,
                clean,
                reply,
            }) => {
                let settle = sessions::claim(sessions.clone(), client_id, clean);
                let mesh = plan.mesh.clone();
                tokio::task::spawn_local(async move {
                    // The connect gave up waiting (connect_timeout), but
                    // this node owns the session now: it keeps it, offline.
                    if let Err(Some(image)) = reply.send(settle.await) {
                        let owner = owner_core(&image.client_id, mesh.cores());
                        hand_to_core(&mesh, owner, Parcel::ClusterAdopt(Box::new(image))).await;
                    }
                });
                continue;
            }
        };
        interest(&clients, &subjects, &plan, &mut subs, core, target, add).await;
    }
    // What the cores handed over before the stop still goes out.
    let deadline = tokio::time::sleep(super::STOP_GRACE);
    tokio::pin!(deadline);
    while let Ok(item) = rx.try_recv() {
        if let Outgoing::Publish(msgs) = item {
            tokio::select! {
                _ = &mut deadline => break,
                _ = publish(&clients.main, &subjects, &plan, msgs) => {}
            }
        }
    }
    let _ = tokio::time::timeout(super::STOP_GRACE, clients.main.flush()).await;
    replicas.abort();
    writer.abort();
    releases.abort();
    merges.abort();
    bucket.abort();
    records.abort();
    for (_, sub) in subs.drain() {
        sub.task.iter().for_each(JoinHandle::abort);
    }
}

/// Publishes each message once under its live subject, and a retained one
/// also under its retained subject.
async fn publish(
    client: &async_nats::Client,
    subjects: &Subjects,
    plan: &Plan,
    msgs: Vec<Arc<Message>>,
) {
    let stats = &plan.handle.stats;
    for msg in msgs {
        let body = wire::encode(&msg, plan.epoch);
        let topic = msg.topic.as_str();
        let live = topic_subject(&subjects.live, topic);
        // Unknown (0) until the first connection; the client checks it then.
        let max_payload = client.server_info().max_payload;
        // The retained subject is as long as the live one (`.r` for `.m`).
        let too_large = live.len() > MAX_SUBJECT || (max_payload > 0 && body.len() > max_payload);
        if too_large {
            stats.drop_one(Drop::TooLarge);
        } else {
            if msg.retain {
                let update = (topic_subject(&subjects.retained, topic), body.clone());
                if subjects.retained_writer.try_send(update).is_err() {
                    stats.drop_one(Drop::LinkFull);
                }
            }
            let sent = client.publish(live, body).await.is_ok();
            match sent {
                true => stats.published.fetch_add(1, Ordering::Relaxed),
                false => stats.dropped[Drop::Failed as usize].fetch_add(1, Ordering::Relaxed),
            };
        }
        plan.handle.release(msg.weight());
    }
}

/// Applies one core's interest change: the first core to want a target
/// subscribes to its subject (a shared group's in its queue group), the
/// last to give it up unsubscribes.
async fn interest(
    clients: &Clients,
    subjects: &Subjects,
    plan: &Rc<Plan>,
    subs: &mut HashMap<Target, Sub>,
    core: usize,
    target: Target,
    add: bool,
) {
    let stats = &plan.handle.stats;
    if let Some(sub) = subs.get_mut(&target) {
        let mut cores = sub.cores.get();
        match add {
            true => cores.insert(core),
            false => cores.remove(core),
        }
        sub.cores.set(cores);
        if cores.is_empty() {
            if let Some(task) = subs.remove(&target).and_then(|sub| sub.task) {
                stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
                // Its subscription unsubscribes as the task drops it.
                task.abort();
            }
        }
        return;
    }
    if !add {
        return;
    }
    let mut cores = CoreSet::default();
    cores.insert(core);
    let cores = Rc::new(Cell::new(cores));
    let (filter, queue) = match &target {
        Target::Filter(filter) => (filter, None),
        Target::Share(share) => (share.filter(), Some(queue_name(share.group()))),
    };
    let subject = filter_subject(&subjects.live, filter.as_str());
    let subscribed = match queue {
        _ if subject.len() > MAX_SUBJECT => {
            tracing::warn!(%filter, "filter too long for a NATS subject: other nodes' messages will not reach it");
            None
        }
        None => Some(clients.main.subscribe(subject).await),
        Some(queue) => Some(clients.shared.queue_subscribe(subject, queue).await),
    };
    let task = match subscribed {
        Some(Ok(sub)) => {
            stats.subscriptions.fetch_add(1, Ordering::Relaxed);
            let forward = forward(sub, target.clone(), cores.clone(), plan.clone());
            Some(tokio::task::spawn_local(forward))
        }
        Some(Err(e)) => {
            tracing::error!(%filter, error = %e, "cluster link could not subscribe");
            None
        }
        None => None,
    };
    subs.insert(target, Sub { cores, task });
}

/// Reads one subscription and hands each batch on, waiting while a core's
/// queue is full: a filter's to every core that holds it, a shared group's
/// to one core with members (in turn), which picks the member.
async fn forward(
    mut sub: async_nats::Subscriber,
    target: Target,
    cores: Rc<Cell<CoreSet>>,
    plan: Rc<Plan>,
) {
    let mut turn = 0;
    while let Some(first) = sub.next().await {
        let mut bodies = vec![first.payload];
        while bodies.len() < BATCH {
            match sub.next().now_or_never() {
                Some(Some(m)) => bodies.push(m.payload),
                _ => break,
            }
        }
        let msgs = decode_all(&plan, bodies);
        if msgs.is_empty() {
            continue;
        }
        let set = cores.get();
        match &target {
            Target::Filter(filter) => {
                for core in set.iter() {
                    let filter = filter.clone();
                    let msgs = msgs.clone();
                    hand_to_core(&plan.mesh, core, Parcel::Cluster { filter, msgs }).await;
                }
            }
            Target::Share(share) => {
                let holders: Vec<usize> = set.iter().collect();
                if let Some(&core) = holders.get(turn % holders.len().max(1)) {
                    turn += 1;
                    let share = share.clone();
                    hand_to_core(&plan.mesh, core, Parcel::ClusterShared { share, msgs }).await;
                }
            }
        }
    }
}

pub(super) fn decode_all(plan: &Plan, bodies: Vec<Bytes>) -> Vec<Arc<Message>> {
    let stats = &plan.handle.stats;
    stats
        .received
        .fetch_add(bodies.len() as u64, Ordering::Relaxed);
    bodies
        .into_iter()
        .filter_map(|body| match wire::decode(body, plan.epoch) {
            Ok(msg) => Some(Arc::new(msg)),
            Err(e) => {
                if stats.invalid.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(error = %e, "cluster link got a body that is not a ringmq message (told once)");
                }
                None
            }
        })
        .collect()
}

pub(super) async fn hand_to_core(mesh: &Mesh, core: usize, mut parcel: Parcel) {
    while let Err(back) = mesh.try_send(core, parcel) {
        parcel = back;
        tokio::time::sleep(CORE_FULL_RETRY).await;
    }
}
