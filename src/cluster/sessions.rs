//! Persistent sessions across nodes: which node holds each one, in a
//! JetStream KV bucket (client id -> node name, written by compare-and-set),
//! and the hand-over when a client connects to another node: the new node
//! claims the key and asks the old one, on `<prefix>.n.<node>.take`, to
//! release the session; the old node closes the old connection (as a
//! takeover does), ends the session there and answers with its image
//! (subscriptions, in-flight and queued messages), which the new node's core
//! adopts before the client's attach.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt as _;
use ringmq_proto::durable::{get_session, put_session, Cursor, SessionImage};
use ringmq_proto::router::owner_core;
use ringmq_proto::topic::subject::queue_name;
use tokio::sync::OnceCell;

use super::link::{hand_to_core, Plan, JETSTREAM_TIMEOUT};
use crate::server::mesh::Parcel;

/// How long a new node waits for the old one to release a session.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Tries of the compare-and-set before a claim gives up.
const CLAIM_TRIES: usize = 3;

/// The owners' bucket (once JetStream answered) and what claims need.
pub(super) struct Sessions {
    client: async_nats::Client,
    plan: Rc<Plan>,
    owners: OnceCell<Option<kv::Store>>,
}

impl Sessions {
    pub(super) fn new(client: async_nats::Client, plan: Rc<Plan>) -> Sessions {
        Sessions {
            client,
            plan,
            owners: OnceCell::new(),
        }
    }

    /// Opens (or makes) the bucket now rather than at the first claim.
    pub(super) async fn ready(this: Rc<Sessions>) {
        this.owners().await;
    }

    async fn owners(&self) -> Option<&kv::Store> {
        self.owners
            .get_or_init(|| open_bucket(&self.client, &self.plan))
            .await
            .as_ref()
    }
}

async fn open_bucket(client: &async_nats::Client, plan: &Plan) -> Option<kv::Store> {
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
        Err(e) => {
            tracing::warn!(error = %e, "JetStream unavailable: persistent sessions stay on the node they were made on");
            return None;
        }
    }
    match js.get_key_value(&bucket).await {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!(error = %e, "JetStream's session bucket cannot be opened: persistent sessions stay on the node they were made on");
            None
        }
    }
}

/// The subject on which `node` releases sessions.
fn release_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.n.{}.take", queue_name(node))
}

/// A KV key for any client id (KV keys take only a few characters).
fn key_of(client_id: &str) -> String {
    client_id.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Makes this node the owner of `client_id`'s session and brings the
/// session from the node that held it; `None` when no other node did, the
/// client starts clean, or the cluster could not say in time.
pub(super) async fn claim(
    sessions: Rc<Sessions>,
    client_id: Arc<str>,
    clean: bool,
) -> Option<SessionImage> {
    let plan = &sessions.plan;
    let owners = sessions.owners().await?;
    let key = key_of(&client_id);
    let me = Bytes::copy_from_slice(plan.node.as_bytes());
    let mut previous = None;
    for _ in 0..CLAIM_TRIES {
        let entry = owners.entry(key.as_str()).await.ok()?;
        let written = match &entry {
            Some(e) => owners.update(&key, me.clone(), e.revision).await.is_ok(),
            None => owners.create(&key, me.clone()).await.is_ok(),
        };
        if written {
            previous = entry.map(|e| e.value);
            break;
        }
    }
    let owner = previous.filter(|v| !v.is_empty() && *v != me)?;
    let owner = String::from_utf8(owner.to_vec()).ok()?;
    let mut ask = BytesMut::with_capacity(1 + client_id.len());
    ask.put_u8(u8::from(clean));
    ask.put_slice(client_id.as_bytes());
    let subject = release_subject(&plan.prefix, &owner);
    let request = sessions.client.request(subject, ask.freeze());
    let answer = match tokio::time::timeout(RELEASE_TIMEOUT, request).await {
        Ok(Ok(answer)) => answer,
        // Gone (no responders) or too slow: a fresh session here.
        _ => {
            tracing::warn!(
                client_id = &*client_id,
                node = owner,
                "the node that held the session did not release it; starting a new one here"
            );
            return None;
        }
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

/// Answers other nodes' requests to release sessions held here.
pub(super) async fn serve_releases(sessions: Rc<Sessions>) {
    let plan = &sessions.plan;
    let subject = release_subject(&plan.prefix, &plan.node);
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
    let (reply, image) = futures::channel::oneshot::channel();
    let owner = owner_core(&client_id, plan.mesh.cores());
    let parcel = Parcel::ClusterRelease {
        client_id: client_id.clone(),
        discard: clean != 0,
        reply,
    };
    hand_to_core(&plan.mesh, owner, parcel).await;
    let body = match image.await.ok().flatten() {
        Some(image) => encode_within(&sessions.client, image, plan),
        None => Bytes::new(),
    };
    if let Err(e) = sessions.client.publish(reply_to, body).await {
        tracing::warn!(client_id = &*client_id, error = %e, "a released session could not be sent");
    }
}

/// The image as a NATS body. One larger than NATS takes goes without its
/// queued messages (subscriptions and in-flight ones kept), which are then
/// lost, logged with their number.
fn encode_within(client: &async_nats::Client, mut image: SessionImage, plan: &Plan) -> Bytes {
    let stats = &plan.handle.stats;
    stats.sessions_out.fetch_add(1, Ordering::Relaxed);
    let max = client.server_info().max_payload;
    let mut out = BytesMut::new();
    put_session(&mut out, &image, plan.epoch);
    if max == 0 || out.len() <= max {
        return out.freeze();
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
    out.freeze()
}
