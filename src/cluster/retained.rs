//! Retained messages across nodes: every node publishes its retained
//! updates to a subject space that JetStream keeps as a stream of the last
//! message per topic, and follows that stream into its own retained store.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::push::Messages;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use futures::StreamExt as _;
use ringmq_proto::router::owner_core;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::link::{decode_all, hand_to_core, Plan, JETSTREAM_TIMEOUT};
use super::sessions::node_subject;
use super::Drop;
use crate::server::mesh::Parcel;

/// How often a link without JetStream for retained messages tries again.
const RETAINED_RETRY: Duration = Duration::from_secs(5);

/// How often a node checks that its consumer of the retained stream keeps
/// up with the stream.
const STALL_CHECK: Duration = Duration::from_secs(3);

/// How often the consumer's server says it is there while it has nothing
/// to deliver.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Heartbeats missed in a row (two each time the client tells) before the
/// consumer is given up and made anew: more than a consumer that lost its
/// leader with a server takes to elect another (JetStream's elections take
/// up to about 10 s).
const MISSED_HEARTBEATS: u32 = 8;

/// How long making this node's consumer may take: its copies elect a
/// leader first, which takes seconds when one of their servers is down.
const CONSUMER_PATIENCE: Duration = Duration::from_secs(8);

/// How long a node's consumer outlives the node (one that never returns).
const CONSUMER_LINGER: Duration = Duration::from_secs(3600);

/// Stall checks JetStream may leave unanswered in a row before the stream
/// is followed anew (live only meanwhile, if it still does not answer).
const UNANSWERED_CHECKS: u32 = 3;

/// Retained updates sent to JetStream and not yet acknowledged, at most.
const WINDOW: usize = 256;

/// How long an update JetStream did not take is sent again before it is
/// given up (and counted as failed): a stream that lost a server elects a
/// new leader within seconds.
const RESEND_PATIENCE: Duration = Duration::from_secs(10);

/// Retained updates waiting for the writer, at most (past it, dropped and
/// counted as `link_full`).
pub(super) const QUEUE: usize = 16 * 1024;

/// Applies every node's retained updates on this node (on each topic's
/// owner core, which orders them for all cores). With JetStream, from a
/// stream that keeps the last update of every topic: a node that starts
/// later (or was away) first gets every retained message set meanwhile,
/// then the updates as they come, all nodes in the stream's one order.
/// While JetStream does not answer (none, or a JetStream cluster electing
/// a leader), live updates only, and JetStream is tried again every
/// [`RETAINED_RETRY`].
pub(super) async fn follow_retained(client: async_nats::Client, subject: String, plan: Rc<Plan>) {
    let stats = &plan.handle.stats;
    let mut live: Option<JoinHandle<()>> = None;
    let mut told = false;
    loop {
        match retained_stream(&client, &subject, &plan).await {
            Ok((stream, updates, delivered)) => {
                if let Some(task) = live.take() {
                    task.abort();
                }
                tracing::info!("cluster link follows retained messages in JetStream");
                stats.retained_stream.store(true, Ordering::Relaxed);
                stats.retained_jetstream.store(true, Ordering::Relaxed);
                count_following(&plan);
                apply_stream(&plan, &stream, updates, delivered).await;
                // Follow the stream anew, from the last update of each
                // topic (applying one again changes nothing).
                stats.retained_stream.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if !told {
                    tracing::warn!(error = %e, "JetStream unavailable: retained messages follow the nodes that are up (a node that starts later misses those set before) until it answers");
                    told = true;
                }
                if live.is_none() {
                    let task = follow_live(client.clone(), subject.clone(), plan.clone());
                    live = Some(tokio::task::spawn_local(task));
                }
            }
        }
        tokio::time::sleep(RETAINED_RETRY).await;
    }
}

