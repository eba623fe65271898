//! What the broker under test says it is: `$SYS/broker/version`, read once
//! before a run over a plain MQTT 3.1.1 connection (blocking, bounded), so a
//! report names the broker's version beside its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq_proto::codec::{
    self, Connect, Packet, Pid, Properties, Protocol, QoS, SubOptions, Subscribe,
};

/// How long the broker has to answer.
const WAIT: Duration = Duration::from_secs(2);

/// The retained `$SYS/broker/version` of the broker at `addr`; `None` when it
/// publishes none (or refuses an anonymous client) within [`WAIT`].
pub fn broker_version(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    stream.set_write_timeout(Some(WAIT)).ok()?;
    let mut out = BytesMut::new();
    codec::encode(&connect(), Protocol::V3_1_1, &mut out);
    codec::encode(&subscribe(), Protocol::V3_1_1, &mut out);
    codec::encode(
        &Packet::Disconnect(Default::default()),
        Protocol::V3_1_1,
        &mut out,
    );
    let deadline = Instant::now() + WAIT;
    // DISCONNECT goes only once the version came: the broker would close first.
    let (hello, bye) = out.split_at(out.len() - 2);
    stream.write_all(hello).ok()?;
    let mut buf = BytesMut::with_capacity(4096);
    while Instant::now() < deadline {
        while let Ok(Some(packet)) = codec::decode(&mut buf, Protocol::V3_1_1, 1 << 20) {
            match packet {
                Packet::ConnAck(ack) if ack.code != 0 => return None,
                Packet::Publish(p) if &p.topic[..] == b"$SYS/broker/version" => {
                    let _ = stream.write_all(bye);
                    return Some(String::from_utf8_lossy(&p.payload).into_owned());
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    None
}

fn connect() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V3_1_1,
        clean_start: true,
        keep_alive: 10,
        client_id: Bytes::from_static(b""),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
        bridge: false,
    }))
}

fn subscribe() -> Packet {
    Packet::Subscribe(Subscribe {
        pid: Pid::new(1).expect("1 is a packet id"),
        filters: vec![(
            Bytes::from_static(b"$SYS/broker/version"),
            SubOptions {
                qos: QoS::AtMostOnce,
                ..SubOptions::default()
            },
        )],
        properties: Properties::default(),
    })
}
