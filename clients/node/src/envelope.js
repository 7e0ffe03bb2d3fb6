'use strict';
/**
 * The ktasks wire format, version 1 (docs/protocol.md): the msgpack envelope and the headers.
 * Pure functions, no Kafka: buildRecord() turns an enqueue call into the record's value, key and headers.
 */

const crypto = require('node:crypto');
const { encode, ExtData } = require('@msgpack/msgpack');
const { DateTime, LocalDate, NaiveDateTime, Decimal, Uuid } = require('./types');

const FORMAT_VERSION = 1;
const HEADER_TASK = 'ktasks-task';
const HEADER_ID = 'ktasks-id';
const HEADER_VERSION = 'ktasks-v';
/** Header name prefixes only ktasks itself may write (retries, dead letters, replays). */
const RESERVED_HEADER_PREFIXES = ['ktasks-', 'kafka_dlt-'];
/** Arrays and maps may nest this deep inside one argument (the decoder's limit, minus envelope and args). */
const MAX_ARG_DEPTH = 1022;

const EXT_DATETIME = 1;
const EXT_DATE = 2;
const EXT_DECIMAL = 3;
const EXT_UUID = 4;
const EXT_NAIVE_DATETIME = 5;

const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

class EncodeError extends TypeError {
  constructor(message) {
    super(message);
    this.name = 'EncodeError';
  }
}

/** A fresh task id: a random (version 4) UUID as 32 lowercase hex digits. */
function newId() {
  return crypto.randomUUID().replace(/-/g, '');
}

/** Python's datetime.isoformat() of a Date, in UTC: microseconds only when not zero. */
function isoformat(date) {
  if (Number.isNaN(date.getTime())) {
    throw new EncodeError('an invalid Date cannot be encoded');
  }
  const iso = date.toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
  const ms = date.getUTCMilliseconds();
  return iso.slice(0, 19) + (ms ? `.${String(ms).padStart(3, '0')}000` : '') + '+00:00';
}

/**
 * A copy of an argument in the shapes the msgpack encoder writes as the wire format wants them:
 * ktasks' types as ExtData, integers as the shortest msgpack integer (BigInt beyond 32 bits).
 */
function prepare(value, where, depth) {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') {
    return value;
  }
  if (typeof value === 'number') {
    if (Number.isSafeInteger(value) && !Object.is(value, -0)) {
      // The encoder (useBigInt64) writes BigInts as 64-bit, which is the shortest form beyond 32 bits.
      return value >= -(2 ** 31) && value < 2 ** 32 ? value : BigInt(value);
    }
    return value; // float64, as every Number that is not a safe integer (use BigInt for exact big integers)
  }
  if (typeof value === 'bigint') {
    if (value < INT64_MIN || value > UINT64_MAX) {
      throw new EncodeError(`${where}: ${value} is outside msgpack's integers (-2**63 .. 2**64-1)`);
    }
    return value >= -(2n ** 31n) && value < 2n ** 32n ? Number(value) : value;
  }
  if (value instanceof Date) {
    return new ExtData(EXT_DATETIME, Buffer.from(isoformat(value)));
  }
  if (value instanceof DateTime) {
    return new ExtData(EXT_DATETIME, Buffer.from(value.iso));
  }
  if (value instanceof LocalDate) {
    return new ExtData(EXT_DATE, Buffer.from(value.iso));
  }
  if (value instanceof NaiveDateTime) {
    return new ExtData(EXT_NAIVE_DATETIME, Buffer.from(value.iso));
  }
  if (value instanceof Decimal) {
    return new ExtData(EXT_DECIMAL, Buffer.from(value.text));
  }
  if (value instanceof Uuid) {
    return new ExtData(EXT_UUID, value.bytes());
  }
  if (value instanceof Uint8Array) {
    return value; // bin
  }
  if (depth > MAX_ARG_DEPTH) {
    const at = where.length > 80 ? `${where.slice(0, 80)}...` : where;
    throw new EncodeError(`${at}: nested more than ${MAX_ARG_DEPTH} arrays or maps deep`);
  }
  if (Array.isArray(value)) {
    return value.map((item, i) => prepare(item, `${where}[${i}]`, depth + 1));
  }
  if (value instanceof Map) {
    const out = Object.create(null); // so a key named __proto__ is a key like any other
    for (const [k, v] of value) {
      if (typeof k !== 'string') {
        throw new EncodeError(`${where}: map key ${String(k)} is not a string`);
      }
      out[k] = prepare(v, `${where}.${k}`, depth + 1);
    }
    return out;
  }
  if (typeof value === 'object' && (Object.getPrototypeOf(value) === Object.prototype
      || Object.getPrototypeOf(value) === null)) {
    const out = Object.create(null); // so a key named __proto__ is a key like any other
    for (const k of Object.keys(value)) {
      out[k] = prepare(value[k], `${where}.${k}`, depth + 1);
    }
    return out;
  }
  const kind = value === undefined ? 'undefined' : (value.constructor && value.constructor.name) || typeof value;
  throw new EncodeError(`${where}: a ${kind} cannot be encoded (see docs/protocol.md for the types)`);
}

// maxDepth: the library stops at 100 levels by default; ours is MAX_ARG_DEPTH (args or kwargs add one).
const PACK_OPTIONS = { useBigInt64: true, maxDepth: MAX_ARG_DEPTH + 1 };

function float64(value) {
  const out = Buffer.alloc(9);
  out[0] = 0xcb;
  out.writeDoubleBE(value, 1);
  return out;
}

