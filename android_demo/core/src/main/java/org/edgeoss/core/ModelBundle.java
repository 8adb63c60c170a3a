package org.edgeoss.core;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;

/** An edgeoss Android bundle folder, read where the user pushed it (nothing is copied). */
public final class ModelBundle {
    public final Path root;
    public final BundleManifest manifest;
    /** The bundle's plan.json, or null when the manifest names no plan. */
    public final BundlePlan plan;

    private ModelBundle(Path root, BundleManifest manifest, BundlePlan plan) {
        this.root = root;
        this.manifest = manifest;
        this.plan = plan;
    }

    /** Reads manifest.json and the plan it names. */
    public static ModelBundle open(Path root) throws BundleException, IOException {
        if (!Files.isDirectory(root)) {
            throw new BundleException("no bundle folder at " + root + ": push the folder written by "
                    + "`edgeoss package android` there with adb push");
        }
        Path manifestPath = BundlePaths.resolve(root, BundleManifest.FILE_NAME);
        if (!Files.isRegularFile(manifestPath, LinkOption.NOFOLLOW_LINKS)) {
            throw new BundleException("no manifest.json in " + root + ": is this an edgeoss bundle folder?");
        }
        BundleManifest manifest = BundleManifest.parse(read(manifestPath));
        BundlePlan plan = null;
        if (manifest.planFile != null) {
            Path planPath = BundlePaths.resolve(root, manifest.planFile);
            if (!Files.isRegularFile(planPath, LinkOption.NOFOLLOW_LINKS)) {
                throw new BundleException("missing plan file '" + manifest.planFile + "' named by manifest.json");
            }
            plan = BundlePlan.parse(read(planPath), manifest.planFile);
        }
        return new ModelBundle(root, manifest, plan);
    }

    /** See {@link BundleVerifier#verify}. */
    public void verify(boolean checkHashes, BundleVerifier.Progress progress) throws BundleException, IOException {
        BundleVerifier.verify(root, manifest, checkHashes, progress);
    }

    public MemoryDecision memoryDecision(long availableBytes) {
        return MemoryDecision.decide(availableBytes, manifest.minFreeRamBytes, plan == null ? 0 : plan.totalBytes);
    }

    /** The GGUF file llama.cpp loads (the first shard when the model is split). */
    public Path modelPath() throws BundleException {
        return BundlePaths.resolve(root, manifest.modelFile);
    }

    /** The developer message's tools section the bundle carries (for {@link HarmonyPrompt}), or null for none. */
    public String toolsSection() throws BundleException, IOException {
        return manifest.toolsSectionFile == null ? null : read(BundlePaths.resolve(root, manifest.toolsSectionFile));
    }

    private static String read(Path path) throws IOException {
        return new String(Files.readAllBytes(path), StandardCharsets.UTF_8);
    }
}
