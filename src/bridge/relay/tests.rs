use super::*;
use crate::config::{BridgeFile, BridgeProtocol};

fn bridge(topics: &[&str]) -> Bridge {
    let file = BridgeFile {
        name: "b".into(),
        address: Some(crate::config::Addresses::One("127.0.0.1:1".into())),
        topic: topics.iter().map(|t| t.to_string()).collect(),
        max_inflight: Some(4),
        ..BridgeFile::default()
    };
    let b = file.resolve("h").unwrap();
    assert_eq!(b.protocol, BridgeProtocol::V5);
    b
}

fn peer(session_present: bool, receive_maximum: u16) -> Peer {
    Peer {
        protocol: Protocol::V5,
        session_present,
        receive_maximum,
        maximum_packet_size: 1 << 20,
        retain_available: true,
    }
}

fn publish(topic: &str, qos: QoS, pid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::new(qos, Pid::new(pid).unwrap()),
        retain: false,
        topic: Bytes::from(topic.to_owned()),
        properties: Properties::default(),
        payload: Bytes::from_static(b"x"),
    })
}

fn ack(pid: u16) -> Ack {
    Ack::new(Pid::new(pid).unwrap())
}

/// The relay with both links up and the SUBSCRIBEs drained.
fn connected(topics: &[&str]) -> Relay {
    let mut r = Relay::new(&bridge(topics));
    r.up(Side::Local, peer(false, 20));
    r.up(Side::Remote, peer(false, 20));
    r.drain();
    r
}

/// (side, packet name, topic or pid) of each packet sent.
fn sent(r: &mut Relay) -> Vec<(Side, &'static str, String)> {
    r.drain()
        .into_iter()
        .map(|s| {
            let what = match &s.packet {
                Packet::Publish(p) => format!(
                    "{} q{} {}{}",
                    String::from_utf8_lossy(&p.topic),
                    p.qos_pid.qos() as u8,
                    p.qos_pid.pid().map_or(0, Pid::get),
                    if p.dup { " dup" } else { "" }
                ),
                Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                    a.pid.get().to_string()
                }
                Packet::Subscribe(s) => s
                    .filters
                    .iter()
                    .map(|(f, o)| format!("{} nl={}", String::from_utf8_lossy(f), o.no_local))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => String::new(),
            };
            (s.side, s.packet.name(), what)
        })
        .collect()
}

use Side::{Local, Remote};

fn row(side: Side, name: &'static str, what: &str) -> (Side, &'static str, String) {
    (side, name, what.to_owned())
}

#[test]
fn each_side_is_subscribed_with_no_local_on_up() {
    let mut r = Relay::new(&bridge(&["a/# out 1", "b/# in 2", "c both 0 l/ r/"]));
    r.up(Local, peer(false, 20));
    assert_eq!(
        sent(&mut r),
        [row(Local, "SUBSCRIBE", "a/# nl=true,l/c nl=true")]
    );
    r.up(Remote, peer(false, 20));
    assert_eq!(
        sent(&mut r),
        [row(Remote, "SUBSCRIBE", "b/# nl=true,r/c nl=true")]
    );
}

#[test]
fn qos1_is_acknowledged_at_the_source_only_after_the_sink() {
    let mut r = connected(&["a/# out 1"]);
    r.packet(Local, publish("a/x", QoS::AtLeastOnce, 7));
    assert_eq!(sent(&mut r), [row(Remote, "PUBLISH", "a/x q1 1")]);
    r.packet(Remote, Packet::PubAck(ack(1)));
    assert_eq!(sent(&mut r), [row(Local, "PUBACK", "7")]);
    assert_eq!(r.counts.forwarded, [1, 0]);
    assert_eq!(r.pending(Local), 0);
}

#[test]
fn held_messages_cross_once_the_sink_returns_and_in_flight_ones_are_resent() {
    let mut r = connected(&["a/# out 1"]);
    r.packet(Local, publish("a/1", QoS::AtLeastOnce, 1));
    r.down(Remote);
    r.packet(Local, publish("a/2", QoS::AtLeastOnce, 2));
    r.packet(Local, publish("a/0", QoS::AtMostOnce, 1));
    r.drain();
    assert_eq!(r.counts.dropped[Drop::LinkDown as usize], 1);
    assert_eq!(r.pending(Local), 2);
    // The remote kept its session: a/1 again as a redelivery, then a/2.
    r.up(Remote, peer(true, 20));
    assert_eq!(
        sent(&mut r),
        [
            row(Remote, "PUBLISH", "a/1 q1 1 dup"),
            row(Remote, "PUBLISH", "a/2 q1 2"),
        ]
    );
    r.packet(Remote, Packet::PubAck(ack(2)));
    r.packet(Remote, Packet::PubAck(ack(1)));
    assert_eq!(
        sent(&mut r),
        [row(Local, "PUBACK", "2"), row(Local, "PUBACK", "1")]
    );
}

#[test]
fn a_sink_without_its_session_gets_everything_again_as_new() {
    let mut r = connected(&["a/# out 2"]);
    r.packet(Local, publish("a/1", QoS::ExactlyOnce, 1));
    r.packet(Local, publish("a/2", QoS::ExactlyOnce, 2));
    r.packet(Remote, Packet::PubRec(ack(2)));
    assert_eq!(r.pending(Local), 2, "a/1 in flight, a/2 releasing");
    r.drain();
    r.down(Remote);
    r.up(Remote, peer(false, 20));
    let out = sent(&mut r);
    // The SUBSCRIBE is absent (no inward route); a/1 goes again, a/2's PUBREL
    // is forgotten with the session that knew it.
    assert_eq!(out, [row(Remote, "PUBLISH", "a/1 q2 3")]);
}

