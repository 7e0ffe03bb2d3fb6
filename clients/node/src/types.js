'use strict';
/**
 * Argument types beyond msgpack's own, as the ktasks wire format defines them
 * (docs/protocol.md, "Extension types"). A JavaScript Date is an aware datetime
 * (extension 1, in UTC); the classes below stand for what JavaScript has no type for.
 */

const AWARE_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?[+-]\d{2}:\d{2}$/;
const DATE_RE = /^\d{4}-\d{2}-\d{2}$/;
const NAIVE_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?$/;
const DECIMAL_RE = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(Infinity|inf|sNaN|NaN)$/;
const UUID_RE = /^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/;

/**
 * A date and time with its UTC offset, exactly as written: 'YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM'
 * (Python's isoformat()). Use it to keep an offset or microseconds a Date cannot hold.
 */
class DateTime {
  constructor(iso) {
    if (typeof iso !== 'string' || !AWARE_RE.test(iso)) {
      throw new TypeError(`DateTime wants YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM, got ${JSON.stringify(iso)}`);
    }
    this.iso = iso;
  }
  toString() { return this.iso; }
}

/** A calendar date without time (Python datetime.date), e.g. new LocalDate('2024-05-01'). */
class LocalDate {
  constructor(iso) {
    if (typeof iso !== 'string' || !DATE_RE.test(iso)) {
      throw new TypeError(`LocalDate wants YYYY-MM-DD, got ${JSON.stringify(iso)}`);
    }
    this.iso = iso;
  }
  toString() { return this.iso; }
}

/** A date and time without a UTC offset (Python naive datetime): 'YYYY-MM-DDTHH:MM:SS[.ffffff]'. */
class NaiveDateTime {
  constructor(iso) {
    if (typeof iso !== 'string' || !NAIVE_RE.test(iso)) {
      throw new TypeError(`NaiveDateTime wants YYYY-MM-DDTHH:MM:SS[.ffffff], got ${JSON.stringify(iso)}`);
    }
    this.iso = iso;
  }
  toString() { return this.iso; }
}

/** An exact decimal number (Python decimal.Decimal), kept as its text, e.g. new Decimal('19.99'). */
class Decimal {
  constructor(text) {
    if (typeof text !== 'string' || !DECIMAL_RE.test(text)) {
      throw new TypeError(`Decimal wants a decimal number as text, got ${JSON.stringify(text)}`);
    }
    this.text = text;
  }
  toString() { return this.text; }
}

/** A UUID (Python uuid.UUID), from its 32 hex digits with or without dashes. */
class Uuid {
  constructor(text) {
    if (typeof text !== 'string' || !UUID_RE.test(text)) {
      throw new TypeError(`Uuid wants 32 hex digits, got ${JSON.stringify(text)}`);
    }
    this.hex = text.replace(/-/g, '').toLowerCase();
  }
  bytes() { return Buffer.from(this.hex, 'hex'); }
  toString() {
    const h = this.hex;
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
}

module.exports = { DateTime, LocalDate, NaiveDateTime, Decimal, Uuid };
