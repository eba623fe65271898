//! The fuzz targets: one function per untrusted input, each taking arbitrary
//! bytes. A target panics only when it finds a bug (a panic inside ringmq, or
//! a broken invariant it checks). The same functions back the AFL binaries in
//! `fuzz/src/bin/` and the replay of every saved input in
//! `tests/fuzz_regressions.rs`, so they compile and run in the normal test
//! run too. Only `ringmq::` paths are used, so the file builds in both crates.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ringmq::codec::{decode, encode, Packet, Protocol};
use ringmq::topic::{matches, MatchScratch, TopicFilter, TopicName, TopicTree, Trie};

/// A fuzz target: arbitrary bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name its binary, corpus and regressions use.
pub const TARGETS: &[(&str, Target)] = &[
    ("packet_v311", packet_v311),
    ("packet_v5", packet_v5),
    ("framer", framer),
    ("session", session),
    ("topics", topics),
    ("config", config),
    ("password_file", password_file),
    ("acl_file", acl_file),
    ("journal", journal),
    ("log_file", log_file),
    ("websocket", websocket),
];

/// The largest packet the targets accept: the broker's default cap.
const MAX_PACKET: u32 = 1 << 20;

pub fn packet_v311(data: &[u8]) {
    packets(data, Protocol::V3_1_1);
}

pub fn packet_v5(data: &[u8]) {
    packets(data, Protocol::V5);
}

/// Decodes packets until the input ends or is refused; each decoded packet
/// must encode and decode back to itself.
fn packets(data: &[u8], protocol: Protocol) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = decode(&mut buf, protocol, MAX_PACKET) {
        assert_round_trip(&packet, protocol);
    }
}

fn assert_round_trip(packet: &Packet, protocol: Protocol) {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    let again = decode(&mut out, protocol, u32::MAX);
    assert_eq!(
        again.as_ref().ok().and_then(|p| p.as_ref()),
        Some(packet),
        "{protocol:?}"
    );
    assert!(out.is_empty(), "encoding left {} stray bytes", out.len());
}

/// The first byte picks the protocol and the next ones where the input is
/// cut; however the bytes arrive, the packets (or the error) must be the same
/// as from the whole input at once.
pub fn framer(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let protocol = if head & 1 == 0 {
        Protocol::V3_1_1
    } else {
        Protocol::V5
    };
    let cuts = (head >> 1) as usize % 8;
    let (sizes, stream) = rest.split_at(cuts.min(rest.len()));
    let whole = decode_stream(&[stream], protocol);
    let mut pieces = Vec::new();
    let mut at = 0;
    for &size in sizes {
        let end = (at + size as usize).min(stream.len());
        pieces.push(&stream[at..end]);
        at = end;
    }
    pieces.push(&stream[at..]);
    assert_eq!(decode_stream(&pieces, protocol), whole);
}

/// Packets decoded from `pieces` fed one after another, and the error that
/// ended them, if any.
fn decode_stream(pieces: &[&[u8]], protocol: Protocol) -> (Vec<Packet>, Option<String>) {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut buf, protocol, MAX_PACKET) {
                Ok(Some(p)) => got.push(p),
                Ok(None) => break,
                Err(e) => return (got, Some(e.to_string())),
            }
        }
    }
    (got, None)
}