#[test]
fn qos2_completes_at_both_ends() {
    let mut r = connected(&["a/# out 2"]);
    r.packet(Local, publish("a/x", QoS::ExactlyOnce, 5));
    assert_eq!(sent(&mut r), [row(Remote, "PUBLISH", "a/x q2 1")]);
    r.packet(Remote, Packet::PubRec(ack(1)));
    assert_eq!(
        sent(&mut r),
        [row(Remote, "PUBREL", "1"), row(Local, "PUBREC", "5")]
    );
    // A redelivery of the PUBLISH after our PUBREC was lost gets it again.
    r.packet(Local, publish("a/x", QoS::ExactlyOnce, 5));
    assert_eq!(sent(&mut r), [row(Local, "PUBREC", "5")]);
    r.packet(Local, Packet::PubRel(ack(5)));
    assert_eq!(sent(&mut r), [row(Local, "PUBCOMP", "5")]);
    r.packet(Remote, Packet::PubComp(ack(1)));
    assert!(sent(&mut r).is_empty());
    assert_eq!(r.pending(Local), 0);
}

#[test]
fn a_redelivered_message_already_held_is_not_sent_twice() {
    let mut r = connected(&["a/# out 1"]);
    r.packet(Local, publish("a/x", QoS::AtLeastOnce, 9));
    r.drain();
    r.packet(Local, publish("a/x", QoS::AtLeastOnce, 9));
    assert!(sent(&mut r).is_empty());
    assert_eq!(r.counts.duplicates, 1);
}

#[test]
fn the_sinks_receive_maximum_bounds_what_is_in_flight() {
    let mut r = Relay::new(&bridge(&["a/# out 1"]));
    r.up(Local, peer(false, 20));
    r.up(Remote, peer(false, 2));
    r.drain();
    for pid in 1..=4 {
        r.packet(Local, publish("a/x", QoS::AtLeastOnce, pid));
    }
    assert_eq!(sent(&mut r).len(), 2);
    r.packet(Remote, Packet::PubAck(ack(1)));
    let out = sent(&mut r);
    assert_eq!(out[0], row(Local, "PUBACK", "1"));
    assert_eq!(out[1].1, "PUBLISH");
    assert_eq!(r.pending(Local), 3);
    // max_inflight 4: past twice that held, the bridge stops reading.
    assert!(r.accepts(Local));
    for pid in 10..16 {
        r.packet(Local, publish("a/x", QoS::AtLeastOnce, pid));
    }
    assert!(!r.accepts(Local));
}

#[test]
fn inward_topics_trade_prefixes() {
    let mut r = connected(&["# in 1 site/ cloud/"]);
    r.packet(Remote, publish("cloud/t/1", QoS::AtLeastOnce, 3));
    assert_eq!(sent(&mut r), [row(Local, "PUBLISH", "site/t/1 q1 1")]);
    r.packet(Local, Packet::PubAck(ack(1)));
    assert_eq!(sent(&mut r), [row(Remote, "PUBACK", "3")]);
}

#[test]
fn acknowledgements_wait_for_a_source_that_keeps_its_session() {
    let mut r = connected(&["# in 1"]);
    r.packet(Remote, publish("t", QoS::AtLeastOnce, 3));
    r.drain();
    r.down(Remote);
    r.packet(Local, Packet::PubAck(ack(1)));
    assert!(sent(&mut r).is_empty());
    r.up(Remote, peer(true, 20));
    let out = sent(&mut r);
    assert!(out.contains(&row(Remote, "PUBACK", "3")), "{out:?}");
}

#[test]
fn a_source_that_lost_its_session_may_reuse_ids() {
    let mut r = connected(&["# in 1"]);
    r.packet(Remote, publish("t", QoS::AtLeastOnce, 3));
    r.drain();
    r.down(Remote);
    r.up(Remote, peer(false, 20));
    r.drain();
    // Id 3 now names a new message: it crosses too.
    r.packet(Remote, publish("u", QoS::AtLeastOnce, 3));
    assert_eq!(sent(&mut r), [row(Local, "PUBLISH", "u q1 2")]);
    // The first one's PUBACK goes nowhere: the remote forgot it.
    r.packet(Local, Packet::PubAck(ack(1)));
    assert!(sent(&mut r).is_empty());
}

#[test]
fn too_large_for_the_sink_is_dropped_counted_and_acknowledged() {
    let mut r = Relay::new(&bridge(&["a/# out 1"]));
    r.up(Local, peer(false, 20));
    let mut small = peer(false, 20);
    small.maximum_packet_size = 16;
    r.up(Remote, small);
    r.drain();
    r.packet(Local, publish("a/a-long-topic-name", QoS::AtLeastOnce, 1));
    assert_eq!(sent(&mut r), [row(Local, "PUBACK", "1")]);
    assert_eq!(r.counts.dropped[Drop::TooLarge as usize], 1);
}

#[test]
fn refused_subscriptions_are_reported() {
    let mut r = Relay::new(&bridge(&["a/# out 1"]));
    r.up(Local, peer(false, 20));
    r.drain();
    let note = r.packet(
        Local,
        Packet::SubAck(crate::codec::SubAck {
            pid: Pid::MIN,
            codes: vec![0x87],
            properties: Properties::default(),
        }),
    );
    assert!(note.unwrap().contains("refused 1"));
    assert_eq!(r.counts.refused_filters, 1);
}
