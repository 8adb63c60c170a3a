package org.edgeoss.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.function.LongSupplier;
import java.util.function.Supplier;

/**
 * The benchmark protocol of {@code edgeoss profile}, run where the app runs: a prompt of N ordinary tokens
 * (random, fixed seed), M tokens generated greedily from an empty KV cache, R warm runs after one cold run
 * (the first after the load). It records TTFT, prefill and decode tok/s, peak RSS and PSS, the expert store's
 * hits, misses, bytes read and read time during decode, and the device; {@link #json} writes it as the
 * {@code edgeoss profile --json} result that {@code edgeoss plan --calibrate} and {@code edgeoss profiles import}
 * read.
 */
public final class DeviceBenchmark {
    /** Ordinary token ids lie below the first special token (o200k_harmony: 199998). */
    public static final int ORDINARY_TOKENS = 199998;

    /** What the protocol runs. */
    public static final class Settings {
        public final int promptTokens;
        public final int genTokens;
        public final int runs;

        public Settings(int promptTokens, int genTokens, int runs) {
            if (promptTokens < 1 || genTokens < 2 || runs < 1) {
                throw new IllegalArgumentException("the protocol needs >= 1 prompt token, >= 2 generated, >= 1 run");
            }
            this.promptTokens = promptTokens;
            this.genTokens = genTokens;
            this.runs = runs;
        }
    }

    /** The engine as the protocol drives it (LlamaEngine in the app and in the host harness). */
    public interface Engine {
        /**
         * Generates greedily after {@code prompt} from an empty KV cache, calling {@code onToken} after each
         * sampled token until it returns false; returns the tokens generated.
         */
        int generate(int[] prompt, TokenCallback onToken);

        /** The expert store's counters now, or null without a store. */
        StoreStats storeStats();
    }

    /** Called after each sampled token; false stops the generation. */
    public interface TokenCallback {
        boolean next();
    }

    /** One run's figures. */
    public static final class Run {
        public final double ttftSeconds;
        public final double prefillTokensPerSecond;
        public final double decodeTokensPerSecond;
        public final int tokens;
        public final StoreStats decodeStore; // the store's counters over the decode steps, or null
        public final long decodeReadBytes; // bytes read from storage during the decode steps (-1: unknown)

        Run(double ttft, double prefill, double decode, int tokens, StoreStats store, long read) {
            this.ttftSeconds = ttft;
            this.prefillTokensPerSecond = prefill;
            this.decodeTokensPerSecond = decode;
            this.tokens = tokens;
            this.decodeStore = store;
            this.decodeReadBytes = read;
        }
    }

    public final Settings settings;
    public final Run cold;
    public final List<Run> warm;
    public final long peakRssBytes;
    public final long peakPssBytes;

    private DeviceBenchmark(Settings settings, Run cold, List<Run> warm, long peakRss, long peakPss) {
        this.settings = settings;
        this.cold = cold;
        this.warm = warm;
        this.peakRssBytes = peakRss;
        this.peakPssBytes = peakPss;
    }

    /** The protocol's prompt: {@code n} ordinary token ids from a fixed seed. */
    public static int[] prompt(int n) {
        return new SplittableRandom(0).ints(n, 0, ORDINARY_TOKENS).toArray();
    }

    /**
     * Runs the protocol. {@code clock} gives monotonic nanoseconds (System::nanoTime); {@code memory} this
     * process's memory now (ProcMemory::read), sampled at every 16th token and after each run for the PSS peak.
     */
    public static DeviceBenchmark run(Engine engine, Settings settings, LongSupplier clock,
                                      Supplier<ProcMemory> memory) {
        int[] prompt = prompt(settings.promptTokens);
        long[] peakPss = {-1};
        List<Run> runs = new ArrayList<>();
        for (int r = 0; r <= settings.runs; r++) {
            runs.add(once(engine, prompt, settings.genTokens, clock, memory, peakPss));
        }
        long peakRss = memory.get().peakRssBytes;
        return new DeviceBenchmark(settings, runs.get(0), runs.subList(1, runs.size()), peakRss, peakPss[0]);
    }

    private static Run once(Engine engine, int[] prompt, int genTokens, LongSupplier clock,
                            Supplier<ProcMemory> memory, long[] peakPss) {
        TokenTimer timer = new TokenTimer();
        StoreStats[] atFirst = {null};
        long[] readAtFirst = {-1};
        timer.start(clock.getAsLong());
        engine.generate(prompt, () -> {
            timer.onToken(clock.getAsLong());
            if (timer.tokens() == 1) {
                atFirst[0] = engine.storeStats();
                readAtFirst[0] = memory.get().readBytes;
            } else if (timer.tokens() % 16 == 0) {
                peakPss[0] = Math.max(peakPss[0], memory.get().pssBytes);
            }
            return timer.tokens() < genTokens;
        });
        ProcMemory after = memory.get();
        peakPss[0] = Math.max(peakPss[0], after.pssBytes);
        StoreStats end = engine.storeStats();
        StoreStats store = end == null || atFirst[0] == null ? null : end.since(atFirst[0]);
        long read = readAtFirst[0] < 0 || after.readBytes < 0 ? -1 : after.readBytes - readAtFirst[0];
        double ttft = timer.ttftSeconds();
        return new Run(ttft, prompt.length / ttft, timer.decodeTokensPerSecond(), timer.tokens(), store, read);
    }

