//! Persistent sessions across nodes: which node holds each one, in a
//! JetStream KV bucket (client id -> node name, claimed by compare-and-set),
//! and the hand-over when a client connects to another node: the new node
//! claims the key and asks the old one, on `<prefix>.n.<node>.take`, to
//! release the session; the old node closes the old connection (as a
//! takeover does), ends the session there and answers with its image
//! (subscriptions, in-flight and queued messages), which the new node's core
//! adopts before the client's attach.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt as _;
use ringmq_proto::durable::{get_session, put_session, Cursor, Epoch, SessionImage};
use ringmq_proto::router::owner_core;
use ringmq_proto::topic::subject::queue_name;
use tokio::sync::{watch, Notify};

use super::link::{hand_to_core, Plan, JETSTREAM_TIMEOUT};
use crate::server::mesh::Parcel;

/// How long a new node waits for the old one to release a session.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a claim or a record keeps trying JetStream (a compare-and-set
/// that lost a race, or a bucket whose stream is electing a new leader
/// after losing a server) before it gives up.
const JETSTREAM_PATIENCE: Duration = Duration::from_secs(5);

/// The pause between two such tries.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How often a node whose JetStream did not answer tries again.
const BUCKET_RETRY: Duration = Duration::from_secs(5);

/// The owners' bucket: being opened at start, open, or not available yet
/// (JetStream missing, or a JetStream cluster still electing its leader)
/// and tried again every [`BUCKET_RETRY`].
#[derive(Clone)]
enum Bucket {
    Opening,
    Open(Box<kv::Store>),
    Unavailable,
}

/// The owners' bucket and what claims need.
pub(super) struct Sessions {
    client: async_nats::Client,
    plan: Rc<Plan>,
    owners: watch::Sender<Bucket>,
    /// Session records to write, the newest per client (`None`: ended): as
    /// many as the node has persistent sessions at most.
    pending: RefCell<HashMap<Arc<str>, Option<Recorded>>>,
    wake: Notify,
    /// The persistent sessions this node owns: claimed here (or found
    /// recorded as its own on a restart) and not released since. Only
    /// their records are written: a record in the bucket can be stale, as
    /// nats-server before 2.9.21 may accept two compare-and-sets of one
    /// revision at once on a replicated bucket (nats-server#4320), so the
    /// node that holds a session writes its record over whatever is there.
    owned: RefCell<HashSet<Arc<str>>>,
}

impl Sessions {
    pub(super) fn new(client: async_nats::Client, plan: Rc<Plan>) -> Sessions {
        Sessions {
            client,
            plan,
            owners: watch::Sender::new(Bucket::Opening),
            pending: RefCell::default(),
            wake: Notify::new(),
            owned: RefCell::default(),
        }
    }

    /// Persistent session `client_id` is now `record` (`None`: ended here).
    pub(super) fn note(&self, client_id: Arc<str>, record: Option<Recorded>) {
        self.pending.borrow_mut().insert(client_id, record);
        self.wake.notify_one();
    }

    /// The bucket once the first try to open it ended: `None` while
    /// JetStream is not available (a claim then starts a new session).
    async fn owners(&self) -> Option<kv::Store> {
        let mut bucket = self.owners.subscribe();
        let known = match bucket.wait_for(|b| !matches!(b, Bucket::Opening)).await {
            Ok(known) => known.clone(),
            Err(_) => return None,
        };
        match known {
            Bucket::Open(store) => Some(*store),
            _ => None,
        }
    }

    /// The bucket, once open (for work that can wait for JetStream).
    async fn opened(&self) -> Option<kv::Store> {
        let mut bucket = self.owners.subscribe();
        let open = match bucket.wait_for(|b| matches!(b, Bucket::Open(_))).await {
            Ok(open) => open.clone(),
            Err(_) => return None,
        };
        match open {
            Bucket::Open(store) => Some(*store),
            _ => None,
        }
    }
}

/// Opens (or makes) the owners' bucket, trying again while JetStream does
/// not answer.
pub(super) async fn open_owners(sessions: Rc<Sessions>) {
    let mut tries = 0;
    loop {
        if let Some(store) = open_bucket(&sessions.client, &sessions.plan, tries == 0).await {
            if tries > 0 {
                tracing::info!(
                    "JetStream answered: persistent sessions follow their clients between nodes"
                );
            }
            sessions.owners.send_replace(Bucket::Open(Box::new(store)));
            let stats = &sessions.plan.handle.stats;
            stats.sessions_ready.store(true, Ordering::Relaxed);
            return;
        }
        sessions.owners.send_replace(Bucket::Unavailable);
        tries += 1;
        tokio::time::sleep(BUCKET_RETRY).await;
    }
}

