//! ACL checks on the message path (publish, delivery) and at CONNECT.
//!
//! Run: `cargo bench --bench acl -- --warm-up-time 1 --measurement-time 2`

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringmq::auth::acl::AclFile;

const USERS: usize = 5_000;

/// 10,000 `topic` rules (two per user) and a few patterns.
fn fleet_file() -> String {
    let mut text = String::from(
        "pattern write devices/%c/#\npattern read devices/%c/cmd/#\n\
         pattern read users/%u/inbox/#\npattern deny $SYS/#\n",
    );
    for i in 0..USERS {
        text.push_str(&format!(
            "user u{i}\ntopic readwrite fleet/u{i}/#\ntopic read broadcast/#\n"
        ));
    }
    text
}

/// One user whose block alone holds 10,000 rules (the trie path).
fn big_block_file() -> String {
    let mut text = String::from("user big\ntopic deny fleet/r0/d0/secret\n");
    for i in 0..10_000 {
        text.push_str(&format!("topic read fleet/r{}/d{i}/+\n", i % 16));
    }
    text
}

fn bench_checks(c: &mut Criterion) {
    let file = Arc::new(AclFile::parse(&fleet_file()).unwrap());
    assert_eq!(file.rule_count(), 2 * USERS + 4);
    let client = file.access_for("dev-4217", Some("u4217"));
    assert!(client.may_publish("fleet/u4217/telemetry"));
    assert!(client.may_read("broadcast/news/today"));
    let mut group = c.benchmark_group("acl");
    group.bench_function("may_publish_own", |b| {
        b.iter(|| client.may_publish(black_box("fleet/u4217/telemetry")))
    });
    group.bench_function("may_publish_pattern", |b| {
        b.iter(|| client.may_publish(black_box("devices/dev-4217/state")))
    });
    group.bench_function("may_publish_denied", |b| {
        b.iter(|| client.may_publish(black_box("fleet/u1/telemetry")))
    });
    group.bench_function("may_read_broadcast", |b| {
        b.iter(|| client.may_read(black_box("broadcast/news/today")))
    });
    group.bench_function("access_for", |b| {
        b.iter(|| file.access_for(black_box("dev-4217"), black_box(Some("u4217"))))
    });
    let big = Arc::new(AclFile::parse(&big_block_file()).unwrap());
    let heavy = big.access_for("c", Some("big"));
    assert!(heavy.may_read("fleet/r3/d4211/x") && !heavy.may_read("fleet/r0/d0/secret"));
    group.bench_function("may_read_10k_rule_block", |b| {
        b.iter(|| heavy.may_read(black_box("fleet/r3/d4211/x")))
    });
    group.bench_function("subscribe_wildcard_own", |b| {
        b.iter(|| client.subscribe(black_box("fleet/u4217/+/status")))
    });
    group.finish();
    c.bench_function("acl_parse_10k_rules", |b| {
        let text = fleet_file();
        b.iter(|| AclFile::parse(black_box(&text)).unwrap().rule_count())
    });
}

criterion_group!(benches, bench_checks);
criterion_main!(benches);
