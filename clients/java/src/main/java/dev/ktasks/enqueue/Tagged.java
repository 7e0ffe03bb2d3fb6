package dev.ktasks.enqueue;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

/**
 * The test vectors' tagged JSON (protocol/vectors/README.md) as Java values; used by the vector
 * tests and the command line. Maps keep the JSON's key order.
 */
public final class Tagged {
    private static final ObjectMapper JSON = new ObjectMapper();

    private Tagged() {
    }

    public static Object parse(String text) throws java.io.IOException {
        return convert(JSON.readTree(text));
    }

    public static Object convert(JsonNode node) {
        if (node == null || node.isNull()) {
            return null;
        }
        if (node.isBoolean()) {
            return node.booleanValue();
        }
        if (node.isTextual()) {
            return node.textValue();
        }
        if (node.isIntegralNumber()) {
            return integer(node.bigIntegerValue());
        }
        if (node.isNumber()) {
            throw new IllegalArgumentException("untagged float " + node + ": write {\"$float\": " + node + "}");
        }
        if (node.isArray()) {
            List<Object> out = new ArrayList<>();
            node.forEach(item -> out.add(convert(item)));
            return out;
        }
        if (node.size() == 1) {
            String tag = node.fieldNames().next();
            if (tag.startsWith("$")) {
                return untag(tag, node.get(tag));
            }
        }
        Map<String, Object> out = new LinkedHashMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = node.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            out.put(e.getKey(), convert(e.getValue()));
        }
        return out;
    }

    private static Object integer(BigInteger n) {
        return n.bitLength() < 64 ? (Object) n.longValue() : n;
    }

    private static Object untag(String tag, JsonNode inner) {
        String text = inner.asText();
        return switch (tag) {
            case "$float" -> inner.doubleValue();
            case "$int" -> integer(new BigInteger(text));
            case "$bytes" -> HexFormat.of().parseHex(text);
            case "$datetime" -> OffsetDateTime.parse(text);
            case "$naive_datetime" -> LocalDateTime.parse(text);
            case "$date" -> LocalDate.parse(text);
            case "$decimal" -> new BigDecimal(text);
            case "$uuid" -> UUID.fromString(text);
            default -> throw new IllegalArgumentException("unknown tag " + tag);
        };
    }
}
