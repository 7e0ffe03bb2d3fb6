'use strict';
/** ktasks-enqueue: enqueue ktasks tasks from Node.js (docs/protocol.md in the ktasks repository). */

const envelope = require('./envelope');
const types = require('./types');
const { Client } = require('./client');

let shared = null;

/**
 * enqueue(task, args, kwargs, options) with a client made once from options.brokers (or
 * KTASKS_BOOTSTRAP_SERVERS) and kept for the process; call close() before exiting.
 */
async function enqueue(task, args = [], kwargs = {}, options = {}) {
  if (shared === null) {
    const servers = options.brokers || (process.env.KTASKS_BOOTSTRAP_SERVERS || '').split(',').filter(Boolean);
    const client = new Client({ brokers: servers, app: options.app });
    shared = client.connect().then(() => client);
    shared.catch(() => { shared = null; });
  }
  const client = await shared;
  return client.enqueue(task, args, kwargs, options);
}

async function close() {
  if (shared !== null) {
    const client = await shared;
    shared = null;
    await client.disconnect();
  }
}

module.exports = { ...envelope, ...types, Client, enqueue, close };
