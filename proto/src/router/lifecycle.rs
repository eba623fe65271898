//! Sessions and their connections: attach (new, resumed or taken over),
//! detach, wills and session expiry.

use std::sync::Arc;

use super::owner_core;
use super::{Attached, CloseReason, ConnId, Core, Entry, SessionKey};
use crate::access::Permissions;
use crate::codec::Connect;
use crate::durable::journal::Recorder;
use crate::durable::SessionImage;
use crate::session::{Session, WillRelease};
use crate::time::Time;
use crate::topic::SubFilter;

impl Core {
    /// Binds a connection to the session of `client_id`, taking over any existing
    /// connection (its will is published) and honouring clean start. Writes
    /// CONNACK, then anything the session owes the client. `permissions` are
    /// what the authorizer decided for this client; a resumed session's
    /// subscriptions are re-checked against them.
    pub fn connect(
        &mut self,
        connect: &Connect,
        client_id: Arc<str>,
        conn: ConnId,
        now: Time,
        assigned_id: bool,
        permissions: Permissions,
    ) -> Attached {
        let limits = self.limits.clone();
        if let Some(&key) = self.by_client_id.get(&client_id) {
            self.take_over(key, now);
            let resumable = self.sessions[key].session.is_persistent();
            if connect.clean_start || !resumable {
                self.end_session(key, now);
            } else {
                self.resume(key, connect, conn, now);
                self.journal_session(key);
                self.authorize(key, permissions);
                self.share_session(key, true);
                return Attached {
                    key,
                    session_present: true,
                };
            }
        }
        let mut session = Session::new(client_id.clone(), connect, &limits, now);
        session.set_permissions(permissions);
        session.send_connack(false, assigned_id.then_some(&*client_id), &limits);
        let held_by = self.inherited_holds(&client_id);
        let key = self.sessions.insert(Entry {
            session: Box::new(session),
            conn: Some(conn),
            dirty: false,
            paused: false,
            expires_at: None,
            delayed_will: None,
            holding: None,
            held_by,
            in_cluster: false,
        });
        self.by_client_id.insert(client_id, key);
        self.counters.sessions_current += 1;
        self.counters.connections_current += 1;
        self.journal_session(key);
        self.share_session(key, true);
        self.mark_dirty(key);
        Attached {
            key,
            session_present: false,
        }
    }

    fn resume(&mut self, key: SessionKey, connect: &Connect, conn: ConnId, now: Time) {
        let limits = self.limits.clone();
        let e = &mut self.sessions[key];
        e.conn = Some(conn);
        e.dirty = false;
        e.paused = false;
        e.expires_at = None;
        // Reconnecting within the will delay cancels the will [MQTT-3.1.3-9].
        let cancelled = e.delayed_will.take().is_some();
        if cancelled && e.session.is_journaled() {
            if let Some(journal) = self.journal.as_mut() {
                journal.will_done(e.session.client_id());
                self.outbox.journal.extend(journal.take());
            }
        }
        let e = &mut self.sessions[key];
        e.session.attach(connect, &limits, now);
        e.session.send_connack(true, None, &limits);
        e.session.resume(&limits, now);
        self.counters.connections_current += 1;
        self.activate_shared(key, true);
        self.mark_dirty(key);
    }

    /// Closes the current connection of session `key`, if any, publishing its will.
    pub(super) fn take_over(&mut self, key: SessionKey, now: Time) {
        let limits = self.limits.clone();
        let e = &mut self.sessions[key];
        let Some(old) = e.conn.take() else {
            return;
        };
        e.dirty = false;
        e.paused = false;
        let will = e.session.detach(&limits);
        self.release_holds(key);
        self.counters.takeovers += 1;
        self.counters.connections_current -= 1;
        self.outbox.close.push((old, CloseReason::SessionTakenOver));
        self.activate_shared(key, false);
        self.release_will(key, will, now);
    }

