'use strict';
/* The Node.js encoder against the shared test vectors (protocol/vectors/), and its refusals. */

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Partitioners } = require('kafkajs');
const { buildRecord, EncodeError, MAX_ARG_DEPTH } = require('../src/envelope');
const { Decimal, Uuid } = require('../src/types');
const { fromTagged } = require('../src/typed');

const VECTORS = process.env.KTASKS_VECTORS || path.join(__dirname, '..', '..', '..', 'protocol', 'vectors');

function load(kind) {
  const dir = path.join(VECTORS, kind);
  return fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort()
    .map((f) => ({ name: f.replace(/\.json$/, ''), ...JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) }));
}

const valid = load('valid');

test('there are vectors', () => {
  assert.ok(valid.length >= 10);
});

for (const v of valid) {
  const skip = v.not_for && v.not_for.node;
  test(`vector ${v.name}`, { skip }, () => {
    const e = v.envelope;
    const record = buildRecord(e.task, fromTagged(e.args), fromTagged(e.kwargs), {
      taskId: e.id,
      idempotencyKey: e.ikey,
      key: v.key,
      headers: new Map(v.caller_headers),
      created: fromTagged(e.created),
      due: e.due === null ? null : fromTagged(e.due),
      expires: e.exp === undefined ? undefined : fromTagged(e.exp),
    });
    assert.equal(record.value.toString('hex'), v.value);
    assert.deepEqual(record.key, v.key === null ? null : Buffer.from(v.key));
    assert.deepEqual(record.headers.map(([k, h]) => [k, h.toString('utf8')]), v.headers);
  });
}

test('keyed records go to the murmur2 partition (kafkajs DefaultPartitioner)', () => {
  const { cases } = JSON.parse(fs.readFileSync(path.join(VECTORS, 'partitions.json'), 'utf8'));
  assert.ok(cases.length > 0);
  const partitioner = Partitioners.DefaultPartitioner();
  for (const c of cases) {
    const partitionMetadata = Array.from({ length: c.partitions }, (_, i) => ({ partitionId: i, leader: 0 }));
    const chosen = partitioner({ topic: 't', partitionMetadata, message: { key: Buffer.from(c.key) } });
    assert.equal(chosen, c.partition, JSON.stringify(c));
  }
});

const OPTS = { taskId: '0f3c2a9e4b7d4c1a8e5f6a7b8c9d0e1f', created: 1733300000.25 };

test('a Date is an aware datetime in UTC, microseconds only when not zero', () => {
  const at = (date) => buildRecord('t', [date], {}, OPTS).value.toString('hex');
  const ext = (iso) => Buffer.concat([Buffer.from([0xc7, iso.length, 1]), Buffer.from(iso)]).toString('hex');
  assert.ok(at(new Date(Date.UTC(2024, 4, 1, 12, 30, 45, 123))).includes(ext('2024-05-01T12:30:45.123000+00:00')));
  assert.ok(at(new Date(Date.UTC(2024, 4, 1, 12, 30, 45))).includes(ext('2024-05-01T12:30:45+00:00')));
});

test('big integers: BigInt up to 2**64-1, refused beyond; Numbers beyond 2**53 are floats', () => {
  assert.ok(buildRecord('t', [2n ** 64n - 1n], {}, OPTS).value.includes(Buffer.from('cfffffffffffffffff', 'hex')));
  assert.throws(() => buildRecord('t', [2n ** 64n], {}, OPTS), /outside msgpack's integers/);
  assert.throws(() => buildRecord('t', [-(2n ** 63n) - 1n], {}, OPTS), /outside msgpack's integers/);
  assert.ok(buildRecord('t', [2 ** 60], {}, OPTS).value.includes(Buffer.from('cb43b0000000000000', 'hex')));
  assert.ok(buildRecord('t', [2 ** 40], {}, OPTS).value.includes(Buffer.from('cf0000010000000000', 'hex')));
});

test('values with no wire form are refused, naming the argument', () => {
  assert.throws(() => buildRecord('t', [undefined], {}, OPTS), /positional argument 0: a undefined/);
  assert.throws(() => buildRecord('t', [new Set([1])], {}, OPTS), /a Set cannot be encoded/);
  assert.throws(() => buildRecord('t', [], { cb: () => 1 }, OPTS), /keyword arguments\.cb: a Function/);
  assert.throws(() => buildRecord('t', [new Map([[1, 'one']])], {}, OPTS), /map key 1 is not a string/);
  assert.throws(() => buildRecord('t', [new Float32Array(2)], {}, OPTS), EncodeError);
  assert.throws(() => buildRecord('t', [new Date(NaN)], {}, OPTS), /invalid Date/);
  assert.throws(() => new Decimal('12,5'), TypeError);
  assert.throws(() => new Uuid('not-a-uuid'), TypeError);
});

test('nesting deeper than the decoder reads is refused', () => {
  const nest = (n) => { let v = []; for (let i = 1; i < n; i++) { v = [v]; } return v; };
  buildRecord('t', [nest(MAX_ARG_DEPTH)], {}, OPTS);
  assert.throws(() => buildRecord('t', [nest(MAX_ARG_DEPTH + 1)], {}, OPTS), /nested more than/);
});

test('reserved headers, bad keys and envelope fields are refused', () => {
  for (const name of ['ktasks-force', 'ktasks-replay', 'ktasks-origin-topic', 'KTASKS-ID', 'kafka_dlt-original-topic']) {
    assert.throws(() => buildRecord('t', [], {}, { ...OPTS, headers: { [name]: '1' } }), /is reserved for ktasks/);
  }
  assert.throws(() => buildRecord('t', [], {}, { ...OPTS, key: 42 }), /key must be a string or bytes/);
  assert.throws(() => buildRecord('t', [], {}, { ...OPTS, idempotencyKey: 7 }), /idempotencyKey must be a string/);
  assert.throws(() => buildRecord('', [], {}, OPTS), /task name must be a non-empty string/);
  assert.throws(() => buildRecord('t', { 0: 1 }, {}, OPTS), /args must be an array/);
  assert.throws(() => buildRecord('t', [], [1], OPTS), /kwargs must be an object/);
  assert.throws(() => buildRecord('t', [], {}, { ...OPTS, expires: OPTS.created }), /would never run/);
});

test('a fresh id is 32 hex digits of a version 4 UUID', () => {
  const { id } = buildRecord('t', [], {}, { created: 1 });
  assert.match(id, /^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$/);
});
