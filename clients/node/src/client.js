'use strict';
/** Enqueue ktasks tasks through kafkajs. */

const { Kafka, Partitioners, logLevel } = require('kafkajs');
const { buildRecord, EncodeError } = require('./envelope');

function toKafkaHeaders(headers) {
  const out = {};
  for (const [name, value] of headers) {
    if (name in out) {
      throw new EncodeError(`header ${JSON.stringify(name)} given twice`);
    }
    out[name] = value;
  }
  return out;
}

/**
 * A producer for one ktasks app's task topics.
 *
 *   const client = new Client({ brokers: ['127.0.0.1:9092'], topic: 'billing.tasks' });
 *   await client.connect();
 *   const sent = await client.enqueue('billing.charge', [42], { cents: 1999 }, { key: 'customer-7' });
 *   await client.disconnect();
 *
 * Topics are created by ktasks (the worker, or `ktasks topics create`), never by this client.
 */
class Client {
  /**
   * @param {{brokers: string[], topic?: string, app?: string, clientId?: string, kafka?: object}} config
   *   topic: the default task topic; else app: the ktasks App name, whose default topic is `<app>.tasks`.
   *   kafka: further kafkajs client settings (ssl, sasl, ...).
   */
  constructor(config) {
    if (!config || !Array.isArray(config.brokers) || config.brokers.length === 0) {
      throw new TypeError('Client needs brokers: ["host:port", ...]');
    }
    this.topic = config.topic || (config.app ? `${config.app}.tasks` : null);
    this.kafka = new Kafka({
      clientId: config.clientId || 'ktasks-node',
      brokers: config.brokers,
      logLevel: logLevel.WARN,
      ...(config.kafka || {}),
    });
    // Java's default partitioner (murmur2 of the key), as the wire format requires; idempotent, acks=all.
    this.producer = this.kafka.producer({
      createPartitioner: Partitioners.DefaultPartitioner,
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
    });
  }

  async connect() {
    await this.producer.connect();
  }

  async disconnect() {
    await this.producer.disconnect();
  }

  /**
   * Enqueue task(*args, **kwargs); resolves once the broker stored it (acks=all).
   * options: topic, key, taskId, idempotencyKey, headers, expires (see docs/protocol.md).
   * @returns {Promise<{id: string, topic: string, partition: number, offset: string}>}
   */
  async enqueue(task, args = [], kwargs = {}, options = {}) {
    const topic = options.topic || this.topic;
    if (!topic) {
      throw new TypeError(`task ${task}: no topic (give options.topic, or topic/app to the Client)`);
    }
    const record = buildRecord(task, args, kwargs, options);
    const [meta] = await this.producer.send({
      topic,
      acks: -1,
      messages: [{ key: record.key, value: record.value, headers: toKafkaHeaders(record.headers) }],
    });
    return { id: record.id, topic, partition: meta.partition, offset: meta.baseOffset };
  }

  /**
   * Send bytes as they are, with the given headers: for tools and tests (for example the
   * invalid test vectors). Nothing is checked; enqueue() is the way to send a task.
   */
  async sendRaw(topic, value, { key = null, headers = [] } = {}) {
    const [meta] = await this.producer.send({
      topic, acks: -1, messages: [{ key, value, headers: toKafkaHeaders(headers) }],
    });
    return { topic, partition: meta.partition, offset: meta.baseOffset };
  }
}

module.exports = { Client };