/// The session state machine, driven by the input as a script of steps: a
/// client packet (a length byte and that many bytes, decoded in the
/// session's protocol), a message routed to the client, a clock step, a
/// reconnect, or a window pump. After every step: the in-flight window stays
/// within its cap, the queue grows past its cap only with the answer that
/// holds the publisher back, everything the session wrote decodes, and no
/// new QoS 1/2 PUBLISH reuses a packet id still in flight.
pub fn session(data: &[u8]) {
    use ringmq::session::{Event, Routing, Session};
    let Some((&setup, mut script)) = data.split_first() else {
        return;
    };
    let limits = ringmq::limits::Limits {
        max_inflight_messages: 3,
        max_queued_messages: 4,
        max_awaiting_rel: 3,
        ..ringmq::limits::Limits::default()
    };
    let protocol = if setup & 1 == 0 {
        Protocol::V3_1_1
    } else {
        Protocol::V5
    };
    let connect = |clean: bool| ringmq::codec::Connect {
        protocol,
        clean_start: clean,
        keep_alive: 10,
        client_id: Bytes::from_static(b"fuzz"),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
        bridge: setup & 4 != 0,
    };
    let mut now = ringmq::time::Time::from_millis(0);
    let mut s = Session::new("fuzz".into(), &connect(setup & 2 != 0), &limits, now);
    let mut in_flight = std::collections::HashSet::new();
    check_output(&mut s, &mut in_flight, &limits);
    while let Some((&op, rest)) = script.split_first() {
        script = rest;
        match op % 5 {
            0 => {
                let len = (op / 5) as usize;
                let (bytes, rest) = script.split_at(len.min(script.len()));
                script = rest;
                let mut buf = BytesMut::from(bytes);
                let Ok(Some(packet)) = decode(&mut buf, s.protocol(), MAX_PACKET) else {
                    continue;
                };
                // What ends an outgoing flow frees its packet id: PUBACK,
                // PUBCOMP, or a 5.0 PUBREC with an error reason.
                match &packet {
                    Packet::PubAck(a) | Packet::PubComp(a) => {
                        in_flight.remove(&a.pid);
                    }
                    Packet::PubRec(a) if a.reason >= 0x80 => {
                        in_flight.remove(&a.pid);
                    }
                    _ => {}
                }
                let mut events = Vec::new();
                if s.handle_packet(now, packet, &limits, &mut events).is_err() {
                    return; // a violation closes the connection
                }
                for event in events {
                    match event {
                        Event::Publish { ack: Some(ack), .. } => {
                            s.acknowledge(ack, Routing::Delivered)
                        }
                        Event::Subscribe { pid, codes, .. } => s.send_suback(pid, codes),
                        Event::Disconnect => return,
                        _ => {}
                    }
                }
            }
            1 => {
                let qos = ringmq::codec::QoS::from_bits(op / 5 % 3)
                    .unwrap_or(ringmq::codec::QoS::AtMostOnce);
                let msg = ringmq::message::Message::new(
                    TopicName::new(Bytes::from_static(b"t/x"), 128).expect("a topic"),
                    Bytes::from_static(b"m"),
                    qos,
                    false,
                );
                let item = ringmq::session::Routed {
                    msg: msg.shared(),
                    qos,
                    retain: op & 0x80 != 0,
                    sub_ids: Box::new([]),
                    shared: None,
                };
                let before = s.queued_len();
                let outcome = s.deliver(item, &limits, now);
                // Past its cap the queue grows only by a delivery answered
                // QueuedOverCap, which makes the router hold that publisher.
                if s.queued_len() > limits.max_queued_messages && s.queued_len() > before {
                    assert_eq!(outcome, ringmq::session::Outcome::QueuedOverCap);
                }
            }
            2 => {
                now = ringmq::time::Time::from_millis(now.as_millis() + (op / 5) as u64 * 1000);
                s.expire_awaiting_rel(now, &limits);
                if s.keep_alive_expired(now) {
                    return;
                }
            }
            3 => {
                let clean = op & 0x80 != 0;
                let _ = s.detach(&limits);
                if clean || !s.is_persistent() {
                    s = Session::new("fuzz".into(), &connect(true), &limits, now);
                    in_flight.clear();
                } else {
                    s.attach(&connect(false), &limits, now);
                    s.resume(&limits, now);
                }
            }
            _ => s.pump(&limits, now),
        }
        check_output(&mut s, &mut in_flight, &limits);
    }
}

