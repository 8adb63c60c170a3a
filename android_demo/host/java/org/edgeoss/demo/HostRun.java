package org.edgeoss.demo;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.time.ZoneOffset;
import java.time.ZonedDateTime;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import org.edgeoss.core.BundleManifest;
import org.edgeoss.core.DeviceBenchmark;
import org.edgeoss.core.Json;
import org.edgeoss.core.MemoryDecision;
import org.edgeoss.core.ModelBundle;
import org.edgeoss.core.ProcMemory;
import org.edgeoss.core.StoreStats;
import org.edgeoss.core.ToolLoop;
import org.edgeoss.core.ToolTurn;

/**
 * The app's load-and-run path on the build machine: open and verify a bundle with the core library, decide on
 * memory, load its GGUF through the JNI bridge with the bundle's settings (the expert store's included), generate
 * greedily and print one JSON line: the token ids, the memory decision and the store's counters.
 *
 *   java -Djava.library.path=LIB -cp CLASSES org.edgeoss.demo.HostRun BUNDLE PROMPT_FILE TOKENS
 *        [--no-store | --budget BYTES] [--available BYTES] [--threads N] [--tool-round FILE]
 *        [--profile OUT.json [--prompt-tokens N] [--runs R]]
 *
 * With --tool-round, the app's tool loop (ToolLoop, the demo's get_time) runs instead: the model is made to write
 * FILE's text in round one (random weights do not call tools), the call is answered, and round two is generated
 * with the KV cache's prefix reused, then once more from an empty cache; the JSON line adds "tool_loop".
 *
 * With --profile, the app's benchmark protocol (DeviceBenchmark: N random prompt tokens, TOKENS generated, one
 * cold and R warm runs) runs instead and writes OUT.json, the file the app writes on a phone.
 */
public final class HostRun {
    private HostRun() {
    }

    public static void main(String[] args) throws Exception {
        Path root = Paths.get(args[0]);
        byte[] prompt = Files.readAllBytes(Paths.get(args[1]));
        int tokens = Integer.parseInt(args[2]);
        boolean useStore = true;
        long budget = -1;
        long available = Long.MAX_VALUE;
        int threads = 2;
        String toolRound = null;
        String profileOut = null;
        int promptTokens = 64;
        int runs = 2;
        for (int i = 3; i < args.length; i++) {
            switch (args[i]) {
                case "--no-store": useStore = false; break;
                case "--budget": budget = Long.parseLong(args[++i]); break;
                case "--available": available = Long.parseLong(args[++i]); break;
                case "--threads": threads = Integer.parseInt(args[++i]); break;
                case "--tool-round": toolRound = Files.readString(Paths.get(args[++i])); break;
                case "--profile": profileOut = args[++i]; break;
                case "--prompt-tokens": promptTokens = Integer.parseInt(args[++i]); break;
                case "--runs": runs = Integer.parseInt(args[++i]); break;
                default: throw new IllegalArgumentException("unknown option " + args[i]);
            }
        }
        ModelBundle bundle = ModelBundle.open(root);
        bundle.verify(true, null);
        MemoryDecision memory = bundle.memoryDecision(available);
        BundleManifest m = bundle.manifest;
        BundleManifest.ExpertStoreSettings store = useStore ? m.expertStore : null;
        long expertBudget = store == null ? 0 : budget > 0 ? budget : store.budgetBytes;
        List<Integer> ids = new ArrayList<>();
        StringBuilder out = new StringBuilder("{");
        out.append("\"memory\": {\"allowed\": ").append(memory.allowed).append(", \"needed_bytes\": ")
                .append(memory.neededBytes).append(", \"message\": \"").append(memory.message).append("\"}");
        long rssBeforeLoad = ProcMemory.read().rssBytes;
        try (LlamaEngine engine = new LlamaEngine("")) {
            long start = System.nanoTime();
            engine.load(bundle.modelPath().toString(), m.settings.nCtx, threads, m.settings.nBatch,
                    m.settings.flashAttn, expertBudget, store == null ? null : store.pinned,
                    store == null ? 0 : store.nUbatch);
            double loadSeconds = (System.nanoTime() - start) / 1e9;
            if (profileOut != null) {
                DeviceBenchmark.Engine driven = new DeviceBenchmark.Engine() {
                    @Override
                    public int generate(int[] ids, DeviceBenchmark.TokenCallback onToken) {
                        return engine.generateIds(ids, 0.0f, false, (id, piece) -> onToken.next());
                    }

                    @Override
                    public StoreStats storeStats() {
                        return StoreStats.of(engine.storeStats());
                    }
                };
                long rssAfterLoad = ProcMemory.read().rssBytes;
                DeviceBenchmark bench = DeviceBenchmark.run(driven, new DeviceBenchmark.Settings(promptTokens, tokens,
                        runs), System::nanoTime, ProcMemory::read);
                String json = bench.json(store == null ? "llamacpp" : "llamacpp-stream", m.modelName,
                        m.modelFile, m.settings.nCtx, loadSeconds, rssBeforeLoad, rssAfterLoad, hostMachine());
                Files.writeString(Paths.get(profileOut), json);
                out.append(", \"profile\": ").append(Json.quote(profileOut)).append("}");
                System.out.println(out);
                return;
            }
            if (toolRound != null) {
                out.append(", \"tool_loop\": ").append(toolLoop(engine, new String(prompt, StandardCharsets.UTF_8),
                        toolRound, tokens)).append("}");
                System.out.println(out);
                return;
            }
            StoreStats before = StoreStats.of(engine.storeStats());
            engine.generate(prompt, 0.0f, false, (id, piece) -> {
                ids.add(id);
                return ids.size() < tokens;
            });
            StoreStats after = StoreStats.of(engine.storeStats());
            out.append(", \"load_s\": ").append(String.format(Locale.ROOT, "%.3f", loadSeconds));
            out.append(", \"tokens\": ").append(ids);
            if (after == null) {
                out.append(", \"store\": null");
            } else {
                StoreStats run = after.since(before);
                out.append(", \"store\": {\"hits\": ").append(after.hits).append(", \"misses\": ").append(after.misses)
                        .append(", \"bytes_read\": ").append(after.bytesRead).append(", \"read_ns\": ")
                        .append(after.readNanos).append(", \"resident_bytes\": ").append(after.residentBytes)
                        .append(", \"peak_bytes\": ").append(after.peakBytes).append(", \"budget_bytes\": ")
                        .append(after.budgetBytes).append(", \"evictions\": ").append(after.evictions)
                        .append(", \"pinned_experts\": ").append(after.pinnedExperts).append(", \"slots\": ")
                        .append(after.slots).append(", \"n_ubatch\": ").append(after.nUbatch)
                        .append(", \"resident_pages_bytes\": ").append(after.residentPagesBytes)
                        .append(", \"resident_bytes_at_load\": ").append(before.residentBytes)
                        .append(", \"resident_pages_bytes_at_load\": ").append(before.residentPagesBytes)
                        .append(", \"bytes_per_miss\": ").append(after.bytesPerMiss)
                        .append(", \"resident_experts\": ").append(after.residentExperts)
                        .append(", \"cached_experts\": ").append(after.cachedExperts)
                        .append(", \"summary\": \"").append(run.summary(ids.size())).append("\"}");
            }
        }
        out.append("}");
        System.out.println(out);
        System.out.flush();
    }