    /// The connection `conn` of session `key` ended. The session still holds a
    /// will unless a DISCONNECT cleared it.
    pub fn disconnected(&mut self, key: SessionKey, conn: ConnId, now: Time) {
        let limits = self.limits.clone();
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        if e.conn != Some(conn) {
            return; // already taken over
        }
        e.conn = None;
        e.dirty = false;
        e.paused = false;
        self.counters.connections_current -= 1;
        let will = e.session.detach(&limits);
        let expiry = e.session.session_expiry();
        // A shared-group member that goes away hands what it has not acknowledged
        // to another member, even if its session stays.
        let unacked = e.session.take_shared_unacked();
        self.release_holds(key);
        self.collect_journal(key);
        self.activate_shared(key, false);
        for item in unacked {
            self.reroute_shared(item, now);
        }
        self.release_will(key, will, now);
        // Recorded again so that the cluster's copy dates from the disconnect.
        self.share_session(key, true);
        match expiry {
            0 => self.end_session(key, now),
            u32::MAX => {}
            secs => self.sessions[key].expires_at = Some(now.after_secs(secs)),
        }
    }

    /// Brings back a session from the store, offline: its subscriptions are
    /// in force again (announced to every core), its messages wait for its
    /// client, and its expiry counts from now. Journaled afresh, so the new
    /// journal holds it whole.
    pub fn restore(&mut self, image: SessionImage, now: Time) {
        if self.by_client_id.contains_key(&image.client_id) {
            return;
        }
        let session = Session::restore(image, &self.limits, now);
        let client_id = session.client_id().clone();
        let subscriptions: Vec<_> = session
            .subscriptions()
            .map(|(f, e)| (f.clone(), *e))
            .collect();
        let expires_at = match session.session_expiry() {
            u32::MAX => None,
            secs => Some(now.after_secs(secs)),
        };
        let key = self.sessions.insert(Entry {
            session: Box::new(session),
            conn: None,
            dirty: false,
            paused: false,
            expires_at,
            delayed_will: None,
            holding: None,
            held_by: 0,
            in_cluster: false,
        });
        self.by_client_id.insert(client_id, key);
        self.counters.sessions_current += 1;
        for (filter, entry) in subscriptions {
            // Shared memberships count only connected members: the client's
            // reconnect activates them.
            self.restore_subscription(key, &filter, entry);
        }
        self.journal_session(key);
        self.share_session(key, true);
    }

    /// Everything this core must keep, as journal records that supersede all
    /// earlier ones (for compacting the store): every journaled session whole,
    /// and the retained messages of the topics this core owns.
    pub fn journal_snapshot(&mut self) -> Vec<bytes::Bytes> {
        let Some(epoch) = self.journal.as_ref().map(Recorder::epoch) else {
            return Vec::new();
        };
        let mut snapshot = Recorder::new(epoch);
        for (_, e) in self.sessions.iter_mut() {
            if e.session.is_journaled() {
                // Superseded by the image.
                e.session.take_journal();
                snapshot.put(&e.session.image());
                if let Some((at, will)) = e.delayed_will.as_deref() {
                    snapshot.will(e.session.client_id(), *at, will);
                }
            }
        }
        let (id, cores) = (self.id, self.cores);
        self.retained.for_each(|topic, msg| {
            if owner_core(topic, cores) == id && !msg.topic.is_sys() {
                snapshot.retained(msg);
            }
        });
        self.outbox.journal.clear();
        snapshot.take()
    }

    /// Brings back a restored session's delayed will (published when due,
    /// or cancelled by its client's reconnect, as before the restart).
    pub fn restore_delayed_will(&mut self, client_id: &str, at: Time, will: WillRelease) {
        let Some(&key) = self.by_client_id.get(client_id) else {
            return;
        };
        let e = &mut self.sessions[key];
        if let Some(journal) = self.journal.as_mut().filter(|_| e.session.is_journaled()) {
            journal.will(client_id, at, &will);
            self.outbox.journal.extend(journal.take());
        }
        e.delayed_will = Some(Box::new((at, will)));
    }

