package dev.ktasks.enqueue;

/** One Kafka record header. */
public record Header(String key, byte[] value) {
    public static Header of(String key, String value) {
        return new Header(key, value.getBytes(java.nio.charset.StandardCharsets.UTF_8));
    }
}