    /** This machine, as the app describes the phone (android.os.Build and the RAM). */
    private static Map<String, Object> hostMachine() throws java.io.IOException {
        Map<String, Object> machine = new LinkedHashMap<>();
        String cpu = "unknown CPU";
        long ram = -1;
        for (String line : Files.readAllLines(Paths.get("/proc/cpuinfo"))) {
            if (line.startsWith("model name")) {
                cpu = line.split(":", 2)[1].trim();
                break;
            }
        }
        for (String line : Files.readAllLines(Paths.get("/proc/meminfo"))) {
            if (line.startsWith("MemTotal:")) ram = Long.parseLong(line.replaceAll("[^0-9]", "")) * 1024;
        }
        machine.put("device", "host JVM on " + cpu);
        machine.put("ram_bytes", ram);
        machine.put("cores", Runtime.getRuntime().availableProcessors());
        machine.put("os", System.getProperty("os.name") + " " + System.getProperty("os.version"));
        machine.put("abi", System.getProperty("os.arch"));
        machine.put("source", "android_demo/host HostRun (the app's protocol through the JNI bridge)");
        return machine;
    }

    /** Round one forced, its call answered by the demo's get_time, round two generated with and without reuse. */
    private static String toolLoop(LlamaEngine engine, String prompt, String forced, int tokens) {
        ZonedDateTime now = ZonedDateTime.of(2026, 12, 7, 12, 0, 0, 0, ZoneOffset.UTC);
        ToolLoop loop = new ToolLoop(prompt, Map.of("get_time", call -> ToolTurn.getTime(call, now)), 4);
        engine.generate((prompt + forced).getBytes(StandardCharsets.UTF_8), 0.0f, true, (id, piece) -> false);
        loop.feed(forced);
        ToolLoop.Outcome outcome = loop.endRound();
        List<Integer> reusing = new ArrayList<>();
        List<Integer> fresh = new ArrayList<>();
        byte[] next = loop.prompt().getBytes(StandardCharsets.UTF_8);
        engine.generate(next, 0.0f, true, (id, piece) -> reusing.add(id) && reusing.size() < tokens);
        int reused = engine.reusedTokens();
        engine.generate(next, 0.0f, false, (id, piece) -> fresh.add(id) && fresh.size() < tokens);
        StringBuilder calls = new StringBuilder();
        for (ToolLoop.Exchange e : loop.exchanges()) {
            if (calls.length() > 0) calls.append(", ");
            calls.append("{\"recipient\": ").append(Json.quote(e.call.recipient)).append(", \"arguments\": ")
                    .append(Json.quote(e.call.arguments)).append(", \"result\": ").append(Json.quote(e.result))
                    .append("}");
        }
        return "{\"outcome\": \"" + outcome + "\", \"calls\": [" + calls + "], \"prompt\": "
                + Json.quote(loop.prompt()) + ", \"reused\": " + reused + ", \"fresh_reused\": "
                + engine.reusedTokens() + ", \"tokens\": " + reusing + ", \"fresh_tokens\": " + fresh + "}";
    }
}
