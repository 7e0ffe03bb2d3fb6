package dev.ktasks.enqueue;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/** enqueue's optional settings; every setter returns this. */
public final class Options {
    String topic;
    byte[] key;
    String taskId;
    String idempotencyKey;
    Double expires;
    final List<Header> headers = new ArrayList<>();

    /** The task topic; default: the producer's. */
    public Options topic(String topic) {
        this.topic = topic;
        return this;
    }

    /** Routing key: the same key always lands on the same partition (murmur2 of its UTF-8 bytes). */
    public Options key(String key) {
        this.key = key == null ? null : key.getBytes(StandardCharsets.UTF_8);
        return this;
    }

    public Options key(byte[] key) {
        this.key = key;
        return this;
    }

    /** The task id; default: a fresh one. */
    public Options taskId(String taskId) {
        this.taskId = taskId;
        return this;
    }

    /** Names the execution in the worker's ledger; default: the task id. */
    public Options idempotencyKey(String idempotencyKey) {
        this.idempotencyKey = idempotencyKey;
        return this;
    }

    /** Not run after this time: a worker that takes the task later dead-letters it as expired. */
    public Options expires(java.time.Instant expires) {
        this.expires = expires == null ? null : expires.getEpochSecond() + expires.getNano() / 1000 / 1e6;
        return this;
    }

    /** One more header, after the reserved three; never a reserved name (ktasks-*, kafka_dlt-*). */
    public Options header(String name, String value) {
        headers.add(Header.of(name, value));
        return this;
    }

    public Options header(String name, byte[] value) {
        headers.add(new Header(name, value));
        return this;
    }
}
