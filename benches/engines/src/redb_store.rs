//! redb: one write transaction per batch. `always`: Durability::Immediate;
//! `periodic`: Durability::None per batch and an Immediate commit per second.

use crate::workload::{Batch, Loaded};
use crate::Store;
use anyhow::Result;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const MSGS: TableDefinition<u64, &[u8]> = TableDefinition::new("msgs");
/// key: session << 64 | message id
const QUEUED: TableDefinition<u128, ()> = TableDefinition::new("queued");
const FILE: &str = "store.redb";

fn qkey(session: u32, id: u64) -> u128 {
    (session as u128) << 64 | id as u128
}

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join(FILE))?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn commit(&mut self, b: &Batch, durable: bool) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut msgs = tx.open_table(MSGS)?;
            let mut queued = tx.open_table(QUEUED)?;
            for (id, range) in &b.msgs {
                msgs.insert(id, b.body(range))?;
            }
            for &(s, id) in &b.queued {
                queued.insert(qkey(s, id), ())?;
            }
            for &(s, id) in &b.acks {
                queued.remove(qkey(s, id))?;
            }
            for id in &b.dels {
                msgs.remove(id)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }
}

pub fn recover(dir: &Path) -> Result<Loaded> {
    let t = std::time::Instant::now();
    let db = Database::open(dir.join(FILE))?;
    let rx = db.begin_read()?;
    let mut out = Loaded {
        opened: t.elapsed().as_secs_f64(),
        ..Loaded::default()
    };
    for row in rx.open_table(MSGS)?.iter()? {
        let (k, v) = row?;
        out.msgs.push((k.value(), v.value().to_vec()));
    }
    for row in rx.open_table(QUEUED)?.iter()? {
        let k = row?.0.value();
        out.queued.push(((k >> 64) as u32, k as u64));
    }
    Ok(out)
}
