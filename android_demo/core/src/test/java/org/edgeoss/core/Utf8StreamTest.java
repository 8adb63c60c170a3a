package org.edgeoss.core;

import static org.junit.Assert.assertEquals;

import org.junit.Test;

public class Utf8StreamTest {
    private static byte[] b(int... v) {
        byte[] out = new byte[v.length];
        for (int i = 0; i < v.length; i++) out[i] = (byte) v[i];
        return out;
    }

    @Test
    public void joinsCharactersSplitAcrossPieces() {
        Utf8Stream u = new Utf8Stream();
        assertEquals("caf", u.decode(b('c', 'a', 'f', 0xC3)));
        assertEquals("\u00e9 ", u.decode(b(0xA9, ' ')));
        assertEquals("", u.decode(b(0xF0, 0x9F)));
        assertEquals("", u.decode(b(0x98)));
        assertEquals("\uD83D\uDE00!", u.decode(b(0x80, '!')));
        assertEquals("", u.finish());
    }

    @Test
    public void invalidBytesBecomeReplacementCharacters() {
        Utf8Stream u = new Utf8Stream();
        assertEquals("a\uFFFDb", u.decode(b('a', 0xFF, 'b')));
        assertEquals("x", u.decode(b('x', 0xE2, 0x82)));
        assertEquals("\uFFFD", u.finish());
    }
}
