'use strict';
/**
 * The test vectors' tagged JSON (protocol/vectors/README.md) as JavaScript values; used by the
 * unit tests and by the command line (bin/ktasks-enqueue.js --args/--kwargs).
 */

const { DateTime, LocalDate, NaiveDateTime, Decimal, Uuid } = require('./types');

const TAGS = {
  $float: (raw) => Number(raw),
  $int: (raw) => {
    const n = BigInt(raw);
    return n >= -(2n ** 53n) && n <= 2n ** 53n ? Number(n) : n;
  },
  $bytes: (raw) => Buffer.from(raw, 'hex'),
  $datetime: (raw) => new DateTime(raw),
  $naive_datetime: (raw) => new NaiveDateTime(raw),
  $date: (raw) => new LocalDate(raw),
  $decimal: (raw) => new Decimal(raw),
  $uuid: (raw) => new Uuid(raw),
};

function fromTagged(value) {
  if (Array.isArray(value)) {
    return value.map(fromTagged);
  }
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0].startsWith('$')) {
      const make = TAGS[keys[0]];
      if (!make) {
        throw new TypeError(`unknown tag ${keys[0]}`);
      }
      return make(value[keys[0]]);
    }
    const out = new Map();
    for (const k of keys) {
      out.set(k, fromTagged(value[k]));
    }
    return out;
  }
  return value;
}

module.exports = { fromTagged };