function field(name, bytes) {
  return [encode(name), bytes];
}

/**
 * The envelope's msgpack bytes. Fields in the spec's order; `created`, `due` and `exp` always float64.
 * @param {{id: string, task: string, args: Array, kwargs: object, ikey?: string|null,
 *          created: number, due?: number|null, exp?: number|null}} e
 */
function encodeEnvelope(e) {
  if (typeof e.task !== 'string' || e.task === '') {
    throw new EncodeError(`task name must be a non-empty string, got ${JSON.stringify(e.task)}`);
  }
  if (typeof e.id !== 'string' || e.id === '') {
    throw new EncodeError(`task ${e.task}: id must be a non-empty string`);
  }
  const ikey = e.ikey === undefined ? null : e.ikey;
  if (ikey !== null && typeof ikey !== 'string') {
    throw new EncodeError(`task ${e.task}: idempotencyKey must be a string`);
  }
  if (!Array.isArray(e.args)) {
    throw new EncodeError(`task ${e.task}: args must be an array`);
  }
  const kwargs = e.kwargs === undefined || e.kwargs === null ? {} : e.kwargs;
  if (typeof kwargs !== 'object' || Array.isArray(kwargs)) {
    throw new EncodeError(`task ${e.task}: kwargs must be an object (or a Map with string keys)`);
  }
  for (const [name, value] of [['created', e.created], ['due', e.due], ['exp', e.exp]]) {
    if (value !== null && value !== undefined && (typeof value !== 'number' || !Number.isFinite(value))) {
      throw new EncodeError(`task ${e.task}: ${name} must be a finite number of seconds since the epoch`);
    }
  }
  if (typeof e.created !== 'number') {
    throw new EncodeError(`task ${e.task}: created is required`);
  }
  const exp = e.exp === undefined ? null : e.exp;
  if (exp !== null && exp <= Math.max(e.created, e.due || 0)) {
    throw new EncodeError(`task ${e.task}: expires is not after the time the task is due, so it would never run`);
  }
  const args = e.args.map((v, i) => prepare(v, `task ${e.task}: positional argument ${i}`, 1));
  const kw = prepare(kwargs, `task ${e.task}: keyword arguments`, 0);
  const parts = [
    Buffer.from([exp === null ? 0x89 : 0x8a]), // a map of the 9 fields, and exp when set
    ...field('v', encode(FORMAT_VERSION)),
    ...field('id', encode(e.id)),
    ...field('task', encode(e.task)),
    ...field('args', encode(args, PACK_OPTIONS)),
    ...field('kwargs', encode(kw, PACK_OPTIONS)),
    ...field('attempt', encode(0)),
    ...field('ikey', encode(ikey)),
    ...field('created', float64(e.created)),
    ...field('due', e.due === null || e.due === undefined ? encode(null) : float64(e.due)),
    ...(exp === null ? [] : field('exp', float64(exp))),
  ];
  return Buffer.concat(parts);
}

/** The record's headers: the reserved three, then the caller's (never a reserved name). */
function buildHeaders(task, id, callerHeaders) {
  const headers = [
    [HEADER_TASK, Buffer.from(task)],
    [HEADER_ID, Buffer.from(id)],
    [HEADER_VERSION, Buffer.from(String(FORMAT_VERSION))],
  ];
  const entries = callerHeaders instanceof Map ? [...callerHeaders] : Object.entries(callerHeaders || {});
  for (const [name, value] of entries) {
    if (RESERVED_HEADER_PREFIXES.some((p) => name.toLowerCase().startsWith(p))) {
      throw new EncodeError(`task ${task}: header ${JSON.stringify(name)} is reserved for ktasks`);
    }
    if (typeof value === 'string') {
      headers.push([name, Buffer.from(value)]);
    } else if (value instanceof Uint8Array) {
      headers.push([name, Buffer.from(value)]);
    } else {
      throw new EncodeError(`task ${task}: header ${JSON.stringify(name)} must be a string or bytes`);
    }
  }
  return headers;
}

/**
 * Value, key and headers of the record that enqueues task(*args, **kwargs).
 * options: taskId, idempotencyKey, key (string or bytes), headers (object or Map), expires (a Date, or
 * seconds since the epoch: not run after then), created, due (seconds since the epoch; created
 * defaults to now).
 */
function buildRecord(task, args = [], kwargs = {}, options = {}) {
  const id = options.taskId === undefined || options.taskId === null ? newId() : options.taskId;
  const exp = options.expires instanceof Date ? options.expires.getTime() / 1000 : options.expires;
  const value = encodeEnvelope({
    id, task, args, kwargs, ikey: options.idempotencyKey,
    created: options.created === undefined ? Date.now() / 1000 : options.created, due: options.due, exp,
  });
  let key = null;
  if (options.key !== undefined && options.key !== null) {
    if (typeof options.key === 'string') {
      key = Buffer.from(options.key);
    } else if (options.key instanceof Uint8Array) {
      key = Buffer.from(options.key);
    } else {
      throw new EncodeError(`task ${task}: key must be a string or bytes`);
    }
  }
  return { id, value, key, headers: buildHeaders(task, id, options.headers) };
}

module.exports = {
  FORMAT_VERSION, HEADER_TASK, HEADER_ID, HEADER_VERSION, RESERVED_HEADER_PREFIXES, MAX_ARG_DEPTH,
  EncodeError, newId, encodeEnvelope, buildHeaders, buildRecord, isoformat,
};
