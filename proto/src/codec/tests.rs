//! Golden bytes from the specification, prefixes, malformed input and round trips.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const MAX: u32 = 1 << 20;

fn decode_all(bytes: &[u8], protocol: Protocol) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, protocol, MAX)
}

fn encode_to_vec(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    assert_eq!(
        out.len(),
        encoded_len(packet, protocol),
        "encoded_len agrees"
    );
    out.to_vec()
}

fn pid(v: u16) -> Pid {
    Pid::new(v).unwrap()
}

/// A minimal 3.1.1 CONNECT: clean session, keep-alive 60, client id "abc".
const CONNECT_311: &[u8] = &[
    0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 3, b'a', b'b', b'c',
];

#[test]
fn golden_connect_311() {
    let Some(Packet::Connect(c)) = decode_all(CONNECT_311, Protocol::V3_1_1).unwrap() else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.protocol, Protocol::V3_1_1);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert_eq!(&c.client_id[..], b"abc");
    assert_eq!(
        encode_to_vec(&Packet::Connect(c), Protocol::V3_1_1),
        CONNECT_311
    );
}

/// Mosquitto's bridges (`try_private`) set the top bit of the level: 0x84.
#[test]
fn golden_connect_from_a_311_bridge() {
    let mut bytes = CONNECT_311.to_vec();
    bytes[8] = 0x84;
    let Some(Packet::Connect(c)) = decode_all(&bytes, Protocol::V3_1_1).unwrap() else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.protocol, Protocol::V3_1_1);
    assert!(c.bridge);
    assert_eq!(encode_to_vec(&Packet::Connect(c), Protocol::V3_1_1), bytes);
    let Some(Packet::Connect(plain)) = decode_all(CONNECT_311, Protocol::V3_1_1).unwrap() else {
        panic!("not a CONNECT")
    };
    assert!(!plain.bridge);
    // 5.0 has No Local instead: a flagged 5.0 level is not a level at all.
    bytes[8] = 0x85;
    assert_eq!(
        decode_all(&bytes, Protocol::V3_1_1),
        Err(DecodeError::UnsupportedProtocolLevel(0x85))
    );
}

#[test]
fn golden_publish_qos1() {
    let bytes = [0x32, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i'];
    let Some(Packet::Publish(p)) = decode_all(&bytes, Protocol::V3_1_1).unwrap() else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.qos_pid, QosPid::AtLeastOnce(pid(7)));
    assert_eq!(&p.topic[..], b"a/b");
    assert_eq!(&p.payload[..], b"hi");
    assert_eq!(encode_to_vec(&Packet::Publish(p), Protocol::V3_1_1), bytes);
}

#[test]
fn golden_small_packets() {
    let cases: Vec<(Packet, &[u8])> = vec![
        (Packet::PingReq, &[0xc0, 0]),
        (Packet::PingResp, &[0xd0, 0]),
        (Packet::PubAck(Ack::new(pid(1))), &[0x40, 2, 0, 1]),
        (Packet::PubRec(Ack::new(pid(2))), &[0x50, 2, 0, 2]),
        (Packet::PubRel(Ack::new(pid(3))), &[0x62, 2, 0, 3]),
        (Packet::PubComp(Ack::new(pid(4))), &[0x70, 2, 0, 4]),
        (Packet::Disconnect(Disconnect::default()), &[0xe0, 0]),
        (
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: 0,
                properties: Properties::default(),
            }),
            &[0x20, 2, 1, 0],
        ),
        (
            Packet::SubAck(SubAck {
                pid: pid(10),
                codes: vec![0, 1, 2, 0x80],
                properties: Properties::default(),
            }),
            &[0x90, 6, 0, 10, 0, 1, 2, 0x80],
        ),
        (
            Packet::UnsubAck(UnsubAck {
                pid: pid(5),
                codes: vec![],
                properties: Properties::default(),
            }),
            &[0xb0, 2, 0, 5],
        ),
    ];
    for (packet, bytes) in cases {
        assert_eq!(
            encode_to_vec(&packet, Protocol::V3_1_1),
            bytes,
            "{packet:?}"
        );
        let decoded = decode_all(bytes, Protocol::V3_1_1).unwrap().unwrap();
        assert_eq!(decoded, packet);
    }
}

