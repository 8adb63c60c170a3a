package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import org.junit.Test;

public class MemoryDecisionTest {
    @Test
    public void refusesWithAHumanMessage() {
        MemoryDecision d = MemoryDecision.decide(5_100_000_000L, 7_000_000_000L, 7_850_000_000L);
        assertFalse(d.allowed);
        assertEquals(7_850_000_000L, d.neededBytes);
        assertEquals("needs 7.9 GB free, 5.1 GB available: close other apps or use a bundle planned for a "
                + "smaller context", d.message);
    }

    @Test
    public void allowsWhenEnoughIsFree() {
        MemoryDecision d = MemoryDecision.decide(9_300_000_000L, 7_000_000_000L, 7_850_000_000L);
        assertTrue(d.allowed);
        assertEquals("memory ok: needs 7.9 GB free, 9.3 GB available", d.message);
        assertTrue(MemoryDecision.decide(7_850_000_000L, 7_000_000_000L, 7_850_000_000L).allowed);
    }

    @Test
    public void needIsTheLargerOfManifestAndPlan() {
        assertEquals(8_000_000_000L, MemoryDecision.decide(1, 8_000_000_000L, 7_850_000_000L).neededBytes);
        assertEquals(8_000_000_000L, MemoryDecision.decide(1, 8_000_000_000L, 0).neededBytes);
    }

    @Test
    public void aStreamingBundleNeedsItsPlansResidentTotalNotTheModelFile() {
        // gpt-oss-20b with the expert store on a Pixel 9 Pro: a 13.8 GB GGUF, 10.5 GB planned in all
        long modelFile = 13_780_000_000L;
        long planTotal = 10_510_000_000L;
        long minFree = 10_720_000_000L;  // the plan's RAM and the reserve it keeps free
        MemoryDecision d = MemoryDecision.decide(11_000_000_000L, minFree, planTotal);
        assertTrue(d.allowed);
        assertEquals(minFree, d.neededBytes);
        assertTrue(d.neededBytes < modelFile);
    }

    @Test
    public void roundingNeverHidesTheShortfall() {
        MemoryDecision d = MemoryDecision.decide(5_100_000_000L, 5_100_000_001L, 0);
        assertFalse(d.allowed);
        assertTrue(d.message, d.message.startsWith("needs 5.2 GB free, 5.1 GB available"));
    }
}
