package org.edgeoss.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.regex.Pattern;

/** manifest.json of an Android bundle written by {@code edgeoss package android}. */
public final class BundleManifest {
    public static final String FILE_NAME = "manifest.json";
    public static final int FORMAT_VERSION = 1;
    private static final Pattern SHA256 = Pattern.compile("[0-9a-fA-F]{64}");

    /** One file of the bundle (every file except manifest.json). */
    public static final class FileEntry {
        public final String path;
        public final long size;
        public final String sha256;

        public FileEntry(String path, long size, String sha256) {
            this.path = path;
            this.size = size;
            this.sha256 = sha256;
        }
    }

    /** engine.settings: how llama.cpp is to load and run the model. */
    public static final class EngineSettings {
        public final int nCtx;
        public final int nThreads;
        public final int nGpuLayers;
        public final boolean useMmap;
        public final boolean useMlock;
        public final int nBatch;
        public final boolean flashAttn;

        EngineSettings(int nCtx, int nThreads, int nGpuLayers, boolean useMmap, boolean useMlock, int nBatch,
                       boolean flashAttn) {
            this.nCtx = nCtx;
            this.nThreads = nThreads;
            this.nGpuLayers = nGpuLayers;
            this.useMmap = useMmap;
            this.useMlock = useMlock;
            this.nBatch = nBatch;
            this.flashAttn = flashAttn;
        }
    }

    /**
     * engine.expert_store: the plan streams experts from the GGUF within {@code budgetBytes}, pinning
     * {@code pinned} (layer, stored expert id pairs, flattened) and keeping {@code cacheSlots} LRU slots; the
     * ubatch is at most {@code nUbatch}. Null in a manifest whose plan keeps every expert resident.
     */
    public static final class ExpertStoreSettings {
        public final long budgetBytes;
        public final int cacheSlots;
        public final int nUbatch;
        public final int[] pinned;

        ExpertStoreSettings(long budgetBytes, int cacheSlots, int nUbatch, int[] pinned) {
            this.budgetBytes = budgetBytes;
            this.cacheSlots = cacheSlots;
            this.nUbatch = nUbatch;
            this.pinned = pinned;
        }

        public int pinnedExperts() {
            return pinned.length / 2;
        }

        static ExpertStoreSettings parse(Json.Obj s) throws BundleException {
            long budget = s.lng("budget_bytes");
            if (budget <= 0) throw s.fail("budget_bytes", "must be positive");
            int slots = s.integer("cache_slots", 0);
            int ubatch = s.integer("n_ubatch", 512);
            if (slots < 0) throw s.fail("cache_slots", "must not be negative");
            if (ubatch <= 0) throw s.fail("n_ubatch", "must be positive");
            Json.Obj pinned = s.objOrEmpty("pinned");
            List<Integer> flat = new ArrayList<>();
            for (String layer : pinned.keys()) {
                int l;
                try {
                    l = Integer.parseInt(layer);
                } catch (NumberFormatException e) {
                    throw pinned.fail(layer, "is not a layer number");
                }
                if (l < 0) throw pinned.fail(layer, "is not a layer number");
                for (long id : pinned.longs(layer)) {
                    if (id < 0 || id > Integer.MAX_VALUE) throw pinned.fail(layer, "holds an expert id out of range");
                    flat.add(l);
                    flat.add((int) id);
                }
            }
            return new ExpertStoreSettings(budget, slots, ubatch, flat.stream().mapToInt(Integer::intValue).toArray());
        }
    }

    public final String modelName;
    public final long paramsTotal;
    public final long paramsActive;
    public final int context;
    public final List<FileEntry> files;
    public final long minFreeRamBytes;
    public final String modelFile;
    public final EngineSettings settings;
    /** The expert store's settings, or null when the plan keeps every expert resident. */
    public final ExpertStoreSettings expertStore;
    /** Relative path of plan.json, or null when the manifest names none. */
    public final String planFile;
    /**
     * Relative path of the tools' developer-message section (openai-harmony's rendering of the bundle's
     * tools.json, written by {@code package android --tools}), or null when the bundle declares no tools.
     */
    public final String toolsSectionFile;