/// Applies the stream's updates until the consumer skips one (a delivery
/// lost while NATS reconnected), misses its heartbeats, stops or stalls:
/// the stream holds updates it does not deliver over two checks in a row,
/// or JetStream does not say over [`UNANSWERED_CHECKS`] checks in a row.
/// Following anew from the last update of each topic then loses nothing.
/// `delivered`: the consumer's deliveries before (none, unless it could not
/// be made anew).
async fn apply_stream(
    plan: &Plan,
    stream: &jetstream::stream::Stream,
    mut updates: Messages,
    mut delivered: u64,
) {
    let mut applied = 0u64;
    let mut missed = 0;
    let mut missed_at = tokio::time::Instant::now();
    let mut check = tokio::time::interval(STALL_CHECK);
    let mut behind_at: Option<u64> = None;
    let mut unanswered = 0;
    loop {
        tokio::select! {
            update = updates.next() => match update {
                Some(Ok(update)) => {
                    let Ok(info) = update.info() else {
                        continue;
                    };
                    // Lower after a new consumer leader delivers again
                    // from its last replicated state: applied again, in order.
                    if info.consumer_sequence > delivered + 1 {
                        tracing::warn!(delivered, next = info.consumer_sequence, "cluster link's retained consumer skipped updates; following the stream again");
                        return;
                    }
                    delivered = info.consumer_sequence;
                    missed = 0;
                    applied = applied.max(info.stream_sequence);
                    apply_retained(plan, update.message.payload).await;
                }
                Some(Err(e)) => {
                    // Missed heartbeats (the client's only error here), in
                    // a row unless the last miss is older than a few.
                    if missed_at.elapsed() > HEARTBEAT * 3 {
                        missed = 0;
                    }
                    missed_at = tokio::time::Instant::now();
                    missed += 2;
                    if missed >= MISSED_HEARTBEATS {
                        tracing::warn!(error = %e, "cluster link's retained consumer is gone; following the stream again");
                        return;
                    }
                }
                None => {
                    tracing::warn!("cluster link lost the retained messages' consumer; following the stream again");
                    return;
                }
            },
            _ = check.tick() => {
                let Ok(info) = stream.get_info().await else {
                    unanswered += 1;
                    if unanswered >= UNANSWERED_CHECKS {
                        tracing::warn!("JetStream does not answer about the retained messages' stream; following it again");
                        return;
                    }
                    continue;
                };
                unanswered = 0;
                let last = info.state.last_sequence;
                match behind_at {
                    Some(seen) if last > applied && applied <= seen => {
                        tracing::warn!(applied, last, "cluster link's retained consumer stalled; following the stream again");
                        return;
                    }
                    _ if last > applied => behind_at = Some(applied),
                    _ => behind_at = None,
                }
            }
        }
    }
}

/// Retained updates as other nodes publish them, without JetStream.
async fn follow_live(client: async_nats::Client, subject: String, plan: Rc<Plan>) {
    let mut sub = match client.subscribe(subject).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!(error = %e, "cluster link could not follow retained messages");
            return;
        }
    };
    count_following(&plan);
    while let Some(update) = sub.next().await {
        apply_retained(&plan, update.payload).await;
    }
}

/// The first time retained updates are followed (live or from the
/// stream), the subscription counts: one for the node's whole life.
fn count_following(plan: &Plan) {
    let stats = &plan.handle.stats;
    if !stats.retained_following.swap(true, Ordering::Relaxed) {
        stats.subscriptions.fetch_add(1, Ordering::Relaxed);
    }
}

/// The retained messages' stream (made if missing; every node asks for the
/// same one) and this node's consumer of it, made anew from the last update
/// of each topic. The consumer is durable with as many copies as the
/// stream, so that losing a server leaves it a leader: an ephemeral one has
/// one copy, which nats-server before 2.12 may place on a server that is
/// down (its creation then never completes).
async fn retained_stream(
    client: &async_nats::Client,
    subject: &str,
    plan: &Plan,
) -> anyhow::Result<(jetstream::stream::Stream, Messages, u64)> {
    use async_nats::jetstream::{consumer, stream};
    let mut js = jetstream::new(client.clone());
    // A NATS cluster without JetStream does not answer at all (a lone
    // server says "no responders" at once): give up soon, then go live only.
    js.set_timeout(JETSTREAM_TIMEOUT);
    let config = stream::Config {
        name: format!("{}_retained", plan.prefix.replace('.', "_")),
        subjects: vec![subject.to_owned()],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        num_replicas: plan.jetstream_replicas,
        ..Default::default()
    };
    let stream = match js.get_or_create_stream(config.clone()).await {
        Ok(stream) => stream,
        // Two nodes starting at once may both try to make it: the second finds it.
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::CreateStreamErrorKind::JetStream(_)
            ) =>
        {
            js.get_or_create_stream(config).await?
        }
        Err(e) => return Err(e.into()),
    };
    let consumer = match durable_consumer(client, plan, &stream, subject).await {
        Ok(consumer) => consumer,
        Err(e) => {
            tracing::info!(error = %e, "cluster link's replicated consumer of the retained stream could not be made; following it with a single-copy one meanwhile");
            let config = consumer::push::Config {
                deliver_subject: client.new_inbox(),
                ..consumer_config(subject)
            };
            stream.create_consumer(config).await?
        }
    };
    let delivered = consumer.cached_info().delivered.consumer_sequence;
    Ok((stream, consumer.messages().await?, delivered))
}