#[test]
fn golden_subscribe_311() {
    let bytes = [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 1];
    let Some(Packet::Subscribe(s)) = decode_all(&bytes, Protocol::V3_1_1).unwrap() else {
        panic!("not SUBSCRIBE")
    };
    assert_eq!(s.filters.len(), 1);
    assert_eq!(s.filters[0].1.qos, QoS::AtLeastOnce);
    assert_eq!(
        encode_to_vec(&Packet::Subscribe(s), Protocol::V3_1_1),
        bytes
    );
}

#[test]
fn every_prefix_needs_more() {
    let frames: Vec<Vec<u8>> = vec![
        CONNECT_311.to_vec(),
        vec![0x32, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i'],
        vec![0x82, 8, 0, 1, 0, 3, b'a', b'/', b'#', 1],
        vec![0xc0, 0],
        big_publish_frame(70_000),
    ];
    for frame in frames {
        for cut in 0..frame.len() {
            let mut buf = BytesMut::from(&frame[..cut]);
            assert_eq!(
                decode(&mut buf, Protocol::V3_1_1, MAX),
                Ok(None),
                "prefix {cut}"
            );
            assert_eq!(buf.len(), cut, "an incomplete frame is left untouched");
        }
        assert!(decode_all(&frame, Protocol::V3_1_1).unwrap().is_some());
    }
}

fn big_publish_frame(payload: usize) -> Vec<u8> {
    let p = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: Bytes::from_static(b"t"),
        properties: Properties::default(),
        payload: Bytes::from(vec![7u8; payload]),
    });
    encode_to_vec(&p, Protocol::V3_1_1)
}

#[test]
fn oversize_rejected_from_fixed_header() {
    // Declares 200 MB with only the fixed header present: refused before buffering.
    let header = [0x30, 0x80, 0x80, 0x80, 0x60];
    let err = decode_all(&header, Protocol::V3_1_1).unwrap_err();
    assert!(matches!(err, DecodeError::PacketTooLarge { .. }));
    assert_eq!(err.reason_code(), 0x95);
}

#[test]
fn fifth_length_byte_is_malformed() {
    let bytes = [0x30, 0xff, 0xff, 0xff, 0xff, 0x01];
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, Protocol::V3_1_1, u32::MAX),
        Err(DecodeError::MalformedRemainingLength)
    );
}

#[test]
fn malformed_packets_are_errors() {
    let cases: &[&[u8]] = &[
        &[0x00, 0],                                                     // reserved type 0
        &[0xf0, 0],                                                     // AUTH is 5.0 only
        &[0x36, 2, 0, 1],                                               // QoS 3
        &[0x38, 3, 0, 1, b'a'],                                         // DUP on QoS 0
        &[0x32, 5, 0, 1, b'a', 0, 0],                                   // packet id 0
        &[0x60, 2, 0, 1],                                               // PUBREL with wrong flags
        &[0x80, 6, 0, 1, 0, 1, b'a', 0], // SUBSCRIBE with wrong flags
        &[0x82, 2, 0, 1],                // SUBSCRIBE without filters
        &[0x82, 6, 0, 1, 0, 1, b'a', 4], // reserved subscription bits (3.1.1)
        &[0x30, 4, 0, 2, 0xc3, 0x28],    // invalid UTF-8 topic
        &[0x30, 4, 0, 2, b'a', 0],       // U+0000 in topic
        &[0x40, 3, 0, 1, 0],             // PUBACK with a trailing byte (3.1.1)
        &[0xc0, 1, 0],                   // PINGREQ with a body
        &[0x10, 6, 0, 4, b'M', b'Q', b'T', b'T'], // truncated CONNECT
        &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 0, 0, 0], // reserved CONNECT flag
        &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 0, 0, 0], // password, no username
        &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x22, 0, 0, 0, 0], // will retain, no will
        &[0x10, 12, 0, 4, b'M', b'Q', b'X', b'X', 4, 0x02, 0, 0, 0, 0], // bad protocol name
    ];
    for bytes in cases {
        assert!(decode_all(bytes, Protocol::V3_1_1).is_err(), "{bytes:?}");
    }
}

