// A 200 KB message from an MQTT.js client over a TLS listener (or any
// other) to a plain-TCP subscriber: acknowledged, and delivered intact. Over
// TLS the client's 16 KiB records arrive several to a TCP read (the
// test `tls_listeners_take_publishes_over_16_kib` in
// tests/e2e_interop.rs).
//
// Usage: node large_message.js PLAIN_URL URL CA
// (URL mqtt://, mqtts://, ws:// or wss://HOST:PORT[/mqtt]; CA a CA file
// for TLS or `-` for none)

'use strict';

const { Client, check, namedArgs, ok } = require('./_common');

const a = namedArgs('plain_url', 'url', 'ca');

(async () => {
  const sub = await new Client(a.plain_url, 'mqttjs-big-sub', { version: '5' }).connect();
  await sub.subscribe('mqttjs/big', 1);
  const ca = a.ca === '-' ? null : a.ca;
  const pub = await new Client(a.url, 'mqttjs-big-pub', { version: '5', ca }).connect();
  const big = Buffer.alloc(200 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = i % 251;
  await pub.publish('mqttjs/big', big, 1);
  const m = await sub.recv('200 KB message');
  check(m.payload.equals(big) && m.qos === 1, `200 KB message: ${m.payload.length} bytes QoS ${m.qos}`);
  await pub.end();
  await sub.end();
  ok(`200 KB over ${a.url} acknowledged and delivered`);
})().catch((e) => {
  console.log(`FAIL ${e.stack || e}`);
  process.exit(1);
});
