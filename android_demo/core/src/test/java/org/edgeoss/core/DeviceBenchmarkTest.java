package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.Test;

public class DeviceBenchmarkTest {
    /**
     * A scripted engine on a scripted clock: the prompt takes 2 s (warm) or 3 s (the cold first run), each decode
     * step 0.5 s, and every step reads one 1 MB expert in 0.1 s.
     */
    private static class Scripted implements DeviceBenchmark.Engine {
        long now;
        int calls;
        long[] store = {0, 0, 0, 0, 0, 7_000_000, 8_000_000, 0, 10, 4, 512, 0, 1_000_000, 14, 4};
        int[] lastPrompt;

        @Override
        public int generate(int[] prompt, DeviceBenchmark.TokenCallback onToken) {
            lastPrompt = prompt;
            now += calls++ == 0 ? 3_000_000_000L : 2_000_000_000L;
            int n = 0;
            while (true) {
                n++;
                if (!onToken.next()) return n;
                now += 500_000_000L;
                store[0] += 7; // hits
                store[1] += 1; // misses
                store[2] += 1_000_000; // bytes read
                store[3] += 100_000_000L; // read ns
            }
        }

        @Override
        public StoreStats storeStats() {
            return StoreStats.of(store.clone());
        }
    }

    @Test
    public void theProtocolTimesColdAndWarmRunsAndWritesWhatPlanCalibrateReads() throws Exception {
        Scripted engine = new Scripted();
        long[] pss = {100};
        DeviceBenchmark b = DeviceBenchmark.run(engine, new DeviceBenchmark.Settings(64, 9, 3), () -> engine.now,
                () -> new ProcMemory(1000, 5000, pss[0] += 10, 0));
        assertEquals(64, engine.lastPrompt.length);
        assertTrue(java.util.Arrays.stream(engine.lastPrompt).allMatch(t -> t >= 0 && t < 199998));
        assertEquals(java.util.Arrays.toString(DeviceBenchmark.prompt(64)), java.util.Arrays.toString(engine.lastPrompt));
        assertEquals(4, engine.calls); // one cold run, three warm
        assertEquals(3.0, b.cold.ttftSeconds, 1e-12);
        assertEquals(3, b.warm.size());
        assertEquals(2.0, b.warm.get(0).ttftSeconds, 1e-12);
        assertEquals(32.0, b.warm.get(0).prefillTokensPerSecond, 1e-9);
        assertEquals(2.0, b.warm.get(0).decodeTokensPerSecond, 1e-9);
        assertEquals(8, b.warm.get(0).decodeStore.misses); // the 8 steps after the first token
        assertEquals(5000, b.peakRssBytes);
        assertTrue(b.peakPssBytes > 100);

        Map<String, Object> machine = new LinkedHashMap<>();
        machine.put("device", "Scripted Phone");
        machine.put("ram_bytes", 16_000_000_000L);
        String text = b.json("llamacpp-stream", "gpt-oss-20b", "model.gguf", 4096, 12.5, 100, 200, machine);
        Json.Obj root = Json.parseObject(text, "profile.json");
        assertEquals("llamacpp-stream", root.str("engine"));
        assertEquals(64, root.integer("prompt_tokens", 0));
        assertEquals(9, root.integer("gen_tokens", 0));
        assertEquals(3, root.integer("runs", 0));
        assertEquals(2.0, root.obj("decode_tok_s").num("median", 0), 1e-9);
        assertEquals(2.0, root.obj("ttft_s").num("max", 0), 1e-9);
        assertEquals(3.0, root.obj("cold").num("ttft_s", 0), 1e-9);
        assertEquals(5000, root.lng("peak_rss_bytes"));
        assertEquals(0.0, root.num("disk_read_bytes_per_decode_token", -1), 0);
        Json.Obj stats = root.obj("engine_stats");
        assertEquals(24, stats.lng("decode_tokens"));
        assertEquals(1_000_000.0, stats.num("decode_bytes_read_per_token", 0), 1e-6);
        assertEquals(0.1, stats.num("decode_miss_seconds_per_token", 0), 1e-9);
        assertEquals(24, stats.obj("experts").lng("misses"));
        assertEquals(168, stats.obj("experts").lng("hits"));
        assertEquals("Scripted Phone", root.obj("machine").str("device"));
        assertEquals(4096, root.obj("protocol").integer("context", 0));
    }

    @Test
    public void withoutAStoreThereAreNoExpertFigures() throws Exception {
        Scripted engine = new Scripted() {
            @Override
            public StoreStats storeStats() {
                return null;
            }
        };
        DeviceBenchmark b = DeviceBenchmark.run(engine, new DeviceBenchmark.Settings(8, 4, 1), () -> engine.now,
                () -> new ProcMemory(1, 2, -1, -1));
        assertNull(b.warm.get(0).decodeStore);
        Json.Obj root = Json.parseObject(b.json("llamacpp", "m", "a.gguf", 256, 1, 1, 1, new LinkedHashMap<>()),
                "profile.json");
        assertTrue(!root.obj("engine_stats").has("experts"));
        assertEquals(-1, root.lng("disk_read_bytes"));
        assertEquals(-1, root.lng("peak_pss_bytes"));
    }
}
