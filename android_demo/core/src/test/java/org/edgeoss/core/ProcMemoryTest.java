package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import org.junit.Test;

public class ProcMemoryTest {
    @Test
    public void readsRssPeakPssAndReadsFromProcTexts() {
        String status = "Name:\tjava\nVmPeak:\t 9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t3\n";
        String rollup = "00400000-7fff [rollup]\nRss:     1100 kB\nPss:      900 kB\nPss_Anon: 100 kB\n";
        String io = "rchar: 5\nwchar: 6\nread_bytes: 40960\nwrite_bytes: 0\n";
        ProcMemory m = ProcMemory.parse(status, rollup, io);
        assertEquals(1024 * 1024, m.rssBytes);
        assertEquals(2048 * 1024, m.peakRssBytes);
        assertEquals(900 * 1024, m.pssBytes);
        assertEquals(40960, m.readBytes);
        ProcMemory none = ProcMemory.parse(status, null, null);
        assertEquals(-1, none.pssBytes);
        assertEquals(-1, none.readBytes);
    }

    @Test
    public void thisProcessHasAnRssAndAPeak() {
        ProcMemory m = ProcMemory.read();
        assertTrue(m.rssBytes > 0 && m.peakRssBytes >= m.rssBytes);
    }
}