async fn open_bucket(client: &async_nats::Client, plan: &Plan, first: bool) -> Option<kv::Store> {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(JETSTREAM_TIMEOUT);
    let bucket = format!("{}_sessions", plan.prefix.replace('.', "_"));
    if let Ok(store) = js.get_key_value(&bucket).await {
        return Some(store);
    }
    // The bucket's stream, made as the KV convention has it: async-nats's
    // own create_key_value cannot read nats-server 2.9's answer.
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: plan.jetstream_replicas,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    };
    let made = js.get_or_create_stream(config).await;
    match made.map_err(anyhow::Error::from).and(Ok(())) {
        Ok(()) => {}
        Err(e) if first => {
            tracing::warn!(error = %e, "JetStream unavailable: persistent sessions stay on the node they were made on until it answers");
            return None;
        }
        Err(_) => return None,
    }
    match js.get_key_value(&bucket).await {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!(error = %e, "JetStream's session bucket cannot be opened: persistent sessions stay on the node they were made on");
            None
        }
    }
}

/// The subject on which `node` answers `verb` (`take`: release a session to
/// the asking node; `merge`: take what a returning node held of a session)
/// or receives it (`retained`: its consumer of the retained stream).
pub(super) fn node_subject(prefix: &str, node: &str, verb: &str) -> String {
    format!("{prefix}.n.{}.{verb}", queue_name(node))
}

/// A KV key for any client id (KV keys take only a few characters).
fn key_of(client_id: &str) -> String {
    client_id.bytes().map(|b| format!("{b:02x}")).collect()
}

/// What a node records of a session it owns: its meta (who it is, what it
/// subscribes to) and whether its client was connected then.
pub(super) struct Recorded {
    pub(super) meta: Box<SessionImage>,
    pub(super) connected: bool,
}

/// A session's entry in the bucket: the node that owns it and, once that
/// node told it, the session's meta and whether its client was connected
/// when it was written. An empty value: the session ended.
struct Record {
    node: String,
    meta: Option<SessionImage>,
    connected: bool,
}

impl Record {
    fn encode(node: &str, meta: Option<(&SessionImage, bool)>, epoch: Epoch) -> Bytes {
        let mut out = BytesMut::with_capacity(2 + node.len());
        out.put_u16(node.len() as u16);
        out.put_slice(node.as_bytes());
        if let Some((meta, connected)) = meta {
            out.put_u8(u8::from(connected));
            put_session(&mut out, meta, epoch);
        }
        out.freeze()
    }

    fn decode(mut value: Bytes, epoch: Epoch) -> Option<Record> {
        if value.len() < 2 {
            return None;
        }
        let len = value.get_u16() as usize;
        if value.len() < len {
            return None;
        }
        let node = String::from_utf8(value.split_to(len).to_vec()).ok()?;
        let connected = value.first() == Some(&1);
        let meta = match value.len() > 1 {
            true => get_session(&mut Cursor::new(value.slice(1..)), epoch).ok(),
            false => None,
        };
        Some(Record {
            node,
            meta,
            connected,
        })
    }
}