/// The session's invariants, and its output decoded as the client reads it.
fn check_output(
    s: &mut ringmq::session::Session,
    in_flight: &mut std::collections::HashSet<ringmq::codec::Pid>,
    limits: &ringmq::limits::Limits,
) {
    assert!(
        s.inflight_len() <= limits.max_inflight_messages as usize,
        "window overrun"
    );
    let mut out = s.tx.split();
    loop {
        match decode(&mut out, s.protocol(), u32::MAX) {
            Ok(Some(Packet::Publish(p))) => {
                if let (false, Some(pid)) = (p.dup, p.qos_pid.pid()) {
                    assert!(
                        in_flight.insert(pid),
                        "packet id {pid:?} reused while in flight"
                    );
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => panic!("the session wrote an undecodable packet: {e}"),
        }
    }
    assert!(
        out.is_empty(),
        "the session wrote {} bytes of a partial packet",
        out.len()
    );
}

/// Levels the topic target builds names and filters from: the spec's corner
/// cases (empty, `$` first, wildcards) and bytes the validator must refuse.
const LEVELS: [&[u8]; 10] = [
    b"a", b"b", b"$x", b"", b"+", b"#", b"a+", b"#b", b"\0", b"\xff",
];

/// Bytes are levels, 0xff ends a string: the filters go into the
/// subscription trie and the names into the retained tree, and both must
/// agree with the reference matcher for every pair. Invalid strings must be
/// refused by the validators, never reach the trees.
pub fn topics(data: &[u8]) {
    let strings: Vec<Vec<u8>> = data
        .split(|&b| b == 0xff)
        .take(24)
        .map(|s| {
            let levels: Vec<&[u8]> = s
                .iter()
                .take(12)
                .map(|&b| LEVELS[b as usize % LEVELS.len()])
                .collect();
            levels.join(&b'/')
        })
        .collect();
    let filters: Vec<String> = (strings.iter())
        .filter_map(|s| TopicFilter::new(Bytes::copy_from_slice(s), 128).ok())
        .map(|f| f.as_str().to_owned())
        .collect();
    let names: Vec<String> = (strings.iter())
        .filter_map(|s| TopicName::new(Bytes::copy_from_slice(s), 128).ok())
        .map(|n| n.as_str().to_owned())
        .collect();
    // U+0000 and ill-formed UTF-8 are refused [MQTT-1.5.4-1/2].
    assert!(filters.iter().chain(&names).all(|v| !v.contains('\0')));
    let mut trie = Trie::new();
    for f in &filters {
        trie.get_or_insert_with(f, || f.clone());
    }
    let mut tree = TopicTree::new();
    for n in &names {
        tree.insert(n, n.clone());
    }
    let mut scratch = MatchScratch::new();
    for n in &names {
        let mut got = Vec::new();
        trie.for_each_match_with(n, &mut scratch, |f: &String| got.push(f.clone()));
        got.sort();
        let mut want: Vec<String> = filters.iter().filter(|f| matches(f, n)).cloned().collect();
        want.sort();
        want.dedup();
        assert_eq!(got, want, "trie, topic {n:?}");
    }
    for f in &filters {
        let mut got = Vec::new();
        tree.for_each_matching(f, |_, v: &String| got.push(v.clone()));
        got.sort();
        let mut want: Vec<String> = names.iter().filter(|n| matches(f, n)).cloned().collect();
        want.sort();
        want.dedup();
        assert_eq!(got, want, "retained tree, filter {f:?}");
    }
}

/// A configuration file: parsed, layered and validated as `ringmq -c` does.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = toml::from_str::<ringmq::config::FileConfig>(text) {
        let _ = file.resolve().map(|c| c.validate());
    }
}

/// A password file; what parses must write back and parse to the same users.
pub fn password_file(data: &[u8]) {
    use ringmq::auth::password::PasswordFile;
    let Ok(file) = PasswordFile::parse_bytes(data) else {
        return;
    };
    let again = PasswordFile::parse(&file.to_text()).expect("a written password file parses");
    let users = |f: &PasswordFile| {
        f.iter()
            .map(|(u, h)| (u.to_owned(), h.encode()))
            .collect::<Vec<_>>()
    };
    assert_eq!(users(&again), users(&file));
}