    /**
     * The result as {@code edgeoss profile --json} writes it (plus "cold", "peak_pss_bytes" and "protocol").
     *
     * @param engineName "llamacpp-stream" with the expert store, else "llamacpp" (the planner's engine names)
     * @param machine    the device: model, ram_bytes, cores, os, abi (written as given)
     */
    public String json(String engineName, String model, String artifact, int context, double loadSeconds,
                       long rssBeforeLoad, long rssAfterLoad, Map<String, Object> machine) {
        int decodeTokens = 0;
        long storeBytes = 0;
        long storeNanos = 0;
        long diskBytes = 0;
        boolean diskKnown = true;
        for (Run r : warm) {
            decodeTokens += r.tokens - 1;
            if (r.decodeStore != null) {
                storeBytes += r.decodeStore.bytesRead;
                storeNanos += r.decodeStore.readNanos;
            }
            diskKnown &= r.decodeReadBytes >= 0;
            diskBytes += Math.max(0, r.decodeReadBytes);
        }
        int steps = Math.max(1, decodeTokens);
        Map<String, Object> stats = new LinkedHashMap<>();
        stats.put("engine", engineName);
        stats.put("n_ctx", context);
        stats.put("decode_tokens", decodeTokens);
        StoreStats last = warm.get(warm.size() - 1).decodeStore;
        if (last != null) {
            long hits = 0;
            long misses = 0;
            for (Run r : warm) {
                hits += r.decodeStore.hits;
                misses += r.decodeStore.misses;
            }
            Map<String, Object> experts = new LinkedHashMap<>();
            experts.put("hits", hits);
            experts.put("misses", misses);
            experts.put("bytes_read", storeBytes);
            experts.put("read_seconds", storeNanos / 1e9);
            experts.put("budget_bytes", last.budgetBytes);
            experts.put("peak_bytes", last.peakBytes);
            experts.put("pinned_experts", last.pinnedExperts);
            experts.put("slots", last.slots);
            stats.put("experts", experts);
            stats.put("decode_bytes_read", storeBytes);
            stats.put("decode_bytes_read_per_token", (double) storeBytes / steps);
            stats.put("decode_miss_seconds_per_token", storeNanos / 1e9 / steps);
        }
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("engine", engineName);
        out.put("artifact", artifact);
        out.put("model", model);
        out.put("prompt_tokens", settings.promptTokens);
        out.put("gen_tokens", settings.genTokens);
        out.put("runs", settings.runs);
        out.put("load_s", loadSeconds);
        out.put("ttft_s", spread(warm, 0));
        out.put("prefill_tok_s", spread(warm, 1));
        out.put("decode_tok_s", spread(warm, 2));
        out.put("peak_rss_bytes", peakRssBytes);
        out.put("peak_pss_bytes", peakPssBytes);
        out.put("rss_before_load_bytes", rssBeforeLoad);
        out.put("rss_after_load_bytes", rssAfterLoad);
        out.put("disk_read_bytes", diskKnown ? diskBytes : -1);
        out.put("disk_read_bytes_per_decode_token", diskKnown ? (double) diskBytes / steps : -1.0);
        out.put("engine_stats", stats);
        Map<String, Object> coldRun = new LinkedHashMap<>();
        coldRun.put("ttft_s", cold.ttftSeconds);
        coldRun.put("prefill_tok_s", cold.prefillTokensPerSecond);
        coldRun.put("decode_tok_s", cold.decodeTokensPerSecond);
        out.put("cold", coldRun);
        out.put("machine", machine);
        Map<String, Object> protocol = new LinkedHashMap<>();
        protocol.put("context", context);
        protocol.put("prompt", "ordinary token ids, SplittableRandom(0)");
        protocol.put("sampling", "greedy");
        protocol.put("cold_runs", 1);
        out.put("protocol", protocol);
        return Json.write(out);
    }

    /** {median, min, max} of one figure over the runs (0 TTFT, 1 prefill, 2 decode). */
    private static Map<String, Object> spread(List<Run> runs, int which) {
        double[] v = new double[runs.size()];
        for (int i = 0; i < v.length; i++) {
            Run r = runs.get(i);
            v[i] = which == 0 ? r.ttftSeconds : which == 1 ? r.prefillTokensPerSecond : r.decodeTokensPerSecond;
        }
        Arrays.sort(v);
        int n = v.length;
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("median", n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
        out.put("min", v[0]);
        out.put("max", v[n - 1]);
        return out;
    }
}
