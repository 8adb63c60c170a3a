package org.edgeoss.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import org.junit.Test;

public class BundleManifestTest {
    private static String good() throws Exception {
        return TestBundles.manifest(TestBundles.files());
    }

    private static String failure(String manifestText) {
        return assertThrows(BundleException.class, () -> BundleManifest.parse(manifestText)).getMessage();
    }

    @Test
    public void parsesTheContract() throws Exception {
        BundleManifest m = BundleManifest.parse(good());
        assertEquals("gpt-oss-20b", m.modelName);
        assertEquals(20914757184L, m.paramsTotal);
        assertEquals(3608307264L, m.paramsActive);
        assertEquals(8192, m.context);
        assertEquals(6, m.files.size());
        assertEquals(TestBundles.MODEL, m.files.get(0).path);
        assertEquals(TestBundles.files().get(TestBundles.MODEL).length, m.files.get(0).size);
        assertEquals(7000000000L, m.minFreeRamBytes);
        assertEquals(TestBundles.MODEL, m.modelFile);
        assertEquals(8192, m.settings.nCtx);
        assertEquals(6, m.settings.nThreads);
        assertEquals(0, m.settings.nGpuLayers);
        assertTrue(m.settings.useMmap);
        assertFalse(m.settings.useMlock);
        assertEquals(512, m.settings.nBatch);
        assertEquals("plan.json", m.planFile);
    }

    @Test
    public void aPlanThatKeepsEveryExpertResidentHasNoStore() throws Exception {
        BundleManifest m = BundleManifest.parse(good());
        assertNull(m.expertStore);
        assertFalse(m.settings.flashAttn);
    }

    private static String streaming(String store) throws Exception {
        return good().replace("\"n_batch\": 512},", "\"n_batch\": 512, \"flash_attn\": true},\n  \"expert_store\": "
                + store + ",");
    }

    @Test
    public void parsesTheExpertStore() throws Exception {
        BundleManifest m = BundleManifest.parse(streaming("{\"budget_bytes\": 6800000000, \"cache_slots\": 10,"
                + " \"n_ubatch\": 512, \"pinned\": {\"0\": [0, 1, 5], \"23\": [31]}}"));
        assertTrue(m.settings.flashAttn);
        assertEquals(6800000000L, m.expertStore.budgetBytes);
        assertEquals(10, m.expertStore.cacheSlots);
        assertEquals(512, m.expertStore.nUbatch);
        assertArrayEquals(new int[] {0, 0, 0, 1, 0, 5, 23, 31}, m.expertStore.pinned);
        assertEquals(4, m.expertStore.pinnedExperts());
    }

    @Test
    public void badExpertStoresAreNamed() throws Exception {
        assertEquals("manifest.json: 'engine.expert_store.budget_bytes' must be positive",
                failure(streaming("{\"budget_bytes\": 0, \"pinned\": {}}")));
        assertEquals("manifest.json: 'engine.expert_store.pinned.x' is not a layer number",
                failure(streaming("{\"budget_bytes\": 5, \"pinned\": {\"x\": [1]}}")));
        assertEquals("manifest.json: 'engine.expert_store.pinned.0[1]' must be an integer",
                failure(streaming("{\"budget_bytes\": 5, \"pinned\": {\"0\": [1, \"2\"]}}")));
        assertEquals("manifest.json: 'engine.expert_store.pinned.0' holds an expert id out of range",
                failure(streaming("{\"budget_bytes\": 5, \"pinned\": {\"0\": [-1]}}")));
        assertEquals("manifest.json: 'engine.expert_store' needs use_mmap: the store streams experts from the mapped "
                + "file", failure(streaming("{\"budget_bytes\": 5}").replace("\"use_mmap\": true", "\"use_mmap\": false")));
    }

    @Test
    public void ignoresUnknownKeysAndDefaultsMissingSettings() throws Exception {
        String text = good().replaceFirst("\"settings\": \\{[^}]*\\},", "")
                .replace("\"context\": 8192,", "\"context\": 4096, \"from_the_future\": {\"x\": [1]},");
        BundleManifest m = BundleManifest.parse(text);
        assertEquals(4096, m.settings.nCtx);
        assertTrue(m.settings.useMmap);
        assertFalse(m.settings.useMlock);
    }

    @Test
    public void missingRequiredKeyIsNamed() throws Exception {
        assertEquals("manifest.json: missing required key 'memory.min_free_ram_bytes'",
                failure(good().replace("\"min_free_ram_bytes\": 7000000000, ", "")));
        assertEquals("manifest.json: missing required key 'files'",
                failure(good().replaceFirst("\"files\": \\[[^\\]]*\\],", "")));
        assertEquals("manifest.json: missing required key 'engine.model_file'",
                failure(good().replace("\"model_file\": \"" + TestBundles.MODEL + "\",", "")));
    }

    @Test
    public void rejectsOtherFormatsVersionsAndTargets() throws Exception {
        assertTrue(failure(good().replace("\"edgeoss-bundle\"", "\"something-else\""))
                .startsWith("manifest.json: format is 'something-else', not 'edgeoss-bundle'"));
        assertTrue(failure(good().replace("\"format_version\": 1", "\"format_version\": 2"))
                .startsWith("manifest.json: format_version 2 is not supported"));
        assertTrue(failure(good().replace("\"target\": \"android\"", "\"target\": \"ios\""))
                .startsWith("manifest.json: bundle was packaged for target 'ios', not android"));
        assertTrue(failure(good().replace("\"name\": \"llama.cpp\"", "\"name\": \"onnxruntime-genai\""))
                .startsWith("manifest.json: 'engine.name' is 'onnxruntime-genai'"));
    }

    @Test
    public void rejectsInconsistentEntries() throws Exception {
        assertEquals("manifest.json: 'context' must be an integer",
                failure(good().replace("\"context\": 8192,", "\"context\": \"8192\",")));
        assertEquals("manifest.json: 'engine.model_file' names 'nope.gguf', which is not listed in 'files'",
                failure(good().replace("\"model_file\": \"" + TestBundles.MODEL, "\"model_file\": \"nope.gguf")));
        assertEquals("manifest.json: 'files[0].sha256' is not 64 hex digits",
                failure(good().replaceFirst("\"sha256\": \"[0-9a-f]{64}\"", "\"sha256\": \"abc\"")));
        assertEquals("manifest.json: 'files' lists 'README.md' twice",
                failure(good().replace("\"path\": \"chat_template.jinja\"", "\"path\": \"README.md\"")));
        assertTrue(failure("{\"format\": ").startsWith("manifest.json: invalid JSON at line 1"));
    }
}
