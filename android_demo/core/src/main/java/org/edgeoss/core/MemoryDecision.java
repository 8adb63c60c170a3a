package org.edgeoss.core;

import java.util.Locale;

/**
 * Whether the phone has enough free RAM to load a bundle. The need is the larger of the manifest's
 * min_free_ram_bytes and the plan's memory.total_bytes; the available figure comes from the OS
 * (ActivityManager.MemoryInfo.availMem on Android).
 */
public final class MemoryDecision {
    public final boolean allowed;
    public final long neededBytes;
    public final long availableBytes;
    public final String message;

    private MemoryDecision(boolean allowed, long neededBytes, long availableBytes, String message) {
        this.allowed = allowed;
        this.neededBytes = neededBytes;
        this.availableBytes = availableBytes;
        this.message = message;
    }

    /** {@code planTotalBytes} is 0 when the bundle has no plan. */
    public static MemoryDecision decide(long availableBytes, long minFreeRamBytes, long planTotalBytes) {
        long needed = Math.max(minFreeRamBytes, planTotalBytes);
        // Round the need up and the supply down so a refusal never reads "needs 5.1 GB, 5.1 GB available".
        String need = gb(needed, true);
        String have = gb(availableBytes, false);
        if (availableBytes >= needed) {
            return new MemoryDecision(true, needed, availableBytes,
                    "memory ok: needs " + need + " free, " + have + " available");
        }
        return new MemoryDecision(false, needed, availableBytes, "needs " + need + " free, " + have
                + " available: close other apps or use a bundle planned for a smaller context");
    }

    /** Decimal gigabytes with one digit after the point. */
    private static String gb(long bytes, boolean roundUp) {
        long tenth = 100_000_000L;
        long t = roundUp ? (bytes + tenth - 1) / tenth : bytes / tenth;
        return String.format(Locale.ROOT, "%d.%d GB", t / 10, t % 10);
    }
}