/// An ACL file, then the rights it gives an anonymous and a named client to
/// a few topics and filters (which must not panic either).
pub fn acl_file(data: &[u8]) {
    use ringmq::auth::acl::AclFile;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = AclFile::parse(text) else {
        return;
    };
    let file = Arc::new(file);
    for user in [None, Some("u"), Some("%c")] {
        let access = file.access_for("c/+#", user);
        for topic in ["a", "a/b", "$SYS/x", "c/+#/u", "", "/"] {
            access.may_publish(topic);
            access.may_read(topic);
        }
        for filter in ["#", "+/#", "a/+", "$SYS/#", "$share/g/a"] {
            let _ = access.subscribe(filter);
        }
    }
}

/// Journal records as recovery replays them: each record is a 2-byte
/// little-endian length and that many bytes. Corrupt records are errors,
/// never panics.
pub fn journal(data: &[u8]) {
    let mut records = Vec::new();
    let mut rest = data;
    while let [lo, hi, tail @ ..] = rest {
        let len = u16::from_le_bytes([*lo, *hi]) as usize;
        let (record, tail) = tail.split_at(len.min(tail.len()));
        records.push(Bytes::copy_from_slice(record));
        rest = tail;
    }
    replay(records);
}

/// Replays records as the store does at start, up to the first corrupt one.
fn replay(records: Vec<Bytes>) {
    use ringmq::durable::journal::Replay;
    let mut replay = Replay::new(ringmq::durable::Epoch(1));
    for record in records {
        if replay.apply(record).is_err() {
            return;
        }
    }
    let _ = replay.finish();
}

/// A log segment on disk, read by recovery. The first byte chooses: the rest
/// as the raw file (headers, checksums and all), or split into records that
/// get a valid header and checksums, so the fuzzer reaches the replay.
pub fn log_file(data: &[u8]) {
    use ringmq::persist::{encode_header, encode_record, recover, segment_path};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch_dir();
    let mut file = Vec::new();
    if mode & 1 == 0 {
        file.extend_from_slice(rest);
    } else {
        file.extend_from_slice(&encode_header(1, (mode >> 1) as u16 & 1));
        for record in rest.split(|&b| b == 0xfe) {
            encode_record(&mut file, record);
        }
    }
    std::fs::write(segment_path(&dir, 1), &file).expect("writing the segment");
    if let Ok(recovered) = recover(&dir) {
        replay(recovered.records);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new empty directory of this call's own (callers may run in parallel,
/// as the regression tests do); `log_file` removes it when done.
fn scratch_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ringmq-fuzz-log-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the fuzz scratch directory");
    dir
}

/// A WebSocket upgrade, then the input as frames (binary messages are MQTT
/// bytes for the decoder); messages are capped at 64 KiB. When the first
/// byte is odd the input is the upgrade request itself instead.
pub fn websocket(data: &[u8]) {
    websocket_payload(data);
}

/// What `websocket` hands the decoder: the binary messages' bytes (exposed so
/// a test can check the seeds get past the upgrade).
pub fn websocket_payload(data: &[u8]) -> BytesMut {
    use ringmq::server::transport::ws::{read_messages, start, Handshake};
    use ringmq::server::transport::WsSettings;
    let settings = WsSettings {
        path: "/mqtt".into(),
        max_message: 64 << 10,
    };
    let fuzz_request = data.first().is_some_and(|b| b & 1 == 1);
    let (mut request, frames) = if fuzz_request {
        (BytesMut::from(data), &[][..])
    } else {
        let request = &b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"[..];
        (BytesMut::from(request), data)
    };
    let Handshake::Done(mut ws) = start(&settings, &mut request) else {
        return BytesMut::new();
    };
    // A client sends frames only after the 101 answer.
    ws.get_mut().incoming.extend_from_slice(frames);
    let mut out = BytesMut::new();
    // Reads until the input is used up (a few rounds at most: each reads
    // until tungstenite would block), a close or an error.
    for _ in 0..4 {
        match read_messages(&mut ws, &mut out) {
            Ok(false) if !ws.get_ref().incoming.is_empty() => {}
            _ => break,
        }
    }
    packets(&out, Protocol::V5);
    out
}
