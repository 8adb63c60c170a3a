package org.edgeoss.core;

/**
 * plan.json, edgeoss's memory plan for one device and context. Unknown keys are ignored; format,
 * version, fits and memory.total_bytes are required.
 */
public final class BundlePlan {
    public static final int VERSION = 1;

    public final boolean fits;
    public final long totalBytes;
    /** The device the plan was made for, or "" when not named. */
    public final String deviceName;
    /** Planned context length, or 0 when not given. */
    public final int context;
    /** Predicted decode speed in tokens per second, or NaN when not given. */
    public final double decodeTokensPerSecond;
    /** Predicted time to first token in seconds, or NaN when not given. */
    public final double ttftSeconds;

    private BundlePlan(boolean fits, long totalBytes, String deviceName, int context,
                       double decodeTokensPerSecond, double ttftSeconds) {
        this.fits = fits;
        this.totalBytes = totalBytes;
        this.deviceName = deviceName;
        this.context = context;
        this.decodeTokensPerSecond = decodeTokensPerSecond;
        this.ttftSeconds = ttftSeconds;
    }

    /** Parses plan.json text; {@code source} names the file in error messages. */
    public static BundlePlan parse(String json, String source) throws BundleException {
        Json.Obj root = Json.parseObject(json, source);
        String format = root.str("format");
        if (!format.equals("edgeoss-plan")) {
            throw new BundleException(source + ": format is '" + format + "', not 'edgeoss-plan'");
        }
        long version = root.lng("version");
        if (version != VERSION) {
            throw new BundleException(source + ": plan version " + version + " is not supported (this app reads "
                    + VERSION + ")");
        }
        boolean fits = root.bool("fits");
        long total = root.obj("memory").lng("total_bytes");
        if (total <= 0) throw root.fail("memory.total_bytes", "must be positive");
        Json.Obj prediction = root.objOrEmpty("prediction");
        return new BundlePlan(fits, total, root.objOrEmpty("device").str("name", ""), root.integer("context", 0),
                prediction.num("decode_tok_s", Double.NaN), prediction.num("ttft_s", Double.NaN));
    }
}
