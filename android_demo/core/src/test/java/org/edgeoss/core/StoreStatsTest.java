package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;

import org.junit.Test;

public class StoreStatsTest {
    // hits, misses, bytes read, read ns, resident, peak, budget, evictions, pinned, slots, n_ubatch, pages, per miss,
    // resident experts, cached experts
    private static long[] counters(long hits, long misses, long bytesRead, long readNs) {
        return new long[] {hits, misses, bytesRead, readNs, 6_000_000_000L, 6_500_000_000L, 6_800_000_000L, 7, 500,
            10, 512, 5_900_000_000L, 13_219_200L, 508, 8};
    }

    @Test
    public void noStoreIsNull() {
        assertNull(StoreStats.of(new long[StoreStats.FIELDS]));
    }

    @Test
    public void readsTheBridgesOrder() {
        StoreStats s = StoreStats.of(counters(90, 10, 132_192_000L, 100_000_000L));
        assertEquals(90, s.hits);
        assertEquals(10, s.misses);
        assertEquals(6_800_000_000L, s.budgetBytes);
        assertEquals(500, s.pinnedExperts);
        assertEquals(512, s.nUbatch);
        assertEquals(13_219_200L, s.bytesPerMiss);
        assertEquals(508, s.residentExperts);
        assertEquals(8, s.cachedExperts);
        assertEquals(0.9, s.hitRate(), 1e-12);
    }

    @Test
    public void aRunIsTheDifferenceAndItsSummaryIsPerToken() {
        StoreStats before = StoreStats.of(counters(90, 10, 132_192_000L, 100_000_000L));
        StoreStats after = StoreStats.of(counters(190, 30, 396_576_000L, 300_000_000L));
        StoreStats run = after.since(before);
        assertEquals(100, run.hits);
        assertEquals(20, run.misses);
        assertEquals(264_384_000L, run.bytesRead);
        assertEquals("experts: 83.3 % hits, 26 MB read/token at 1.3 GB/s, 6.0 of 6.8 GB held", run.summary(10));
    }

    @Test
    public void wrongLengthIsRefused() {
        assertThrows(IllegalArgumentException.class, () -> StoreStats.of(new long[3]));
    }
}