#[test]
fn unsupported_level_is_its_own_error() {
    let bytes = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 9, 0x02, 0, 0, 0, 0];
    assert_eq!(
        decode_all(&bytes, Protocol::V3_1_1),
        Err(DecodeError::UnsupportedProtocolLevel(9))
    );
}

#[test]
fn v5_properties_round_trip_in_order() {
    let mut props = Properties::default();
    props.push(Property::UserProperty("b".into(), "2".into()));
    props.push(Property::MessageExpiryInterval(30));
    props.push(Property::UserProperty("a".into(), "1".into()));
    props.push(Property::SubscriptionIdentifier(300));
    let p = Packet::Publish(Publish {
        dup: true,
        qos_pid: QosPid::ExactlyOnce(pid(9)),
        retain: true,
        topic: Bytes::from_static(b"x/y"),
        properties: props,
        payload: Bytes::from_static(b"payload"),
    });
    let bytes = encode_to_vec(&p, Protocol::V5);
    assert_eq!(decode_all(&bytes, Protocol::V5).unwrap().unwrap(), p);
}

#[test]
fn v5_duplicate_property_is_protocol_error() {
    // PUBLISH qos0 topic "a", properties: two message expiry intervals.
    let bytes = [0x30, 14, 0, 1, b'a', 10, 2, 0, 0, 0, 1, 2, 0, 0, 0, 2];
    let err = decode_all(&bytes, Protocol::V5).unwrap_err();
    assert_eq!(err, DecodeError::DuplicateProperty(2));
    assert_eq!(err.reason_code(), 0x82);
}

#[test]
fn v5_ack_reason_codes() {
    let ack = Packet::PubAck(Ack {
        pid: pid(3),
        reason: 0x10,
        properties: Properties::default(),
    });
    assert_eq!(encode_to_vec(&ack, Protocol::V5), [0x40, 3, 0, 3, 0x10]);
    assert_eq!(
        decode_all(&[0x40, 3, 0, 3, 0x10], Protocol::V5)
            .unwrap()
            .unwrap(),
        ack
    );
    // Reason 0 with no properties shortens to the 3.1.1 form.
    let ok = Packet::PubAck(Ack::new(pid(3)));
    assert_eq!(encode_to_vec(&ok, Protocol::V5), [0x40, 2, 0, 3]);
}

fn arb_bytes_str() -> impl Strategy<Value = Bytes> {
    "[a-z0-9/]{0,20}".prop_map(Bytes::from)
}

fn arb_qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// User properties only: allowed in every packet.
fn arb_user_props(v5: bool) -> impl Strategy<Value = Properties> {
    let prop = (arb_bytes_str(), arb_bytes_str()).prop_map(|(k, v)| Property::UserProperty(k, v));
    proptest::collection::vec(prop, 0..4)
        .prop_map(move |v| Properties(if v5 { v } else { Vec::new() }))
}

/// Properties a PUBLISH may carry.
fn arb_props(v5: bool) -> impl Strategy<Value = Properties> {
    // Only repeatable properties in the list, plus at most one content type.
    let prop = prop_oneof![
        (arb_bytes_str(), arb_bytes_str()).prop_map(|(k, v)| Property::UserProperty(k, v)),
        (1u32..1_000_000).prop_map(Property::SubscriptionIdentifier),
    ];
    let list = proptest::collection::vec(prop, 0..4);
    (list, proptest::option::of(arb_bytes_str())).prop_map(move |(mut v, content_type)| {
        v.extend(content_type.map(Property::ContentType));
        Properties(if v5 { v } else { Vec::new() })
    })
}

