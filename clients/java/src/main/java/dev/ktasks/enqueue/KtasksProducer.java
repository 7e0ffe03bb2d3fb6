package dev.ktasks.enqueue;

import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Enqueues ktasks tasks through kafka-clients.
 *
 * <pre>{@code
 * try (KtasksProducer producer = new KtasksProducer("127.0.0.1:9092", "billing.tasks")) {
 *     Sent sent = producer.enqueue("billing.charge", List.of(42), Map.of("cents", 1999),
 *                                  new Options().key("customer-7"));
 * }
 * }</pre>
 *
 * Topics are created by ktasks (the worker, or {@code ktasks topics create}), never by this producer.
 */
public final class KtasksProducer implements AutoCloseable {
    /** Where the broker stored a task message. */
    public record Sent(String id, String topic, int partition, long offset) {
    }

    private final KafkaProducer<byte[], byte[]> producer;
    private final String topic;

    /** bootstrapServers "host:port,..."; topic the default task topic (a ktasks App's is "{app}.tasks"). */
    public KtasksProducer(String bootstrapServers, String topic) {
        this(bootstrapServers, topic, new Properties());
    }

    /** As above; {@code more} adds kafka-clients settings (security, timeouts, ...). */
    public KtasksProducer(String bootstrapServers, String topic, Properties more) {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrapServers);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.CLIENT_ID_CONFIG, "ktasks-java");
        props.putAll(more);
        // The default partitioner: murmur2 of the key, as the wire format requires. Never replaced.
        props.remove(ProducerConfig.PARTITIONER_CLASS_CONFIG);
        this.producer = new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer());
        this.topic = topic;
    }

    /** Sends task(*args, **kwargs) and returns once the broker stored it (acks=all). */
    public Sent enqueue(String task, List<?> args, Map<String, ?> kwargs, Options options)
            throws InterruptedException, ExecutionException {
        String target = options.topic != null ? options.topic : topic;
        if (target == null) {
            throw new IllegalArgumentException("task " + task + ": no topic (Options.topic or the producer's)");
        }
        double now = ChronoUnit.MICROS.between(Instant.EPOCH, Instant.now()) / 1e6;
        TaskRecord rec = Envelope.buildRecord(task, args, kwargs, options, now, null);
        Sent sent = sendRaw(target, rec.value(), rec.key(), rec.headers());
        return new Sent(rec.id(), sent.topic(), sent.partition(), sent.offset());
    }

    /**
     * Sends bytes as they are, with the given headers: for tools and tests (for example the invalid
     * test vectors). Nothing is checked; enqueue is the way to send a task.
     */
    public Sent sendRaw(String target, byte[] value, byte[] key, List<Header> headers)
            throws InterruptedException, ExecutionException {
        ProducerRecord<byte[], byte[]> record = new ProducerRecord<>(target, key, value);
        for (Header h : headers) {
            record.headers().add(h.key(), h.value());
        }
        RecordMetadata md = producer.send(record).get();
        return new Sent(null, md.topic(), md.partition(), md.offset());
    }

    @Override
    public void close() {
        producer.close();
    }
}