/// Makes this node the owner of `client_id`'s session and brings the
/// session from the node that held it; `None` when no other node did, the
/// client starts clean, or the cluster could not say in time. When that node
/// does not answer (it is gone), the session comes back from its record:
/// subscriptions without the messages, which the node hands on if it
/// returns.
pub(super) async fn claim(
    sessions: Rc<Sessions>,
    client_id: Arc<str>,
    clean: bool,
) -> Option<SessionImage> {
    let plan = &sessions.plan;
    let owners = &sessions.owners().await?;
    let key = key_of(&client_id);
    let deadline = tokio::time::Instant::now() + JETSTREAM_PATIENCE;
    let previous = loop {
        if let Ok(previous) = try_claim(owners, &key, plan, clean).await {
            break previous;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(client_id = &*client_id, "JetStream did not take this node's claim of the session in time; starting a new one here");
            return None;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    };
    sessions.owned.borrow_mut().insert(client_id.clone());
    let (prior, written_at) = previous.filter(|(r, _)| r.node != plan.node)?;
    let mut ask = BytesMut::with_capacity(1 + client_id.len());
    ask.put_u8(u8::from(clean));
    ask.put_slice(client_id.as_bytes());
    let subject = node_subject(&plan.prefix, &prior.node, "take");
    let request = sessions.client.request(subject, ask.freeze());
    let answer = match tokio::time::timeout(RELEASE_TIMEOUT, request).await {
        Ok(Ok(answer)) => answer,
        // Gone (no responders) or too slow.
        _ if clean => return None,
        _ => return recover(plan, &client_id, prior, written_at),
    };
    if answer.payload.is_empty() {
        return None;
    }
    match get_session(&mut Cursor::new(answer.payload), plan.epoch) {
        Ok(image) => {
            let stats = &plan.handle.stats;
            stats.sessions_in.fetch_add(1, Ordering::Relaxed);
            Some(image)
        }
        Err(e) => {
            tracing::warn!(client_id = &*client_id, error = %e, "a released session could not be read");
            None
        }
    }
}

/// One compare-and-set of `key` to this node: the record it replaced, with
/// the Unix time it was written; `Err` when JetStream refused or failed.
async fn try_claim(
    owners: &kv::Store,
    key: &str,
    plan: &Plan,
    clean: bool,
) -> Result<Option<(Record, i64)>, ()> {
    let entry = owners.entry(key).await.map_err(drop)?;
    let prior = entry
        .as_ref()
        .and_then(|e| Record::decode(e.value.clone(), plan.epoch));
    // Its client is connecting here.
    let meta = prior
        .as_ref()
        .filter(|_| !clean)
        .and_then(|r| r.meta.as_ref())
        .map(|meta| (meta, true));
    let mine = Record::encode(&plan.node, meta, plan.epoch);
    match &entry {
        Some(e) => owners.update(key, mine, e.revision).await.map_err(drop)?,
        None => owners.create(key, mine).await.map_err(drop)?,
    };
    Ok(prior.zip(entry.map(|e| e.created.unix_timestamp())))
}

/// The session of a node that did not release it, from its record: `None`
/// when it has none, or when its client was not connected and its expiry
/// has passed since the record was written (each disconnect writes it; a
/// client connected until its node was lost counts from now).
fn recover(plan: &Plan, client_id: &str, prior: Record, written_at: i64) -> Option<SessionImage> {
    let node = prior.node;
    let connected = prior.connected;
    let Some(meta) = prior.meta else {
        tracing::warn!(client_id, node, "the node that held the session did not release it and left no record of it; starting a new one here");
        return None;
    };
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let age = unix_now.saturating_sub(written_at);
    if outlived(connected, meta.session_expiry, age) {
        tracing::info!(
            client_id,
            node,
            "the session of a node that is gone has expired; starting a new one here"
        );
        return None;
    }
    tracing::warn!(
        client_id,
        node,
        "the node that held the session did not release it; its subscriptions come back from the cluster's record, its queued messages when that node returns"
    );
    let stats = &plan.handle.stats;
    stats.sessions_recovered.fetch_add(1, Ordering::Relaxed);
    Some(meta)
}

/// Whether a session recorded `age` seconds ago has expired since: only
/// one whose client was not connected then (and that does not live forever).
fn outlived(connected: bool, session_expiry: u32, age: i64) -> bool {
    !connected && session_expiry != u32::MAX && age > i64::from(session_expiry)
}

/// Records the sessions' changes the cores send, while this node owns
/// them (a node that took one over meanwhile is left alone), the newest per
/// client and one write at a time; one JetStream did not take is tried
/// again after [`BUCKET_RETRY`] unless a newer one came meanwhile.
pub(super) async fn write_records(sessions: Rc<Sessions>) {
    loop {
        sessions.wake.notified().await;
        let Some(owners) = sessions.opened().await else {
            return;
        };
        let batch = std::mem::take(&mut *sessions.pending.borrow_mut());
        let mut failed = Vec::new();
        for (client_id, record) in batch {
            if !write_record(&sessions, &owners, &client_id, record.as_ref()).await {
                failed.push((client_id, record));
            }
        }
        if !failed.is_empty() {
            tracing::warn!(
                sessions = failed.len(),
                "persistent sessions could not be recorded in JetStream; trying again"
            );
            {
                let mut pending = sessions.pending.borrow_mut();
                for (client_id, record) in failed {
                    pending.entry(client_id).or_insert(record);
                }
            }
            tokio::time::sleep(BUCKET_RETRY).await;
            sessions.wake.notify_one();
        }
    }
}

/// Writes `client_id`'s record (`None`: ended) while this node owns the
/// session, over whatever the bucket holds; true once written or not this
/// node's to write. A session not owned here is recorded only where the
/// bucket has nothing for it (one made while JetStream did not answer),
/// which makes it this node's.
async fn write_record(
    sessions: &Sessions,
    owners: &kv::Store,
    client_id: &Arc<str>,
    record: Option<&Recorded>,
) -> bool {
    let plan = &sessions.plan;
    let key = key_of(client_id);
    let value = match record {
        Some(r) => Record::encode(&plan.node, Some((&r.meta, r.connected)), plan.epoch),
        None => Bytes::new(),
    };
    let deadline = tokio::time::Instant::now() + JETSTREAM_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        let owned = sessions.owned.borrow().contains(client_id);
        let written = match owned {
            true => owners.put(&key, value.clone()).await.is_ok(),
            false => match owners.entry(key.as_str()).await {
                Ok(None) if record.is_some() => match owners.create(&key, value.clone()).await {
                    Ok(_) => {
                        sessions.owned.borrow_mut().insert(client_id.clone());
                        true
                    }
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return true,
                    Err(_) => false,
                },
                Ok(_) => return true,
                Err(_) => false,
            },
        };
        if written {
            if record.is_none() {
                sessions.owned.borrow_mut().remove(client_id);
            }
            return true;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    false
}

/// A node that comes back (from its store) with sessions that other nodes
/// took over while it was away hands on what it held of them (messages
/// queued or unacknowledged) to their new node, and ends its copies; a
/// session ended elsewhere meanwhile is ended here too.
pub(super) async fn hand_back(sessions: Rc<Sessions>, restored: Vec<Arc<str>>) {
    let plan = &sessions.plan;
    if restored.is_empty() {
        return;
    }
    let Some(owners) = sessions.opened().await else {
        return;
    };
    for client_id in restored {
        let Ok(Some(entry)) = owners.entry(key_of(&client_id)).await else {
            continue;
        };
        let owner = Record::decode(entry.value, plan.epoch).map(|r| r.node);
        if owner.as_deref() == Some(plan.node.as_str()) {
            sessions.owned.borrow_mut().insert(client_id);
            continue;
        }
        let Some(image) = release_here(plan, client_id.clone(), owner.is_none()).await else {
            continue;
        };
        let Some(owner) = owner else {
            continue;
        };
        let held = image.inflight.len() + image.queue.len();
        let lost = match held {
            0 => 0,
            _ => merge_at(&sessions, &owner, image).await,
        };
        let stats = &plan.handle.stats;
        stats.sessions_returned.fetch_add(1, Ordering::Relaxed);
        stats
            .session_messages_lost
            .fetch_add(lost as u64, Ordering::Relaxed);
        tracing::info!(
            client_id = &*client_id,
            node = owner,
            held,
            lost,
            "handed on a session that moved while this node was away"
        );
    }
}

/// Sends `image`'s messages to `owner`; returns how many did not arrive.
async fn merge_at(sessions: &Sessions, owner: &str, image: SessionImage) -> usize {
    let plan = &sessions.plan;
    let held = image.inflight.len() + image.queue.len();
    let (body, dropped) = encode_within(&sessions.client, image, plan);
    let subject = node_subject(&plan.prefix, owner, "merge");
    let request = sessions.client.request(subject, body);
    match tokio::time::timeout(RELEASE_TIMEOUT, request).await {
        Ok(Ok(answer)) if answer.payload.len() == 4 => {
            dropped + (&answer.payload[..]).get_u32() as usize
        }
        _ => {
            tracing::warn!(
                node = owner,
                held,
                "the node that took a session over did not take its messages"
            );
            held
        }
    }
}

/// Ends session `client_id` on its core here; its image unless `discard`.
async fn release_here(plan: &Plan, client_id: Arc<str>, discard: bool) -> Option<SessionImage> {
    let (reply, image) = futures::channel::oneshot::channel();
    let owner = owner_core(&client_id, plan.mesh.cores());
    let parcel = Parcel::ClusterRelease {
        client_id,
        discard,
        reply,
    };
    hand_to_core(&plan.mesh, owner, parcel).await;
    image.await.ok().flatten()
}

/// Takes what returning nodes held of sessions owned here (see
/// [`hand_back`]), answering with how many messages found no session.
pub(super) async fn serve_merges(sessions: Rc<Sessions>) {
    let plan = &sessions.plan;
    let subject = node_subject(&plan.prefix, &plan.node, "merge");
    let mut requests = match sessions.client.subscribe(subject).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!(error = %e, "cluster link cannot take sessions' messages from other nodes");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        let (Some(reply_to), Ok(image)) = (
            request.reply,
            get_session(&mut Cursor::new(request.payload), plan.epoch),
        ) else {
            continue;
        };
        let (reply, lost) = futures::channel::oneshot::channel();
        let owner = owner_core(&image.client_id, plan.mesh.cores());
        let parcel = Parcel::ClusterMerge {
            image: Box::new(image),
            reply,
        };
        hand_to_core(&plan.mesh, owner, parcel).await;
        let lost = lost.await.unwrap_or(0) as u32;
        let _ = sessions
            .client
            .publish(reply_to, lost.to_be_bytes().to_vec().into())
            .await;
    }
}

/// Answers other nodes' requests to release sessions held here.
pub(super) async fn serve_releases(sessions: Rc<Sessions>) {
    let plan = &sessions.plan;
    let subject = node_subject(&plan.prefix, &plan.node, "take");
    let mut requests = match sessions.client.subscribe(subject).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!(error = %e, "cluster link cannot release sessions to other nodes");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        if let Some(reply_to) = request.reply {
            let release = release(sessions.clone(), request.payload, reply_to.to_string());
            tokio::task::spawn_local(release);
        }
    }
}