    private BundleManifest(String modelName, long paramsTotal, long paramsActive, int context,
                           List<FileEntry> files, long minFreeRamBytes,
                           String modelFile, EngineSettings settings, ExpertStoreSettings expertStore,
                           String planFile, String toolsSectionFile) {
        this.modelName = modelName;
        this.paramsTotal = paramsTotal;
        this.paramsActive = paramsActive;
        this.context = context;
        this.files = Collections.unmodifiableList(files);
        this.minFreeRamBytes = minFreeRamBytes;
        this.modelFile = modelFile;
        this.settings = settings;
        this.expertStore = expertStore;
        this.planFile = planFile;
        this.toolsSectionFile = toolsSectionFile;
    }

    public static BundleManifest parse(String json) throws BundleException {
        Json.Obj root = Json.parseObject(json, FILE_NAME);
        String format = root.str("format");
        if (!format.equals("edgeoss-bundle")) {
            throw new BundleException(FILE_NAME + ": format is '" + format + "', not 'edgeoss-bundle': "
                    + "this folder was not written by `edgeoss package android`");
        }
        long version = root.lng("format_version");
        if (version != FORMAT_VERSION) {
            throw new BundleException(FILE_NAME + ": format_version " + version + " is not supported (this app reads "
                    + FORMAT_VERSION + "): use a matching edgeoss and app");
        }
        String target = root.str("target");
        if (!target.equals("android")) {
            throw new BundleException(FILE_NAME + ": bundle was packaged for target '" + target + "', not android: "
                    + "run `edgeoss package android`");
        }

        Json.Obj model = root.obj("model");
        int context = root.integer("context", 0);
        if (context <= 0) throw root.fail("context", "must be a positive integer");
        List<FileEntry> files = files(root);

        Json.Obj memory = root.obj("memory");
        long minFree = memory.lng("min_free_ram_bytes");
        if (minFree <= 0) throw memory.fail("min_free_ram_bytes", "must be positive");

        Json.Obj engine = root.obj("engine");
        String engineName = engine.str("name");
        if (!engineName.equals("llama.cpp")) {
            throw engine.fail("name", "is '" + engineName + "': this app runs llama.cpp bundles only");
        }
        String modelFile = engine.str("model_file");
        if (files.stream().noneMatch(f -> f.path.equals(modelFile))) {
            throw engine.fail("model_file", "names '" + modelFile + "', which is not listed in 'files'");
        }
        Json.Obj s = engine.objOrEmpty("settings");
        EngineSettings settings = new EngineSettings(
                s.integer("n_ctx", context), s.integer("n_threads", 4), s.integer("n_gpu_layers", 0),
                s.bool("use_mmap", true), s.bool("use_mlock", false), s.integer("n_batch", 512),
                s.bool("flash_attn", false));
        ExpertStoreSettings store = engine.has("expert_store")
                ? ExpertStoreSettings.parse(engine.obj("expert_store")) : null;
        if (store != null && !settings.useMmap) {
            throw engine.fail("expert_store", "needs use_mmap: the store streams experts from the mapped file");
        }

        String planFile = root.has("plan") ? root.str("plan") : null;
        String toolsSection = root.has("tools") ? root.obj("tools").str("developer_section") : null;
        if (toolsSection != null && files.stream().noneMatch(f -> f.path.equals(toolsSection))) {
            throw root.obj("tools").fail("developer_section", "names '" + toolsSection + "', which is not listed in 'files'");
        }
        return new BundleManifest(model.str("name"), model.lng("params_total", 0), model.lng("params_active", 0),
                context, files, minFree, modelFile, settings, store, planFile, toolsSection);
    }

    private static List<FileEntry> files(Json.Obj root) throws BundleException {
        List<Json.Obj> items = root.objects("files");
        if (items.isEmpty()) throw root.fail("files", "is empty");
        List<FileEntry> files = new ArrayList<>();
        Set<String> seen = new HashSet<>();
        for (int i = 0; i < items.size(); i++) {
            Json.Obj f = items.get(i);
            String path = f.str("path");
            long size = f.lng("size");
            String sha = f.str("sha256");
            if (size < 0) throw f.fail("size", "is negative");
            if (!SHA256.matcher(sha).matches()) throw f.fail("sha256", "is not 64 hex digits");
            if (!seen.add(path)) throw root.fail("files", "lists '" + path + "' twice");
            files.add(new FileEntry(path, size, sha.toLowerCase(Locale.ROOT)));
        }
        return files;
    }
}
