package dev.ktasks.enqueue;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

import java.io.IOException;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.time.LocalDateTime;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.Stream;

import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

/** The Java encoder against the shared test vectors (protocol/vectors/), and its refusals. */
class VectorsTest {
    private static final ObjectMapper JSON = new ObjectMapper();

    static Path vectors() {
        String dir = System.getenv("KTASKS_VECTORS");
        return dir != null ? Path.of(dir) : Path.of("..", "..", "protocol", "vectors");
    }

    static Stream<Path> valid() throws IOException {
        List<Path> paths = new ArrayList<>();
        try (Stream<Path> s = Files.list(vectors().resolve("valid"))) {
            s.filter(p -> p.toString().endsWith(".json")).sorted().forEach(paths::add);
        }
        assertTrue(paths.size() >= 10, "vectors in " + vectors());
        return paths.stream();
    }

    @SuppressWarnings("unchecked")
    @ParameterizedTest
    @MethodSource("valid")
    void vector(Path path) throws IOException {
        JsonNode v = JSON.readTree(path.toFile());
        assumeFalse(v.path("not_for").has("java"), () -> v.path("not_for").path("java").asText());
        JsonNode e = v.get("envelope");
        Options options = new Options().taskId(e.get("id").asText());
        if (!e.get("ikey").isNull()) {
            options.idempotencyKey(e.get("ikey").asText());
        }
        if (!v.get("key").isNull()) {
            options.key(v.get("key").asText());
        }
        if (e.has("exp")) {
            options.expires = (Double) Tagged.convert(e.get("exp"));
        }
        v.get("caller_headers").forEach(h -> options.header(h.get(0).asText(), h.get(1).asText()));
        Object due = Tagged.convert(e.get("due"));
        TaskRecord rec = Envelope.buildRecord(e.get("task").asText(), (List<Object>) Tagged.convert(e.get("args")),
            (Map<String, Object>) Tagged.convert(e.get("kwargs")), options, (Double) Tagged.convert(e.get("created")),
            (Double) due);
        assertEquals(v.get("value").asText(), HexFormat.of().formatHex(rec.value()), path.getFileName().toString());
        if (v.get("key").isNull()) {
            assertNull(rec.key());
        } else {
            assertArrayEquals(v.get("key").asText().getBytes(StandardCharsets.UTF_8), rec.key());
        }
        List<List<String>> headers = new ArrayList<>();
        rec.headers().forEach(h -> headers.add(List.of(h.key(), new String(h.value(), StandardCharsets.UTF_8))));
        assertEquals(JSON.convertValue(v.get("headers"), List.class), headers);
    }

    @Test
    void keyedRecordsGoToTheMurmur2Partition() throws IOException {
        JsonNode cases = JSON.readTree(vectors().resolve("partitions.json").toFile()).get("cases");
        assertTrue(cases.size() > 0);
        // What kafka-clients' default partitioning (the one KtasksProducer keeps) does with a key.
        for (JsonNode c : cases) {
            byte[] key = c.get("key").asText().getBytes(StandardCharsets.UTF_8);
            assertEquals(c.get("partition").asInt(), BuiltInPartitioner.partitionForKey(key, c.get("partitions").asInt()),
                c.toString());
        }
    }

    private static TaskRecord build(List<?> args, Map<String, ?> kwargs, Options options) {
        return Envelope.buildRecord("t", args, kwargs, options.taskId("0f3c2a9e4b7d4c1a8e5f6a7b8c9d0e1f"),
            1733300000.25, null);
    }

    private static String text(TaskRecord rec) {
        return new String(rec.value(), StandardCharsets.ISO_8859_1);
    }

    @Test
    void timesAreWrittenAsPythonsIsoformat() {
        assertTrue(text(build(List.of(Instant.parse("2024-05-01T12:30:45.123456789Z")), Map.of(), new Options()))
            .contains("2024-05-01T12:30:45.123456+00:00"));
        assertTrue(text(build(List.of(OffsetDateTime.of(2024, 5, 1, 12, 30, 45, 0, ZoneOffset.ofHours(-5))),
            Map.of(), new Options())).contains("2024-05-01T12:30:45-05:00"));
        assertTrue(text(build(List.of(LocalDateTime.of(2024, 5, 1, 8, 0)), Map.of(), new Options()))
            .contains("2024-05-01T08:00:00"));
    }

    @Test
    void whatHasNoWireFormIsRefusedNamingTheArgument() {
        Object deep = List.of();
        for (int i = 1; i < Envelope.MAX_ARG_DEPTH; i++) {
            deep = List.of(deep);
        }
        build(List.of(deep), Map.of(), new Options());
        Object deeper = List.of(deep);
        Map<String, Runnable> cases = Map.of(
            "positional argument 0: a Set cannot be encoded", () -> build(List.of(Set.of(1)), Map.of(), new Options()),
            "keyword arguments.o: a java.lang.Object cannot be encoded",
            () -> build(List.of(), Map.of("o", new Object()), new Options()),
            "map key 1 is not a String", () -> build(List.of(Map.of(1, "one")), Map.of(), new Options()),
            "outside msgpack's integers", () -> build(List.of(BigInteger.TWO.pow(64)), Map.of(), new Options()),
            "nested more than 1022 arrays or maps deep", () -> build(List.of(deeper), Map.of(), new Options()),
            "header \"ktasks-replay\" is reserved for ktasks",
            () -> build(List.of(), Map.of(), new Options().header("ktasks-replay", "1")),
            "header \"Kafka_DLT-original-topic\" is reserved",
            () -> build(List.of(), Map.of(), new Options().header("Kafka_DLT-original-topic", "x")),
            "would never run", () -> build(List.of(), Map.of(), new Options().expires(Instant.ofEpochSecond(1733300000))));
        cases.forEach((want, call) -> {
            EncodeException err = assertThrows(EncodeException.class, call::run, want);
            assertTrue(err.getMessage().contains(want), err.getMessage() + " should say " + want);
        });
    }

    @Test
    void newIdIsAVersion4UuidInHex() {
        String id = Envelope.newId();
        assertTrue(id.matches("[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}"), id);
        assertFalse(id.equals(Envelope.newId()));
    }
}
