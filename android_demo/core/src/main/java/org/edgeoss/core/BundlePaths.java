package org.edgeoss.core;

import java.nio.file.Files;
import java.nio.file.Path;

/** Turns a manifest's relative path into a file inside the bundle, refusing any path that could leave it. */
public final class BundlePaths {
    private BundlePaths() {
    }

    /**
     * Resolves {@code relative} ('/'-separated, as in manifest.json) under {@code root}. Absolute paths,
     * backslashes, empty, "." and ".." segments, and symlinks anywhere below {@code root} are refused.
     * {@code root} itself may be reached through links (on Android /sdcard is one).
     */
    public static Path resolve(Path root, String relative) throws BundleException {
        if (relative.isEmpty() || relative.startsWith("/") || relative.contains("\\")
                || (relative.length() > 1 && relative.charAt(1) == ':')) {
            throw escapes(relative);
        }
        Path path = root;
        for (String part : relative.split("/", -1)) {
            if (part.isEmpty() || part.equals(".") || part.equals("..")) throw escapes(relative);
            path = path.resolve(part);
            if (Files.isSymbolicLink(path)) {
                throw new BundleException("'" + relative + "' goes through a symlink: bundles must hold plain files");
            }
        }
        return path;
    }

    private static BundleException escapes(String relative) {
        return new BundleException("unsafe path '" + relative + "' in manifest.json: "
                + "bundle paths must be relative and stay inside the bundle folder");
    }
}