async fn release(sessions: Rc<Sessions>, ask: Bytes, reply_to: String) {
    let plan = &sessions.plan;
    let Some((&clean, id)) = ask.split_first() else {
        return;
    };
    let Ok(client_id) = std::str::from_utf8(id) else {
        return;
    };
    let client_id: Arc<str> = client_id.into();
    // The asking node owns it now: what this one still has to record of
    // it (its end here included) is not written.
    sessions.owned.borrow_mut().remove(&client_id);
    let body = match release_here(plan, client_id.clone(), clean != 0).await {
        Some(image) => {
            plan.handle
                .stats
                .sessions_out
                .fetch_add(1, Ordering::Relaxed);
            let (body, dropped) = encode_within(&sessions.client, image, plan);
            let stats = &plan.handle.stats;
            stats
                .session_messages_lost
                .fetch_add(dropped as u64, Ordering::Relaxed);
            body
        }
        None => Bytes::new(),
    };
    if let Err(e) = sessions.client.publish(reply_to, body).await {
        tracing::warn!(client_id = &*client_id, error = %e, "a released session could not be sent");
    }
}

/// The image as a NATS body, and how many of its messages it left out: one
/// larger than NATS takes goes without its queued messages (subscriptions
/// and in-flight ones kept), which are then lost, logged with their number.
fn encode_within(
    client: &async_nats::Client,
    mut image: SessionImage,
    plan: &Plan,
) -> (Bytes, usize) {
    let max = client.server_info().max_payload;
    let mut out = BytesMut::new();
    put_session(&mut out, &image, plan.epoch);
    if max == 0 || out.len() <= max {
        return (out.freeze(), 0);
    }
    let dropped = image.queue.len();
    image.queue.clear();
    tracing::warn!(
        client_id = &*image.client_id,
        dropped,
        "a session moving to another node is larger than NATS takes: its queued messages are dropped"
    );
    let mut out = BytesMut::new();
    put_session(&mut out, &image, plan.epoch);
    (out.freeze(), dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_proto::codec::Protocol;

    fn meta(expiry: u32) -> SessionImage {
        SessionImage {
            client_id: "device-7".into(),
            username: None,
            protocol: Protocol::V5,
            session_expiry: expiry,
            subscriptions: Vec::new(),
            awaiting_rel: Vec::new(),
            inflight: Vec::new(),
            queue: Vec::new(),
        }
    }

    #[test]
    fn a_record_reads_back_its_node_meta_and_connection() {
        let epoch = Epoch(0);
        for connected in [false, true] {
            let value = Record::encode("node-b", Some((&meta(60), connected)), epoch);
            let record = Record::decode(value, epoch).expect("a record");
            assert_eq!(record.node, "node-b");
            assert_eq!(record.connected, connected);
            let read = record.meta.expect("its meta");
            assert_eq!((&*read.client_id, read.session_expiry), ("device-7", 60));
        }
        let bare = Record::decode(Record::encode("node-c", None, epoch), epoch).unwrap();
        assert_eq!((bare.node.as_str(), bare.meta.is_none()), ("node-c", true));
        assert!(Record::decode(Bytes::from_static(&[0, 9, b'x']), epoch).is_none());
    }

    #[test]
    fn only_a_disconnected_session_expires_from_its_record() {
        assert!(outlived(false, 60, 61));
        assert!(!outlived(false, 60, 60));
        assert!(
            !outlived(true, 60, 3600),
            "connected until its node was lost"
        );
        assert!(!outlived(false, u32::MAX, i64::MAX));
    }
}
