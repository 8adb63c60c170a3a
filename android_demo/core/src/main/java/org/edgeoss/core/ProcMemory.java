package org.edgeoss.core;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;

/**
 * This process's memory and reads, from Linux's /proc (Android's too): RSS and its peak (VmRSS, VmHWM in
 * /proc/self/status), PSS (/proc/self/smaps_rollup, what Android's memory accounting charges) and bytes read
 * from storage (read_bytes in /proc/self/io). A figure the kernel does not offer is -1.
 */
public final class ProcMemory {
    public final long rssBytes;
    public final long peakRssBytes;
    public final long pssBytes;
    public final long readBytes;

    ProcMemory(long rssBytes, long peakRssBytes, long pssBytes, long readBytes) {
        this.rssBytes = rssBytes;
        this.peakRssBytes = peakRssBytes;
        this.pssBytes = pssBytes;
        this.readBytes = readBytes;
    }

    /** Now. */
    public static ProcMemory read() {
        return parse(text("/proc/self/status"), text("/proc/self/smaps_rollup"), text("/proc/self/io"));
    }

    /** From the three files' texts (null: not readable). */
    static ProcMemory parse(String status, String smapsRollup, String io) {
        return new ProcMemory(kib(status, "VmRSS:"), kib(status, "VmHWM:"), kib(smapsRollup, "Pss:"),
                field(io, "read_bytes:"));
    }

    private static long kib(String text, String key) {
        long value = field(text, key);
        return value < 0 ? -1 : value * 1024;
    }

    /** The first number after {@code key} at the start of a line, or -1. */
    private static long field(String text, String key) {
        if (text == null) return -1;
        for (String line : text.split("\n")) {
            if (!line.startsWith(key)) continue;
            String[] parts = line.substring(key.length()).trim().split("\\s+");
            try {
                return Long.parseLong(parts[0]);
            } catch (NumberFormatException e) {
                return -1;
            }
        }
        return -1;
    }

    private static String text(String path) {
        try {
            return new String(Files.readAllBytes(Paths.get(path)), StandardCharsets.UTF_8);
        } catch (IOException | SecurityException e) {
            return null;
        }
    }
}
