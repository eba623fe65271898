//! fjall: one keyspace per record kind, one write batch per group commit.
//! `always`: the batch commits with PersistMode::SyncData; `periodic`: the
//! batch goes to the OS (fjall's default) and `persist(SyncData)` runs once
//! a second.

use crate::workload::{Batch, Loaded};
use crate::Store;
use anyhow::Result;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::Path;

fn qkey(session: u32, id: u64) -> [u8; 12] {
    let mut k = [0; 12];
    k[..4].copy_from_slice(&session.to_be_bytes());
    k[4..].copy_from_slice(&id.to_be_bytes());
    k
}

pub struct FjallStore {
    db: Database,
    msgs: Keyspace,
    queued: Keyspace,
}

impl FjallStore {
    pub fn open(dir: &Path) -> Result<Self> {
        let db = Database::builder(dir).open()?;
        let msgs = db.keyspace("msgs", KeyspaceCreateOptions::default)?;
        let queued = db.keyspace("queued", KeyspaceCreateOptions::default)?;
        Ok(Self { db, msgs, queued })
    }
}

impl Store for FjallStore {
    fn commit(&mut self, b: &Batch, durable: bool) -> Result<()> {
        let mut batch = self.db.batch();
        if durable {
            batch = batch.durability(Some(PersistMode::SyncData));
        }
        for (id, range) in &b.msgs {
            batch.insert(&self.msgs, &id.to_be_bytes()[..], b.body(range));
        }
        for &(s, id) in &b.queued {
            batch.insert(&self.queued, &qkey(s, id)[..], &[][..]);
        }
        for &(s, id) in &b.acks {
            batch.remove(&self.queued, &qkey(s, id)[..]);
        }
        for id in &b.dels {
            batch.remove(&self.msgs, &id.to_be_bytes()[..]);
        }
        batch.commit()?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        Ok(self.db.persist(PersistMode::SyncData)?)
    }
}

pub fn recover(dir: &Path) -> Result<Loaded> {
    let t = std::time::Instant::now();
    let s = FjallStore::open(dir)?;
    let mut out = Loaded {
        opened: t.elapsed().as_secs_f64(),
        ..Loaded::default()
    };
    for g in s.msgs.iter() {
        let (k, v) = g.into_inner()?;
        out.msgs
            .push((u64::from_be_bytes(k[..].try_into()?), v.to_vec()));
    }
    for g in s.queued.iter() {
        let k = g.key()?;
        out.queued.push((
            u32::from_be_bytes(k[..4].try_into()?),
            u64::from_be_bytes(k[4..12].try_into()?),
        ));
    }
    Ok(out)
}