/// This node's durable consumer of the retained stream, made anew from the
/// last update of each topic, with as many copies as the stream (nats-server
/// 2.9 does not always complete it while one of its servers is down).
async fn durable_consumer(
    client: &async_nats::Client,
    plan: &Plan,
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> anyhow::Result<jetstream::consumer::PushConsumer> {
    let stream_name = &stream.cached_info().config.name;
    let name: String = plan.node.bytes().map(|b| format!("{b:02x}")).collect();
    let name = format!("node_{name}");
    let mut patient = jetstream::new(client.clone());
    patient.set_timeout(CONSUMER_PATIENCE);
    // Anew: an existing one (this node's, before a restart or a stall)
    // would go on from where it was.
    if stream.consumer_info(&name).await.is_ok() {
        let _ = patient
            .delete_consumer_from_stream(&name, stream_name)
            .await;
    }
    let config = jetstream::consumer::push::Config {
        durable_name: Some(name),
        deliver_subject: node_subject(&plan.prefix, &plan.node, "retained"),
        num_replicas: plan.jetstream_replicas,
        inactive_threshold: CONSUMER_LINGER,
        ..consumer_config(subject)
    };
    Ok(patient
        .create_consumer_on_stream(config, stream_name)
        .await?)
}

/// Every update of `subject` from the last of each topic, unacknowledged.
fn consumer_config(subject: &str) -> jetstream::consumer::push::Config {
    use jetstream::consumer::{AckPolicy, DeliverPolicy};
    jetstream::consumer::push::Config {
        deliver_policy: DeliverPolicy::LastPerSubject,
        ack_policy: AckPolicy::None,
        filter_subject: subject.to_owned(),
        flow_control: true,
        idle_heartbeat: HEARTBEAT,
        ..Default::default()
    }
}

async fn apply_retained(plan: &Plan, body: Bytes) {
    let cores = plan.mesh.cores();
    for msg in decode_all(plan, vec![body]) {
        let owner = owner_core(msg.topic.as_str(), cores);
        hand_to_core(&plan.mesh, owner, Parcel::ClusterRetain(msg)).await;
    }
}

/// One update sent to JetStream: its acknowledgement to come (`None`: the
/// send itself failed).
struct Sent {
    seq: u64,
    subject: String,
    body: Bytes,
    ack: Option<PublishAckFuture>,
}

/// Publishes this node's retained updates: with JetStream's
/// acknowledgement while JetStream takes them (whether or not this node's
/// consumer of the stream is up at the moment), so that an update the
/// stream did not take (it was electing a new leader after losing a server)
/// is sent again, unless a later update of its topic went after it; plainly
/// while there is no stream. Up to [`WINDOW`] await their acknowledgements
/// at once.
pub(super) async fn write_retained(
    client: async_nats::Client,
    plan: Rc<Plan>,
    mut rx: mpsc::Receiver<(String, Bytes)>,
) {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(JETSTREAM_TIMEOUT);
    let stats = &plan.handle.stats;
    let mut window: VecDeque<Sent> = VecDeque::new();
    let mut latest: HashMap<String, u64> = HashMap::new();
    let mut seq = 0u64;
    loop {
        let next = match window.len() {
            0 => match rx.recv().await {
                Some(next) => Some(next),
                None => return,
            },
            n if n < WINDOW => rx.try_recv().ok(),
            _ => None,
        };
        if let Some((subject, body)) = next {
            if !stats.retained_jetstream.load(Ordering::Relaxed) {
                if client.publish(subject, body).await.is_err() {
                    stats.drop_one(Drop::Failed);
                }
                continue;
            }
            seq += 1;
            latest.insert(subject.clone(), seq);
            let ack = js.publish(subject.clone(), body.clone()).await.ok();
            window.push_back(Sent {
                seq,
                subject,
                body,
                ack,
            });
            continue;
        }
        let Some(mut sent) = window.pop_front() else {
            continue;
        };
        let taken = match sent.ack.take() {
            Some(ack) => ack.await.is_ok(),
            None => false,
        };
        let newest = latest.get(&sent.subject) == Some(&sent.seq);
        if !taken && newest && !resend(&js, &sent).await {
            stats.drop_one(Drop::Failed);
            // Plainly from now on, until the stream is found again.
            stats.retained_jetstream.store(false, Ordering::Relaxed);
            tracing::warn!(
                subject = sent.subject,
                "JetStream did not take a retained update; nodes that start later miss it"
            );
        }
        if newest {
            latest.remove(&sent.subject);
        }
    }
}

/// Sends `sent` again until JetStream acknowledges it (true) or
/// [`RESEND_PATIENCE`] passes.
async fn resend(js: &jetstream::Context, sent: &Sent) -> bool {
    let deadline = tokio::time::Instant::now() + RESEND_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if let Ok(ack) = js.publish(sent.subject.clone(), sent.body.clone()).await {
            if ack.await.is_ok() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
