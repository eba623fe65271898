//! A message as it travels between nodes: the body of a NATS message (the
//! subject only routes it). A version byte, then the message in its durable
//! form (topic, payload, QoS, retain flag, 5.0 properties, publisher, and
//! the expiry as Unix milliseconds, so it keeps counting across nodes whose
//! clocks agree).

use bytes::{BufMut, Bytes, BytesMut};
use ringmq_proto::durable::{get_message, put_message, Corrupt, Cursor, Epoch};
use ringmq_proto::message::Message;

/// The version this build writes and reads.
const VERSION: u8 = 1;

/// The NATS body of `msg`.
pub fn encode(msg: &Message, epoch: Epoch) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.weight() + 32);
    out.put_u8(VERSION);
    put_message(&mut out, msg, epoch);
    out.freeze()
}

/// The message in a NATS body written by [`encode`] (on any node), marked
/// as from the cluster.
pub fn decode(body: Bytes, epoch: Epoch) -> Result<Message, Corrupt> {
    match body.first() {
        Some(&VERSION) => {}
        Some(&other) => return Err(Corrupt::Version(other)),
        None => return Err(Corrupt::Invalid("empty body")),
    }
    let mut cursor = Cursor::new(body.slice(1..));
    let mut msg = get_message(&mut cursor, epoch)?;
    if cursor.remaining() != 0 {
        return Err(Corrupt::Invalid("bytes after the message"));
    }
    msg.from_cluster = true;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_proto::codec::{Properties, Property, QoS};
    use ringmq_proto::time::Time;
    use ringmq_proto::topic::TopicName;

    fn message() -> Message {
        let topic = TopicName::new(Bytes::from_static(b"a/b"), 8).unwrap();
        let props = Properties(vec![
            Property::ContentType("text/plain".into()),
            Property::UserProperty("k".into(), "v".into()),
            Property::MessageExpiryInterval(30),
        ]);
        Message::new(topic, Bytes::from_static(b"hello"), QoS::ExactlyOnce, true)
            .with_properties(props, Time::from_millis(1_000))
            .from_client("pub-1".into())
    }

    #[test]
    fn a_message_crosses_with_everything_a_subscriber_sees() {
        let (here, there) = (Epoch(1_000_000), Epoch(1_500_000));
        let back = decode(encode(&message(), here), there).unwrap();
        assert_eq!(back.topic.as_str(), "a/b");
        assert_eq!(&back.payload[..], b"hello");
        assert_eq!(back.qos, QoS::ExactlyOnce);
        assert!(back.retain);
        assert!(back.from_cluster);
        assert_eq!(back.publisher.as_deref(), Some("pub-1"));
        assert_eq!(back.properties.0.len(), 2, "content type and user property");
        // Expiry: 31 s after this node's zero; the other node's zero is 500 s later.
        let at = back.expires_at.unwrap();
        assert_eq!(at, Time::ZERO, "already due there: 1_031_000 < 1_500_000");
        let same = decode(encode(&message(), here), here).unwrap();
        assert_eq!(same.expires_at, Some(Time::from_millis(31_000)));
    }

    #[test]
    fn bad_bodies_are_refused_not_trusted() {
        let good = encode(&message(), Epoch(0));
        assert!(matches!(
            decode(Bytes::new(), Epoch(0)),
            Err(Corrupt::Invalid(_))
        ));
        let mut other = BytesMut::from(&good[..]);
        other[0] = 9;
        assert!(matches!(
            decode(other.freeze(), Epoch(0)),
            Err(Corrupt::Version(9))
        ));
        for cut in 1..good.len() {
            assert!(decode(good.slice(..cut), Epoch(0)).is_err(), "cut at {cut}");
        }
        let mut longer = BytesMut::from(&good[..]);
        longer.put_u8(0);
        assert!(decode(longer.freeze(), Epoch(0)).is_err());
        // A huge length prefix allocates nothing: it is checked against what is left.
        let mut huge = BytesMut::new();
        huge.put_u8(VERSION);
        huge.put_u32_le(u32::MAX);
        assert!(decode(huge.freeze(), Epoch(0)).is_err());
    }
}
