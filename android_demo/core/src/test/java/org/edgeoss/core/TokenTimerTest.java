package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import org.junit.Test;

public class TokenTimerTest {
    @Test
    public void ttftAndDecodeSpeed() {
        TokenTimer t = new TokenTimer();
        t.start(0);
        assertTrue(Double.isNaN(t.ttftSeconds()));
        t.onToken(1_200_000_000L);
        assertEquals(1.2, t.ttftSeconds(), 1e-12);
        assertTrue(Double.isNaN(t.decodeTokensPerSecond()));
        for (int i = 1; i <= 15; i++) t.onToken(1_200_000_000L + i * 200_000_000L);
        assertEquals(16, t.tokens());
        assertEquals(5.0, t.decodeTokensPerSecond(), 1e-9);
    }
}
