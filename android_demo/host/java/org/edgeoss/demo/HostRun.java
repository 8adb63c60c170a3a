package org.edgeoss.demo;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.edgeoss.core.BundleManifest;
import org.edgeoss.core.MemoryDecision;
import org.edgeoss.core.ModelBundle;
import org.edgeoss.core.StoreStats;

/**
 * The app's load-and-run path on the build machine: open and verify a bundle with the core library, decide on
 * memory, load its GGUF through the JNI bridge with the bundle's settings (the expert store's included), generate
 * greedily and print one JSON line: the token ids, the memory decision and the store's counters.
 *
 *   java -Djava.library.path=LIB -cp CLASSES org.edgeoss.demo.HostRun BUNDLE PROMPT_FILE TOKENS
 *        [--no-store | --budget BYTES] [--available BYTES] [--threads N]
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
        for (int i = 3; i < args.length; i++) {
            switch (args[i]) {
                case "--no-store": useStore = false; break;
                case "--budget": budget = Long.parseLong(args[++i]); break;
                case "--available": available = Long.parseLong(args[++i]); break;
                case "--threads": threads = Integer.parseInt(args[++i]); break;
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
        try (LlamaEngine engine = new LlamaEngine("")) {
            long start = System.nanoTime();
            engine.load(bundle.modelPath().toString(), m.settings.nCtx, threads, m.settings.nBatch,
                    m.settings.flashAttn, expertBudget, store == null ? null : store.pinned,
                    store == null ? 0 : store.nUbatch);
            double loadSeconds = (System.nanoTime() - start) / 1e9;
            StoreStats before = StoreStats.of(engine.storeStats());
            engine.generate(prompt, 0.0f, (id, piece) -> {
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
}