    /// Brings back a retained message from the store: the topic's owner core
    /// stores it and orders it to every replica (and journals it again).
    pub fn restore_retained(&mut self, msg: Arc<crate::message::Message>, now: Time) {
        if owner_core(msg.topic.as_str(), self.cores) == self.id {
            self.route_restored_retained(msg, now);
        }
    }

    /// Gives session `key` new permissions (a reconnect, or reloaded rules):
    /// subscriptions they no longer allow are removed, and deliveries through
    /// the others are checked or not as the new rules require.
    pub fn authorize(&mut self, key: SessionKey, permissions: Permissions) {
        let Some(e) = self.sessions.get_mut(key) else {
            return;
        };
        e.session.set_permissions(permissions);
        let (revoked, changed) = e.session.recheck_subscriptions();
        self.counters.subscriptions_revoked += revoked.len() as u64;
        for filter in &revoked {
            self.unsubscribe_one(key, filter);
        }
        for (filter, entry) in changed {
            self.set_checked(key, &filter, entry.checked);
        }
        self.share_session(key, false);
    }

    /// Re-decides every session's permissions with `decide(client_id,
    /// username)`, as [`Core::authorize`] does for one.
    pub fn reauthorize(&mut self, mut decide: impl FnMut(&str, Option<&str>) -> Permissions) {
        let keys: Vec<SessionKey> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            let s = &self.sessions[key].session;
            let permissions = decide(s.client_id(), s.username().map(|u| &**u));
            self.authorize(key, permissions);
        }
    }

    fn set_checked(&mut self, key: SessionKey, filter: &SubFilter, checked: bool) {
        match filter {
            SubFilter::Plain(f) => {
                let list = self.subs.get_mut(f.as_str()).into_iter().flatten();
                for s in list.filter(|s| s.key == key) {
                    s.checked = checked;
                }
            }
            SubFilter::Shared(share) => {
                let group = self.shared.local.get_mut(share).into_iter();
                for m in group.flat_map(|g| g.members.iter_mut()) {
                    if m.key == key {
                        m.checked = checked;
                    }
                }
            }
        }
    }

    /// Publishes a will now, or parks it until its delay passes, if its
    /// client may write its topic.
    fn release_will(&mut self, key: SessionKey, will: Option<WillRelease>, now: Time) {
        let Some(will) = will else {
            return;
        };
        let session = &mut self.sessions[key].session;
        if !session.may_publish(will.topic().as_str()) {
            self.counters.wills_denied += 1;
            return;
        }
        if will.delay == 0 {
            self.publish_will(will, now);
        } else {
            let at = now.after_secs(will.delay);
            let e = &mut self.sessions[key];
            if let Some(journal) = self.journal.as_mut().filter(|_| e.session.is_journaled()) {
                journal.will(e.session.client_id(), at, &will);
                self.outbox.journal.extend(journal.take());
            }
            e.delayed_will = Some(Box::new((at, will)));
        }
    }

    pub(super) fn publish_will(&mut self, will: WillRelease, now: Time) {
        self.counters.wills_published += 1;
        self.route(will.into_message(now), now);
    }

    /// Ends a session: a pending will goes out [MQTT-3.1.2-8], subscriptions go.
    pub(super) fn end_session(&mut self, key: SessionKey, now: Time) {
        self.release_holds(key);
        self.orphan_holds_of(key);
        self.collect_journal(key);
        let mut e = self.sessions.remove(key);
        if e.session.is_journaled() {
            if let Some(journal) = self.journal.as_mut() {
                journal.gone(e.session.client_id());
                self.outbox.journal.extend(journal.take());
            }
        }
        self.by_client_id.remove(e.session.client_id());
        self.counters.sessions_current -= 1;
        if e.in_cluster {
            self.unshare_session(e.session.client_id().clone());
        }
        if let Some((_, will)) = e.delayed_will.take().map(|b| *b) {
            self.publish_will(will, now);
        }
        let filters: Vec<_> = e.session.subscriptions().map(|(f, _)| f.clone()).collect();
        for filter in filters {
            self.unsubscribe_one(key, &filter);
        }
        for item in e.session.take_shared_unacked() {
            self.reroute_shared(item, now);
        }
    }
}