fn arb_packet(v5: bool) -> impl Strategy<Value = Packet> {
    let publish = (
        any::<bool>(),
        arb_qos(),
        1u16..,
        any::<bool>(),
        arb_bytes_str(),
        arb_props(v5),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(dup, qos, id, retain, topic, properties, payload)| {
            Packet::Publish(Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos_pid: QosPid::new(qos, pid(id)),
                retain,
                topic,
                properties,
                payload: payload.into(),
            })
        });
    let subscribe = (
        1u16..,
        proptest::collection::vec((arb_bytes_str(), arb_qos()), 1..5),
        arb_user_props(v5),
    )
        .prop_map(|(id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                pid: pid(id),
                filters: filters
                    .into_iter()
                    .map(|(f, qos)| {
                        (
                            f,
                            SubOptions {
                                qos,
                                ..Default::default()
                            },
                        )
                    })
                    .collect(),
                properties,
            })
        });
    let connect = (
        any::<bool>(),
        any::<u16>(),
        arb_bytes_str(),
        proptest::option::of((arb_bytes_str(), arb_bytes_str(), arb_qos(), any::<bool>())),
        proptest::option::of(arb_bytes_str()),
        arb_user_props(v5),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, user, properties)| {
                Packet::Connect(Box::new(Connect {
                    protocol: if v5 { Protocol::V5 } else { Protocol::V3_1_1 },
                    clean_start,
                    keep_alive,
                    client_id,
                    will: will.map(|(topic, payload, qos, retain)| Will {
                        topic,
                        payload,
                        qos,
                        retain,
                        properties: Properties::default(),
                    }),
                    password: user.clone(),
                    username: user,
                    properties,
                    bridge: false,
                }))
            },
        );
    prop_oneof![publish, subscribe, connect]
}

proptest! {
    #[test]
    fn round_trip_311(packet in arb_packet(false)) {
        let bytes = encode_to_vec(&packet, Protocol::V3_1_1);
        prop_assert_eq!(decode_all(&bytes, Protocol::V3_1_1).unwrap().unwrap(), packet);
    }

    #[test]
    fn round_trip_v5(packet in arb_packet(true)) {
        let bytes = encode_to_vec(&packet, Protocol::V5);
        prop_assert_eq!(decode_all(&bytes, Protocol::V5).unwrap().unwrap(), packet);
    }

    /// Arbitrary bytes never panic and never report consuming more than was there.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), v5 in any::<bool>()) {
        let protocol = if v5 { Protocol::V5 } else { Protocol::V3_1_1 };
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode(&mut buf, protocol, 1024);
        prop_assert!(buf.len() <= bytes.len());
    }
}

#[test]
fn v5_property_in_the_wrong_packet_is_rejected() {
    // PUBLISH carrying Session Expiry Interval (CONNECT/CONNACK/DISCONNECT only).
    let bytes = [0x30, 9, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1];
    assert_eq!(
        decode_all(&bytes, Protocol::V5),
        Err(DecodeError::PropertyNotAllowed(0x11))
    );
    // The same property in DISCONNECT is fine.
    let ok = [0xe0, 7, 0, 5, 0x11, 0, 0, 0, 1];
    assert!(decode_all(&ok, Protocol::V5).unwrap().is_some());
}

#[test]
fn non_minimal_remaining_length_is_malformed() {
    // 0 encoded in two bytes (0x80 0x00) [MQTT-1.5.5-1].
    assert_eq!(
        decode_all(&[0xc0, 0x80, 0x00], Protocol::V3_1_1),
        Err(DecodeError::MalformedRemainingLength)
    );
}

#[test]
fn unknown_property_and_property_flood_are_refused() {
    // PUBLISH with property id 0x7f (unknown).
    let unknown = [0x30, 6, 0, 1, b'a', 2, 0x7f, 0];
    assert_eq!(
        decode_all(&unknown, Protocol::V5),
        Err(DecodeError::UnknownProperty(0x7f))
    );
    // 300 user properties: past the cap, refused before they are all kept.
    let mut props = Properties::default();
    for _ in 0..300 {
        props.push(Property::UserProperty("k".into(), "v".into()));
    }
    let flood = Packet::Publish(Publish {
        dup: false,
        qos_pid: QosPid::AtMostOnce,
        retain: false,
        topic: Bytes::from_static(b"a"),
        properties: props,
        payload: Bytes::new(),
    });
    let bytes = encode_to_vec(&flood, Protocol::V5);
    let err = decode_all(&bytes, Protocol::V5).unwrap_err();
    assert_eq!(err, DecodeError::TooManyProperties);
    assert_eq!(err.reason_code(), 0x97);
}
