package org.edgeoss.core;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * Decodes UTF-8 that arrives in pieces (llama.cpp token pieces can split a character): bytes of an
 * unfinished character wait for the next piece. Invalid bytes become U+FFFD.
 */
public final class Utf8Stream {
    private byte[] carry = new byte[0];

    public String decode(byte[] piece) {
        byte[] buf = Arrays.copyOf(carry, carry.length + piece.length);
        System.arraycopy(piece, 0, buf, carry.length, piece.length);
        int complete = completeLength(buf);
        carry = Arrays.copyOfRange(buf, complete, buf.length);
        return new String(buf, 0, complete, StandardCharsets.UTF_8);
    }

    /** Whatever is still waiting, decoded as is (an unfinished character becomes U+FFFD). */
    public String finish() {
        String rest = new String(carry, StandardCharsets.UTF_8);
        carry = new byte[0];
        return rest;
    }

    /** Length of the prefix of {@code b} that does not end inside a multi-byte character. */
    private static int completeLength(byte[] b) {
        for (int i = b.length - 1; i >= Math.max(0, b.length - 3); i--) {
            int v = b[i] & 0xFF;
            if (v < 0x80) return b.length;
            if (v >= 0xC0) {
                int need = v >= 0xF0 ? 4 : v >= 0xE0 ? 3 : 2;
                return b.length - i < need ? i : b.length;
            }
        }
        return b.length;
    }
}
