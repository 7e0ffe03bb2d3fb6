package dev.ktasks.enqueue;

import java.util.List;

/** A task message ready to send: its id, value, key (or null) and headers. */
public record TaskRecord(String id, byte[] value, byte[] key, List<Header> headers) {
}
