// MQTT.js over the WebSocket listeners: ws://HOST:WS_PORT/mqtt and
// wss://HOST:WSS_PORT/mqtt (the CA given, the broker's certificate verified),
// as MQTT 5 or 3.1.1 (VERSION is `5` or `3.1.1`).
//
// Over each of ws and wss:
// - round trips through the broker on one connection: subscriptions at QoS
//   0, 1 and 2, a publish at QoS 0, 1 and 2 to each (nine messages, each
//   delivered once at the lower of the two QoS);
// - across listeners: an MQTT.js client on mqtt:// (plain TCP) sends QoS 1
//   and 2 messages to a WebSocket subscriber, and the reverse;
// - a 200 KB message (WebSocket frames with a 64-bit length, TLS records of
//   16 KiB) from the broker to the client; from the client to the broker
//   over ws only: over TLS that is large_message.js's test
//   (tests/e2e_interop.rs, `tls_listeners_take_publishes_over_16_kib`).
// Each delivery set ends with a marker from the same publisher: nothing (no
// second copy) may come before it.
//
// Usage: node round_trips.js HOST TCP_PORT WS_PORT WSS_PORT CA VERSION

'use strict';

const { Client, MQTTJS_VERSION, check, namedArgs, ok } = require('./_common');

const a = namedArgs('host', 'tcp_port', 'ws_port', 'wss_port', 'ca', 'version');
const tag = a.version === '5' ? 'v5' : 'v311';
const LISTENERS = {
  tcp: { url: `mqtt://${a.host}:${a.tcp_port}`, ca: null },
  ws: { url: `ws://${a.host}:${a.ws_port}/mqtt`, ca: null },
  wss: { url: `wss://${a.host}:${a.wss_port}/mqtt`, ca: a.ca },
};

async function client(listener, role) {
  const { url, ca } = LISTENERS[listener];
  return new Client(url, `mqttjs-${tag}-${listener}-${role}`, { version: a.version, ca }).connect();
}

// `n` messages as a sorted list of `topic payload qos` strings.
async function deliveries(sub, n, what) {
  const got = await sub.recvN(n, what);
  return got.map((m) => `${m.topic} ${m.payload.toString()} ${m.qos}`).sort();
}

function same(got, expected, what) {
  check(JSON.stringify(got) === JSON.stringify(expected.slice().sort()),
    `${what}: got ${JSON.stringify(got)}, expected ${JSON.stringify(expected.slice().sort())}`);
}

async function roundTrips(listener) {
  const c = await client(listener, 'rt');
  const base = `mqttjs/${tag}/${listener}/rt`;
  for (const q of [0, 1, 2]) await c.subscribe(`${base}/${q}`, q);
  const expected = [];
  for (const subQ of [0, 1, 2]) {
    for (const pubQ of [0, 1, 2]) {
      const payload = `pub${pubQ}-sub${subQ}`;
      await c.publish(`${base}/${subQ}`, payload, pubQ);
      expected.push(`${base}/${subQ} ${payload} ${Math.min(subQ, pubQ)}`);
    }
  }
  same(await deliveries(c, expected.length, `${listener} round trips`), expected, `${listener} round trips`);
  await c.publish(`${base}/2`, 'rt-end', 2);
  await c.expectMarker('rt-end', `${listener} round trips: only the nine`);
  if (listener === 'ws') {
    await c.publish(`${base}/1`, BIG, 1);
    checkBig(await c.recv(`${listener} 200 KB message`), `${base}/1`, `${listener} round trip`);
  }
  await c.end();
}

const BIG = Buffer.alloc(200 * 1024);
for (let i = 0; i < BIG.length; i++) BIG[i] = i % 251;

function checkBig(m, topic, what) {
  check(m.topic === topic && m.payload.equals(BIG) && m.qos === 1,
    `${what}: 200 KB message: ${m.topic} ${m.payload.length} bytes QoS ${m.qos}`);
}

// TCP -> `listener` and `listener` -> TCP, QoS 1 and 2.
async function across(listener) {
  const plain = await client('tcp', `x-${listener}`);
  const ws = await client(listener, 'x');
  const base = `mqttjs/${tag}/x/${listener}`;
  await ws.subscribe(`${base}/down`, 2);
  await plain.subscribe(`${base}/up`, 2);
  for (const [pub, sub, way] of [[plain, ws, 'down'], [ws, plain, 'up']]) {
    const topic = `${base}/${way}`;
    const expected = [];
    for (const q of [1, 2]) {
      await pub.publish(topic, `${way}-q${q}`, q);
      expected.push(`${topic} ${way}-q${q} ${q}`);
    }
    same(await deliveries(sub, 2, `${pub.id} -> ${sub.id}`), expected, `${pub.id} -> ${sub.id}`);
    await pub.publish(topic, 'x-end', 1);
    await sub.expectMarker('x-end', `${pub.id} -> ${sub.id}: each message once`);
  }
  await plain.publish(`${base}/down`, BIG, 1);
  checkBig(await ws.recv('200 KB message'), `${base}/down`, `tcp -> ${listener}`);
  await plain.end();
  await ws.end();
}

(async () => {
  for (const listener of ['ws', 'wss']) {
    await roundTrips(listener);
    await across(listener);
  }
  ok(`MQTT.js ${MQTTJS_VERSION} MQTT ${a.version} over ws and wss: QoS 0/1/2 round trips, ` +
    'tcp <-> ws, tcp <-> wss, 200 KB');
})().catch((e) => {
  console.log(`FAIL ${e.stack || e}`);
  process.exit(1);
});
