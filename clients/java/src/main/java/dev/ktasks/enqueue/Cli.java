package dev.ktasks.enqueue;

import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;

/**
 * ktasks-enqueue for Java: sends one task (or raw bytes) and prints where it went as one JSON line.
 *
 * <pre>
 * enqueue --bootstrap HOST:PORT --topic TOPIC --task NAME [--args JSON] [--kwargs JSON]
 *         [--key KEY] [--idempotency-key KEY] [--task-id ID] [--header NAME=VALUE ...]
 * raw     --bootstrap HOST:PORT --topic TOPIC --value-hex HEX [--value-hex HEX ...] [--key KEY]
 *         [--header NAME=VALUE ...]
 * </pre>
 *
 * --args and --kwargs are JSON in the test vectors' tagged notation (protocol/vectors/README.md). raw sends
 * one record per --value-hex, in order, as they are (for example invalid test vectors); one line per record.
 */
public final class Cli {
    private Cli() {
    }

    public static void main(String[] argv) {
        try {
            System.out.println(run(argv));
        } catch (Exception e) {
            System.err.println("ktasks-enqueue: " + e.getMessage());
            System.exit(1);
        }
    }

    @SuppressWarnings("unchecked")
    static String run(String[] argv) throws Exception {
        if (argv.length == 0 || !(argv[0].equals("enqueue") || argv[0].equals("raw"))) {
            throw new IllegalArgumentException("usage: {enqueue|raw} --bootstrap HOST:PORT --topic TOPIC ...");
        }
        Map<String, String> flags = new java.util.HashMap<>(Map.of("--args", "[]", "--kwargs", "{}"));
        List<Header> headers = new ArrayList<>();
        List<String> values = new ArrayList<>();
        for (int i = 1; i < argv.length; i += 2) {
            if (i + 1 >= argv.length) {
                throw new IllegalArgumentException(argv[i] + " needs a value");
            }
            if (argv[i].equals("--header")) {
                int at = argv[i + 1].indexOf('=');
                if (at <= 0) {
                    throw new IllegalArgumentException("--header wants NAME=VALUE, got " + argv[i + 1]);
                }
                headers.add(Header.of(argv[i + 1].substring(0, at), argv[i + 1].substring(at + 1)));
            } else if (argv[i].equals("--value-hex")) {
                values.add(argv[i + 1]);
            } else {
                flags.put(argv[i], argv[i + 1]);
            }
        }
        String bootstrap = require(flags, "--bootstrap");
        String topic = require(flags, "--topic");
        try (KtasksProducer producer = new KtasksProducer(bootstrap, topic)) {
            StringBuilder out = new StringBuilder();
            if (argv[0].equals("raw")) {
                if (values.isEmpty()) {
                    throw new IllegalArgumentException("raw needs --value-hex");
                }
                String key = flags.get("--key");
                for (String hex : values) {
                    out.append(json(producer.sendRaw(topic, HexFormat.of().parseHex(hex),
                        key == null ? null : key.getBytes(java.nio.charset.StandardCharsets.UTF_8), headers)));
                }
            } else {
                Options options = new Options().key(flags.get("--key")).taskId(flags.get("--task-id"))
                    .idempotencyKey(flags.get("--idempotency-key"));
                options.headers.addAll(headers);
                out.append(json(producer.enqueue(require(flags, "--task"),
                    (List<Object>) Tagged.parse(flags.get("--args")),
                    (Map<String, Object>) Tagged.parse(flags.get("--kwargs")), options)));
            }
            return out.toString().stripTrailing();
        }
    }

    private static String json(KtasksProducer.Sent sent) {
        return String.format("{\"id\": %s, \"topic\": \"%s\", \"partition\": %d, \"offset\": %d}%n",
            sent.id() == null ? "null" : "\"" + sent.id() + "\"", sent.topic(), sent.partition(), sent.offset());
    }

    private static String require(Map<String, String> flags, String name) {
        String value = flags.get(name);
        if (value == null) {
            throw new IllegalArgumentException(name + " is required");
        }
        return value;
    }
}
