package org.edgeoss.core;

import java.util.Locale;

/**
 * The expert store's counters as the JNI bridge reports them ({@code nativeStoreStats}: 15 longs in this order),
 * and the line the app shows next to the decode speed.
 */
public final class StoreStats {
    public static final int FIELDS = 15;

    public final long hits;
    public final long misses;
    public final long bytesRead;
    public final long readNanos;
    public final long residentBytes;
    public final long peakBytes;
    public final long budgetBytes;
    public final long evictions;
    public final long pinnedExperts;
    public final long slots;
    public final long nUbatch;
    public final long residentPagesBytes;
    public final long bytesPerMiss;
    public final long residentExperts;
    public final long cachedExperts;

    private StoreStats(long[] v) {
        hits = v[0];
        misses = v[1];
        bytesRead = v[2];
        readNanos = v[3];
        residentBytes = v[4];
        peakBytes = v[5];
        budgetBytes = v[6];
        evictions = v[7];
        pinnedExperts = v[8];
        slots = v[9];
        nUbatch = v[10];
        residentPagesBytes = v[11];
        bytesPerMiss = v[12];
        residentExperts = v[13];
        cachedExperts = v[14];
    }

    /** The counters of a loaded engine; null when it runs without a store (every value 0). */
    public static StoreStats of(long[] values) {
        if (values == null || values.length != FIELDS) {
            throw new IllegalArgumentException("expected " + FIELDS + " store counters");
        }
        return values[6] == 0 ? null : new StoreStats(values.clone());
    }

    /** The counters of what happened after {@code before} (hits, misses, bytes, time); the rest as now. */
    public StoreStats since(StoreStats before) {
        long[] v = {hits - before.hits, misses - before.misses, bytesRead - before.bytesRead,
            readNanos - before.readNanos, residentBytes, peakBytes, budgetBytes, evictions - before.evictions,
            pinnedExperts, slots, nUbatch, residentPagesBytes, bytesPerMiss, residentExperts, cachedExperts};
        return new StoreStats(v);
    }

    public double hitRate() {
        long all = hits + misses;
        return all == 0 ? 1.0 : (double) hits / all;
    }

    /** e.g. "experts: 91.3 % hits, 412 MB read/token at 1.4 GB/s, 6.8 of 6.8 GB held". */
    public String summary(long tokens) {
        double mbPerToken = tokens > 0 ? bytesRead / 1e6 / tokens : 0.0;
        double gbPerSecond = readNanos > 0 ? bytesRead / (double) readNanos : 0.0;
        return String.format(Locale.ROOT, "experts: %.1f %% hits, %.0f MB read/token at %.1f GB/s, %.1f of %.1f GB held",
                100 * hitRate(), mbPerToken, gbPerSecond, residentBytes / 1e9, budgetBytes / 1e9);
    }
}
