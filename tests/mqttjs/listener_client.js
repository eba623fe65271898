// One MQTT.js client of the test with a subscriber and a publisher on every
// listener (tests/e2e_interop.rs); the same roles as
// tests/paho/listener_client.py.
//
//   node listener_client.js sub URL CA VERSION ID FILTER PUBLISHERS
//     subscribes to FILTER at QoS 2, prints `READY`, then one line
//     `MSG <topic> <qos> <payload>` per message, until it has the marker
//     `end-<P>` of every publisher P of PUBLISHERS (comma-separated ids);
//   node listener_client.js pub URL CA VERSION ID TOPIC QOS:COUNT
//     publishes COUNT messages `<ID>-<i>` (i from 0) at QOS to TOPIC, each
//     acknowledged, then its marker `end-<ID>`.
//
// URL is mqtt://, ws:// or wss://HOST:PORT[/mqtt], CA a CA file for TLS or
// `-` for none, VERSION `5` or `3.1.1`. Prints `OK ...` last on success.

'use strict';

const { Client, fail, namedArgs, ok } = require('./_common');

const a = namedArgs('role', 'url', 'ca', 'version', 'id', 'topic', 'arg');

(async () => {
  const c = await new Client(a.url, a.id, { version: a.version, ca: a.ca === '-' ? null : a.ca }).connect();
  if (a.role === 'sub') {
    await c.subscribe(a.topic, 2);
    console.log('READY');
    const waiting = new Set(a.arg.split(',').map((p) => `end-${p}`));
    let n = 0;
    while (waiting.size > 0) {
      const m = await c.recv('message or marker');
      const payload = m.payload.toString();
      console.log(`MSG ${m.topic} ${m.qos} ${payload}`);
      waiting.delete(payload);
      n += 1;
    }
    await c.end();
    ok(`${a.id}: ${n} messages, every marker`);
  } else if (a.role === 'pub') {
    const [qos, count] = a.arg.split(':').map(Number);
    for (let i = 0; i < count; i++) await c.publish(a.topic, `${a.id}-${i}`, qos);
    await c.publish(a.topic, `end-${a.id}`, qos);
    await c.end();
    ok(`${a.id}: ${count} messages at QoS ${qos} and the marker`);
  } else {
    fail(`ROLE must be sub or pub, not ${JSON.stringify(a.role)}`);
  }
})().catch((e) => {
  console.log(`FAIL ${e.stack || e}`);
  process.exit(1);
});
