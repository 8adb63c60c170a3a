package org.edgeoss.core;

/**
 * Time to first token and decode speed of one generation, from monotonic nanosecond timestamps
 * (System.nanoTime()). Decode speed counts the tokens after the first over the time since the first,
 * so prompt processing does not dilute it.
 */
public final class TokenTimer {
    private long startNanos;
    private long firstNanos;
    private long lastNanos;
    private int tokens;

    public void start(long nanos) {
        startNanos = nanos;
        tokens = 0;
    }

    public void onToken(long nanos) {
        if (tokens == 0) firstNanos = nanos;
        lastNanos = nanos;
        tokens++;
    }

    public int tokens() {
        return tokens;
    }

    /** Seconds from start to the first token, or NaN before it. */
    public double ttftSeconds() {
        return tokens == 0 ? Double.NaN : (firstNanos - startNanos) / 1e9;
    }

    /** Tokens per second after the first token, or NaN with fewer than two tokens. */
    public double decodeTokensPerSecond() {
        if (tokens < 2 || lastNanos == firstNanos) return Double.NaN;
        return (tokens - 1) / ((lastNanos - firstNanos) / 1e9);
    }
}
