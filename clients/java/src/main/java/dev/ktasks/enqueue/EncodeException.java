package dev.ktasks.enqueue;

/** A task call that cannot be written in the ktasks wire format; the message names what is wrong. */
public class EncodeException extends IllegalArgumentException {
    private static final long serialVersionUID = 1L;

    public EncodeException(String message) {
        super(message);
    }
}
