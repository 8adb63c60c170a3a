package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.Before;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class BundleVerifierTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    private Path dir;

    @Before
    public void writeBundle() throws Exception {
        dir = TestBundles.write(tmp.newFolder("bundle").toPath());
    }

    private BundleManifest manifest() throws Exception {
        return BundleManifest.parse(new String(Files.readAllBytes(dir.resolve("manifest.json")), "UTF-8"));
    }

    private String failure(BundleManifest m, boolean hashes) {
        return assertThrows(BundleException.class, () -> BundleVerifier.verify(dir, m, hashes, null)).getMessage();
    }

    private String failure() throws Exception {
        return failure(manifest(), true);
    }

    /** A manifest that lists one more file under {@code path} (which need not exist). */
    private BundleManifest manifestWith(String path) throws Exception {
        Map<String, byte[]> files = TestBundles.files();
        files.put(path, TestBundles.bytes("outside"));
        return BundleManifest.parse(TestBundles.manifest(files));
    }

    @Test
    public void intactBundlePassesAndReportsProgressToTheEnd() throws Exception {
        AtomicLong last = new AtomicLong();
        AtomicLong total = new AtomicLong();
        BundleVerifier.verify(dir, manifest(), true, (path, done, all) -> {
            last.set(done);
            total.set(all);
        });
        long expected = 0;
        for (byte[] b : TestBundles.files().values()) expected += b.length;
        assertEquals(expected, total.get());
        assertEquals(expected, last.get());
    }

    @Test
    public void changedByteFailsTheChecksum() throws Exception {
        Path model = dir.resolve("model-00002-of-00002.gguf");
        byte[] b = Files.readAllBytes(model);
        b[3] ^= 1;
        Files.write(model, b);
        String msg = failure();
        assertTrue(msg, msg.startsWith("checksum mismatch for 'model-00002-of-00002.gguf': expected sha256 "));
        BundleVerifier.verify(dir, manifest(), false, null); // sizes only: the flip goes unseen
    }

    @Test
    public void changedSizeFailsBeforeHashing() throws Exception {
        Files.write(dir.resolve("README.md"), TestBundles.bytes("# bundle, edited\n"));
        assertEquals("size mismatch for 'README.md': expected 9 bytes, found 17 (incomplete or wrong file: "
                + "push it again)", failure(manifest(), false));
    }

    @Test
    public void missingFileIsNamed() throws Exception {
        Files.delete(dir.resolve("o200k_base.tiktoken"));
        assertEquals("missing file 'o200k_base.tiktoken' (14 bytes expected): push the whole bundle folder again",
                failure());
    }

    @Test
    public void extraFileIsNamed() throws Exception {
        Files.createDirectories(dir.resolve("sub"));
        Files.write(dir.resolve("sub/notes.txt"), TestBundles.bytes("hi"));
        assertEquals("unexpected file 'sub/notes.txt' is not listed in manifest.json: "
                + "remove it or push a clean bundle folder", failure());
    }

    @Test
    public void bundleFolderReachedThroughALinkIsStillChecked() throws Exception {
        Path link = Files.createSymbolicLink(dir.getParent().resolve("bundle-link"), dir);
        BundleVerifier.verify(link, manifest(), true, null);
        Files.write(dir.resolve("extra.bin"), TestBundles.bytes("x"));
        String msg = assertThrows(BundleException.class, () -> BundleVerifier.verify(link, manifest(), true, null))
                .getMessage();
        assertTrue(msg, msg.startsWith("unexpected file 'extra.bin'"));
    }

    @Test
    public void pathsThatEscapeTheBundleAreRefused() throws Exception {
        Files.write(dir.getParent().resolve("outside.bin"), TestBundles.bytes("outside"));
        for (String bad : new String[] {"../outside.bin", "/etc/passwd", "sub/../../outside.bin", "a//b", "./x",
                "C:/x", "a\\b"}) {
            String msg = failure(manifestWith(bad), true);
            assertEquals("unsafe path '" + bad + "' in manifest.json: "
                    + "bundle paths must be relative and stay inside the bundle folder", msg);
        }
    }

    @Test
    public void symlinksAreRefused() throws Exception {
        Path outside = Files.write(dir.getParent().resolve("outside.bin"), TestBundles.bytes("outside"));
        Files.createSymbolicLink(dir.resolve("link.bin"), outside);
        assertEquals("'link.bin' goes through a symlink: bundles must hold plain files",
                failure(manifestWith("link.bin"), true));
        assertEquals("'link.bin' is a symlink: bundles must hold plain files", failure());

        Files.delete(dir.resolve("link.bin"));
        Files.createSymbolicLink(dir.resolve("linkdir"), dir.getParent());
        assertEquals("'linkdir/outside.bin' goes through a symlink: bundles must hold plain files",
                failure(manifestWith("linkdir/outside.bin"), true));
    }
}
