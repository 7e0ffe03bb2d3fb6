package dev.ktasks.enqueue;

import java.io.IOException;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.time.Instant;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.time.temporal.Temporal;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.HexFormat;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.UUID;

import org.msgpack.core.MessageBufferPacker;
import org.msgpack.core.MessagePack;

/**
 * The ktasks wire format, version 1 (docs/protocol.md): the msgpack envelope and the headers.
 *
 * <p>Argument types: null, Boolean, Byte/Short/Integer/Long/BigInteger (up to 2**64-1), Float/Double
 * (written as float64), String, byte[], List or Object[] (arrays), Map with String keys (in the map's
 * iteration order), and ktasks' extension types: OffsetDateTime/ZonedDateTime/Instant (aware datetime),
 * LocalDate, BigDecimal, UUID, LocalDateTime (naive datetime).
 */
public final class Envelope {
    public static final int FORMAT_VERSION = 1;
    public static final String HEADER_TASK = "ktasks-task";
    public static final String HEADER_ID = "ktasks-id";
    public static final String HEADER_VERSION = "ktasks-v";
    /** Header name prefixes only ktasks itself writes (retries, dead letters, replays). */
    public static final List<String> RESERVED_HEADER_PREFIXES = List.of("ktasks-", "kafka_dlt-");
    /** How deep arrays and maps may nest inside one argument (the decoder's 1024 levels, minus envelope and args). */
    public static final int MAX_ARG_DEPTH = 1022;

    private static final byte EXT_DATETIME = 1;
    private static final byte EXT_DATE = 2;
    private static final byte EXT_DECIMAL = 3;
    private static final byte EXT_UUID = 4;
    private static final byte EXT_NAIVE_DATETIME = 5;
    private static final BigInteger UINT64_MAX = BigInteger.ONE.shiftLeft(64).subtract(BigInteger.ONE);
    private static final BigInteger INT64_MIN = BigInteger.valueOf(Long.MIN_VALUE);
    private static final DateTimeFormatter SECONDS = DateTimeFormatter.ofPattern("uuuu-MM-dd'T'HH:mm:ss", Locale.ROOT);
    private static final SecureRandom RANDOM = new SecureRandom();

    private Envelope() {
    }

    /** A fresh task id: a random (version 4) UUID as 32 lowercase hex digits. */
    public static String newId() {
        byte[] b = new byte[16];
        RANDOM.nextBytes(b);
        b[6] = (byte) ((b[6] & 0x0f) | 0x40);
        b[8] = (byte) ((b[8] & 0x3f) | 0x80);
        return HexFormat.of().formatHex(b);
    }

    /**
     * The record that enqueues task(*args, **kwargs), created at {@code created} (seconds since the
     * epoch); {@code due} may be null. KtasksProducer.enqueue calls it with the current time.
     */
    public static TaskRecord buildRecord(String task, List<?> args, Map<String, ?> kwargs, Options options,
                                         double created, Double due) {
        String id = options.taskId == null || options.taskId.isEmpty() ? newId() : options.taskId;
        byte[] value = encode(id, task, args, kwargs, options.idempotencyKey, created, due, options.expires);
        List<Header> headers = new ArrayList<>();
        headers.add(Header.of(HEADER_TASK, task));
        headers.add(Header.of(HEADER_ID, id));
        headers.add(Header.of(HEADER_VERSION, Integer.toString(FORMAT_VERSION)));
        for (Header h : options.headers) {
            String lower = h.key().toLowerCase(Locale.ROOT);
            for (String prefix : RESERVED_HEADER_PREFIXES) {
                if (lower.startsWith(prefix)) {
                    throw new EncodeException("task " + task + ": header \"" + h.key() + "\" is reserved for ktasks");
                }
            }
            headers.add(h);
        }
        return new TaskRecord(id, value, options.key, List.copyOf(headers));
    }

    /**
     * The envelope's msgpack bytes: the 9 fields in the spec's order, then exp when {@code exp} is not
     * null; created, due and exp always float64.
     */
    public static byte[] encode(String id, String task, List<?> args, Map<String, ?> kwargs, String ikey,
                                double created, Double due, Double exp) {
        if (task == null || task.isEmpty()) {
            throw new EncodeException("task name must be a non-empty string");
        }
        if (id == null || id.isEmpty()) {
            throw new EncodeException("task " + task + ": id must be a non-empty string");
        }
        if (!Double.isFinite(created) || (due != null && !Double.isFinite(due))) {
            throw new EncodeException("task " + task + ": created and due must be finite");
        }
        if (exp != null && (!Double.isFinite(exp) || exp <= created || (due != null && exp <= due))) {
            throw new EncodeException("task " + task + ": expires is not after the time the task is due, so it "
                + "would never run");
        }
        try (MessageBufferPacker p = MessagePack.newDefaultBufferPacker()) {
            p.packMapHeader(exp == null ? 9 : 10);
            p.packString("v").packInt(FORMAT_VERSION);
            p.packString("id").packString(id);
            p.packString("task").packString(task);
            p.packString("args");
            List<?> positional = args == null ? List.of() : args;
            p.packArrayHeader(positional.size());
            int i = 0;
            for (Object arg : positional) {
                pack(p, arg, "task " + task + ": positional argument " + i++, 1);
            }
            p.packString("kwargs");
            pack(p, kwargs == null ? Map.of() : kwargs, "task " + task + ": keyword arguments", 0);
            p.packString("attempt").packInt(0);
            p.packString("ikey");
            if (ikey == null || ikey.isEmpty()) {
                p.packNil();
            } else {
                p.packString(ikey);
            }
            p.packString("created").packDouble(created);
            p.packString("due");
            if (due == null) {
                p.packNil();
            } else {
                p.packDouble(due);
            }
            if (exp != null) {
                p.packString("exp").packDouble(exp);
            }
            return p.toByteArray();
        } catch (IOException e) {
            throw new IllegalStateException("writing to memory failed", e);
        }
    }

