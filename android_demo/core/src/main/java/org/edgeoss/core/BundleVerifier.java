package org.edgeoss.core;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * Checks a bundle folder against its manifest and stops at the first problem: every path is safe, every
 * listed file exists with its size, nothing unlisted is there, then (optionally) every SHA-256.
 * The cheap checks all run before any file is hashed, so a wrong push fails in milliseconds.
 */
public final class BundleVerifier {
    private static final int BUFFER_BYTES = 1 << 20;

    /** Reports hashing progress over all files: {@code doneBytes} of {@code totalBytes}. */
    public interface Progress {
        void onProgress(String path, long doneBytes, long totalBytes);
    }

    private BundleVerifier() {
    }

    public static void verify(Path bundleDir, BundleManifest manifest, boolean checkHashes, Progress progress)
            throws BundleException, IOException {
        Path root = bundleDir.toRealPath(); // a linked bundle folder is fine; links inside it are not
        Set<String> listed = new HashSet<>();
        long total = 0;
        for (BundleManifest.FileEntry entry : manifest.files) {
            Path file = BundlePaths.resolve(root, entry.path);
            if (!Files.exists(file, LinkOption.NOFOLLOW_LINKS)) {
                throw new BundleException("missing file '" + entry.path + "' (" + entry.size
                        + " bytes expected): push the whole bundle folder again");
            }
            if (!Files.isRegularFile(file, LinkOption.NOFOLLOW_LINKS)) {
                throw new BundleException("'" + entry.path + "' is not a regular file");
            }
            long size = Files.size(file);
            if (size != entry.size) {
                throw new BundleException("size mismatch for '" + entry.path + "': expected " + entry.size
                        + " bytes, found " + size + " (incomplete or wrong file: push it again)");
            }
            listed.add(entry.path);
            total += entry.size;
        }
        checkNothingElse(root, listed);
        if (!checkHashes) return;

        long done = 0;
        for (BundleManifest.FileEntry entry : manifest.files) {
            String actual = sha256(root.resolve(entry.path), entry.path, done, total, progress);
            if (!actual.equals(entry.sha256)) {
                throw new BundleException("checksum mismatch for '" + entry.path + "': expected sha256 "
                        + entry.sha256 + ", got " + actual + " (corrupt or from another bundle: push it again)");
            }
            done += entry.size;
        }
    }

    private static void checkNothingElse(Path root, Set<String> listed) throws BundleException, IOException {
        List<Path> all;
        try (Stream<Path> walk = Files.walk(root)) {
            all = walk.sorted().collect(Collectors.toList());
        }
        for (Path p : all) {
            if (p.equals(root)) continue;
            String rel = root.relativize(p).toString().replace(p.getFileSystem().getSeparator(), "/");
            if (Files.isSymbolicLink(p)) {
                throw new BundleException("'" + rel + "' is a symlink: bundles must hold plain files");
            }
            if (Files.isDirectory(p, LinkOption.NOFOLLOW_LINKS)) continue;
            if (!listed.contains(rel) && !rel.equals(BundleManifest.FILE_NAME)) {
                throw new BundleException("unexpected file '" + rel + "' is not listed in manifest.json: "
                        + "remove it or push a clean bundle folder");
            }
        }
    }

    private static String sha256(Path file, String rel, long doneBefore, long total, Progress progress)
            throws IOException {
        MessageDigest digest;
        try {
            digest = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("every Java runtime has SHA-256", e);
        }
        byte[] buffer = new byte[BUFFER_BYTES];
        long done = doneBefore;
        try (InputStream in = Files.newInputStream(file, LinkOption.NOFOLLOW_LINKS)) {
            int n;
            while ((n = in.read(buffer)) > 0) {
                digest.update(buffer, 0, n);
                done += n;
                if (progress != null) progress.onProgress(rel, done, total);
            }
        }
        StringBuilder hex = new StringBuilder();
        for (byte b : digest.digest()) hex.append(String.format("%02x", b));
        return hex.toString();
    }
}
