#!/usr/bin/env node
'use strict';
/*
 * ktasks-enqueue enqueue --bootstrap HOST:PORT --topic TOPIC --task NAME [--args JSON] [--kwargs JSON]
 *                        [--key KEY] [--idempotency-key KEY] [--task-id ID] [--header NAME=VALUE ...]
 * ktasks-enqueue raw     --bootstrap HOST:PORT --topic TOPIC --value-hex HEX [--value-hex HEX ...] [--key KEY]
 *                        [--header NAME=VALUE ...]
 *
 * --args and --kwargs are JSON in the test vectors' tagged notation (protocol/vectors/README.md),
 * e.g. --args '[42, {"$decimal": "19.99"}]'. Prints one JSON line: {id, topic, partition, offset}.
 * `raw` sends each value's bytes as they are (for example invalid test vectors), with the given headers,
 * one record per --value-hex in order, and prints one line per record.
 */

const { parseArgs } = require('node:util');
const { Client } = require('../src/client');
const { fromTagged } = require('../src/typed');

const USAGE = 'usage: ktasks-enqueue {enqueue|raw} --bootstrap HOST:PORT --topic TOPIC ...';

function parseHeaders(list) {
  return (list || []).map((h) => {
    const at = h.indexOf('=');
    if (at <= 0) {
      throw new TypeError(`--header wants NAME=VALUE, got ${JSON.stringify(h)}`);
    }
    return [h.slice(0, at), h.slice(at + 1)];
  });
}

async function main(argv) {
  const [command, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    options: {
      bootstrap: { type: 'string' },
      topic: { type: 'string' },
      task: { type: 'string' },
      args: { type: 'string', default: '[]' },
      kwargs: { type: 'string', default: '{}' },
      key: { type: 'string' },
      'idempotency-key': { type: 'string' },
      'task-id': { type: 'string' },
      header: { type: 'string', multiple: true },
      'value-hex': { type: 'string', multiple: true },
    },
  });
  if (!['enqueue', 'raw'].includes(command) || !values.bootstrap || !values.topic) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const headers = parseHeaders(values.header);
  const client = new Client({ brokers: values.bootstrap.split(','), topic: values.topic });
  await client.connect();
  try {
    if (command === 'raw') {
      if (!values['value-hex']) {
        throw new TypeError('raw needs --value-hex');
      }
      for (const hex of values['value-hex']) {
        const sent = await client.sendRaw(values.topic, Buffer.from(hex, 'hex'),
          { key: values.key === undefined ? null : Buffer.from(values.key), headers });
        process.stdout.write(`${JSON.stringify(sent)}\n`);
      }
    } else {
      if (!values.task) {
        throw new TypeError('enqueue needs --task');
      }
      const sent = await client.enqueue(values.task, fromTagged(JSON.parse(values.args)),
        fromTagged(JSON.parse(values.kwargs)), {
          key: values.key, idempotencyKey: values['idempotency-key'], taskId: values['task-id'],
          headers: new Map(headers),
        });
      process.stdout.write(`${JSON.stringify(sent)}\n`);
    }
    return 0;
  } finally {
    await client.disconnect();
  }
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err) => {
  process.stderr.write(`ktasks-enqueue: ${err.message}\n`);
  process.exitCode = 1;
});
