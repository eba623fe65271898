// Shared helpers for the MQTT.js scenario scripts (npm `mqtt`, pinned in
// package-lock.json, installed by scripts/test.sh with `npm ci`).
//
// As the Paho scripts (tests/paho/_common.py): each script runs one scenario
// against a running ringmq broker, prints one result line (`OK ...` or
// `FAIL ...`), exits 0 on success and non-zero on failure. Every wait is
// bounded (STEP), and an alarm bounds the whole script. Scripts assert
// behaviour, not speed: "nothing else arrives" is checked with a marker sent
// after what must not arrive, on a path ordered with it.

'use strict';

const fs = require('fs');
const path = require('path');

const STEP = 5000; // longest wait for one expected event, ms
const SCRIPT_LIMIT = 16000; // whole-script bound, ms

function fail(msg) {
  console.log(`FAIL ${msg}`);
  process.exit(1);
}

function check(cond, msg) {
  if (!cond) fail(msg);
}

function ok(msg) {
  console.log(`OK ${msg}`);
  process.exit(0);
}

// The installed mqtt must be the one package-lock.json pins: a stale
// node_modules fails loudly instead of testing another version.
function loadMqtt() {
  const lock = JSON.parse(fs.readFileSync(path.join(__dirname, 'package-lock.json'), 'utf8'));
  const pinned = lock.packages['node_modules/mqtt'].version;
  let installed;
  try {
    installed = JSON.parse(
      fs.readFileSync(path.join(__dirname, 'node_modules/mqtt/package.json'), 'utf8'),
    ).version;
  } catch (e) {
    console.log(`FAIL npm mqtt is not installed in tests/mqttjs (${e.code}): ` +
      'run `npm ci --no-audit --no-fund` there (scripts/test.sh does this)');
    process.exit(3);
  }
  if (installed !== pinned) {
    console.log(`FAIL tests/mqttjs/node_modules has mqtt ${installed}, package-lock.json pins ` +
      `${pinned}: run \`npm ci --no-audit --no-fund\` there (scripts/test.sh does this)`);
    process.exit(3);
  }
  return { mqtt: require('mqtt'), version: installed };
}

const { mqtt, version: MQTTJS_VERSION } = loadMqtt();

// Positional arguments `names` as an object; arms the whole-script alarm.
function namedArgs(...names) {
  const argv = process.argv.slice(2);
  if (argv.length !== names.length) {
    console.log(`usage: ${path.basename(process.argv[1])} ${names.map((n) => n.toUpperCase()).join(' ')}`);
    process.exit(2);
  }
  setTimeout(() => {
    console.log(`FAIL script still running after ${SCRIPT_LIMIT / 1000} s`);
    process.exit(2);
  }, SCRIPT_LIMIT);
  return Object.fromEntries(names.map((n, i) => [n, argv[i]]));
}

// `5` or `3.1.1` to MQTT.js's protocolVersion.
function protocolVersion(version) {
  const v = { 5: 5, '3.1.1': 4 }[version];
  check(v !== undefined, `VERSION must be 5 or 3.1.1, not ${JSON.stringify(version)}`);
  return v;
}

// Rejects after `ms` with `what`.
function within(ms, what, promise) {
  let timer;
  const expiry = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, expiry]).finally(() => clearTimeout(timer));
}

// An MQTT.js client whose incoming messages feed a queue, so a script waits
// for them with a bound instead of sleeping. It never reconnects: a lost
// connection fails the next wait.
class Client {
  // `url`: mqtt://, ws:// or wss://host:port[/mqtt]; `ca`: a CA file for
  // TLS (the broker's certificate is verified), or null.
  constructor(url, id, { version, ca = null }) {
    this.url = url;
    this.id = id;
    this.opts = {
      clientId: id,
      protocolVersion: protocolVersion(version),
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: STEP,
      keepalive: 60,
    };
    if (ca !== null) this.opts.ca = fs.readFileSync(ca);
    this.messages = [];
    this.waiter = null;
    this.closed = null;
  }

  async connect() {
    try {
      this.c = await within(STEP, `${this.id}: CONNACK`, mqtt.connectAsync(this.url, this.opts, false));
    } catch (e) {
      fail(`${this.id}: connect to ${this.url} failed: ${e.message}`);
    }
    this.c.on('message', (topic, payload, packet) => {
      this.messages.push({ topic, payload, qos: packet.qos });
      this.wake();
    });
    this.c.on('error', (e) => {
      this.closed = `error: ${e.message}`;
      this.wake();
    });
    this.c.on('close', () => {
      this.closed = this.closed || 'connection closed';
      this.wake();
    });
    return this;
  }

  wake() {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w();
    }
  }

  // Subscribes and waits for the SUBACK; fails unless `qos` was granted.
  async subscribe(filter, qos) {
    let granted;
    try {
      granted = await within(STEP, `${this.id}: SUBACK for ${filter}`, this.c.subscribeAsync(filter, { qos }));
    } catch (e) {
      fail(`${this.id}: subscribe ${filter}: ${e.message}`);
    }
    const codes = granted.map((g) => g.qos);
    check(JSON.stringify(codes) === JSON.stringify([qos]),
      `${this.id}: SUBACK for ${filter}: ${JSON.stringify(codes)}, expected [${qos}]`);
  }

  // Publishes; at QoS 1 and 2, waits for the PUBACK or PUBCOMP.
  async publish(topic, payload, qos) {
    try {
      await within(STEP, `${this.id}: acknowledgement of ${topic}`, this.c.publishAsync(topic, payload, { qos }));
    } catch (e) {
      fail(`${this.id}: publish to ${topic}: ${e.message}`);
    }
  }

  // The next message, within STEP.
  async recv(what = 'message') {
    const deadline = Date.now() + STEP;
    while (this.messages.length === 0) {
      if (this.closed) fail(`${this.id}: ${this.closed} while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) fail(`${this.id}: no ${what} within ${STEP / 1000} s`);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    return this.messages.shift();
  }

  async recvN(n, what) {
    const got = [];
    for (let i = 0; i < n; i++) got.push(await this.recv(`${what} (${i + 1} of ${n})`));
    return got;
  }

  // Waits for the marker (payload `marker`), published after what must not
  // arrive on a path ordered with it; fails if anything else came first.
  async expectMarker(marker, what) {
    const before = [];
    for (;;) {
      const m = await this.recv(`marker ${marker}`);
      if (m.payload.toString() === marker) break;
      before.push(`${m.topic} ${m.payload.toString().slice(0, 40)}`);
    }
    check(before.length === 0, `${this.id}: ${what}: ${JSON.stringify(before)} before the marker`);
  }

  async end() {
    try {
      await within(STEP, `${this.id}: end`, this.c.endAsync());
    } catch (e) {
      fail(`${this.id}: disconnect: ${e.message}`);
    }
  }
}

module.exports = {
  STEP, MQTTJS_VERSION, mqtt, fail, check, ok, namedArgs, protocolVersion, within, Client,
};
