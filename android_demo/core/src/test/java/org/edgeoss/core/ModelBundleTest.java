package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class ModelBundleTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    @Test
    public void opensVerifiesAndDecides() throws Exception {
        Path dir = TestBundles.write(tmp.newFolder("bundle").toPath());
        ModelBundle b = ModelBundle.open(dir);
        assertEquals("gpt-oss-20b", b.manifest.modelName);
        assertEquals("pixel-9-pro", b.plan.deviceName);
        assertEquals(dir.resolve(TestBundles.MODEL), b.modelPath());
        b.verify(true, null);
        // the plan's total (7.85 GB) is above the manifest's min_free_ram_bytes (7.0 GB)
        assertFalse(b.memoryDecision(7_800_000_000L).allowed);
        assertTrue(b.memoryDecision(7_850_000_000L).allowed);
    }

    @Test
    public void readsTheToolsSectionTheManifestNames() throws Exception {
        Path dir = TestBundles.write(tmp.newFolder("bundle").toPath());
        assertNull(ModelBundle.open(dir).toolsSection());
        Files.writeString(dir.resolve("tools_developer.txt"), HarmonyPromptTest.TOOLS_SECTION);
        String manifest = Files.readString(dir.resolve("manifest.json"));
        String listed = manifest.replace("\"files\": [", "\"files\": [{\"path\": \"tools_developer.txt\", \"size\": "
                + HarmonyPromptTest.TOOLS_SECTION.length() + ", \"sha256\": \""
                + TestBundles.sha256(TestBundles.bytes(HarmonyPromptTest.TOOLS_SECTION)) + "\"}, ");
        String tools = ", \"tools\": {\"file\": \"tools.json\", \"developer_section\": \"tools_developer.txt\"}}";
        Files.writeString(dir.resolve("manifest.json"), listed.replaceFirst("}\\s*$", tools));
        ModelBundle b = ModelBundle.open(dir);
        b.verify(true, null);
        assertEquals(HarmonyPromptTest.TOOLS_SECTION, b.toolsSection());
        Files.writeString(dir.resolve("manifest.json"), manifest.replaceFirst("}\\s*$", tools));
        assertEquals("manifest.json: 'tools.developer_section' names 'tools_developer.txt', which is not listed in "
                + "'files'", assertThrows(BundleException.class, () -> ModelBundle.open(dir)).getMessage());
    }

    @Test
    public void explainsWhatIsMissing() throws Exception {
        Path dir = tmp.newFolder("bundle").toPath();
        assertEquals("no manifest.json in " + dir + ": is this an edgeoss bundle folder?",
                assertThrows(BundleException.class, () -> ModelBundle.open(dir)).getMessage());
        Path nowhere = dir.resolve("nowhere");
        assertTrue(assertThrows(BundleException.class, () -> ModelBundle.open(nowhere)).getMessage()
                .startsWith("no bundle folder at " + nowhere + ": push the folder"));
        TestBundles.write(dir);
        Files.delete(dir.resolve("plan.json"));
        assertEquals("missing plan file 'plan.json' named by manifest.json",
                assertThrows(BundleException.class, () -> ModelBundle.open(dir)).getMessage());
    }
}
