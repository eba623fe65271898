//! Storage behind small interfaces. Everything lives in memory today; a durable
//! implementation (the persistence issue) replaces these types without the
//! router changing, since the router only uses the methods below.

mod retained;

pub use retained::RetainedStore;