    private static void ext(MessageBufferPacker p, byte code, byte[] payload) throws IOException {
        p.packExtensionTypeHeader(code, payload.length);
        p.writePayload(payload);
    }

    private static void ext(MessageBufferPacker p, byte code, String payload) throws IOException {
        ext(p, code, payload.getBytes(StandardCharsets.UTF_8));
    }

    /** Python's datetime.isoformat(): microseconds only when not zero, offset as +HH:MM. */
    static String isoformat(Temporal t, ZoneOffset offset) {
        LocalDateTime local = t instanceof LocalDateTime l ? l : LocalDateTime.from(t);
        StringBuilder s = new StringBuilder(SECONDS.format(local));
        int micros = local.getNano() / 1000;
        if (micros != 0) {
            s.append(String.format(Locale.ROOT, ".%06d", micros));
        }
        if (offset != null) {
            int total = offset.getTotalSeconds();
            int abs = Math.abs(total);
            s.append(total < 0 ? '-' : '+').append(String.format(Locale.ROOT, "%02d:%02d", abs / 3600, abs / 60 % 60));
            if (abs % 60 != 0) {
                s.append(String.format(Locale.ROOT, ":%02d", abs % 60));
            }
        }
        return s.toString();
    }

    private static void pack(MessageBufferPacker p, Object v, String where, int depth) throws IOException {
        if (v == null) {
            p.packNil();
        } else if (v instanceof Boolean b) {
            p.packBoolean(b);
        } else if (v instanceof Long || v instanceof Integer || v instanceof Short || v instanceof Byte) {
            p.packLong(((Number) v).longValue());
        } else if (v instanceof BigInteger n) {
            if (n.compareTo(INT64_MIN) < 0 || n.compareTo(UINT64_MAX) > 0) {
                throw new EncodeException(where + ": " + n + " is outside msgpack's integers (-2**63 .. 2**64-1)");
            }
            p.packBigInteger(n);
        } else if (v instanceof Double || v instanceof Float) {
            p.packDouble(((Number) v).doubleValue()); // float64, as Python writes floats
        } else if (v instanceof String s) {
            p.packString(s);
        } else if (v instanceof byte[] b) {
            p.packBinaryHeader(b.length);
            p.writePayload(b);
        } else if (v instanceof OffsetDateTime t) {
            ext(p, EXT_DATETIME, isoformat(t, t.getOffset()));
        } else if (v instanceof ZonedDateTime t) {
            ext(p, EXT_DATETIME, isoformat(t, t.getOffset()));
        } else if (v instanceof Instant t) {
            ext(p, EXT_DATETIME, isoformat(t.atOffset(ZoneOffset.UTC), ZoneOffset.UTC));
        } else if (v instanceof LocalDateTime t) {
            ext(p, EXT_NAIVE_DATETIME, isoformat(t, null));
        } else if (v instanceof LocalDate d) {
            ext(p, EXT_DATE, d.toString());
        } else if (v instanceof BigDecimal d) {
            ext(p, EXT_DECIMAL, d.toString());
        } else if (v instanceof UUID u) {
            ext(p, EXT_UUID, ByteBuffer.allocate(16).putLong(u.getMostSignificantBits())
                .putLong(u.getLeastSignificantBits()).array());
        } else if (v instanceof Set<?>) {
            throw new EncodeException(where + ": a Set cannot be encoded (pass a List)");
        } else if (v instanceof Collection<?> || v instanceof Object[] || v instanceof Map<?, ?>) {
            if (depth > MAX_ARG_DEPTH) {
                String at = where.length() > 80 ? where.substring(0, 80) + "..." : where;
                throw new EncodeException(at + ": nested more than " + MAX_ARG_DEPTH + " arrays or maps deep");
            }
            if (v instanceof Map<?, ?> m) {
                p.packMapHeader(m.size());
                for (Map.Entry<?, ?> e : m.entrySet()) {
                    if (!(e.getKey() instanceof String k)) {
                        throw new EncodeException(where + ": map key " + e.getKey() + " is not a String");
                    }
                    p.packString(k);
                    pack(p, e.getValue(), where + "." + k, depth + 1);
                }
            } else {
                Collection<?> items = v instanceof Object[] a ? Arrays.asList(a) : (Collection<?>) v;
                p.packArrayHeader(items.size());
                int i = 0;
                for (Object item : items) {
                    pack(p, item, where + "[" + i++ + "]", depth + 1);
                }
            }
        } else {
            throw new EncodeException(where + ": a " + v.getClass().getName()
                + " cannot be encoded (see docs/protocol.md for the types)");
        }
    }
}
