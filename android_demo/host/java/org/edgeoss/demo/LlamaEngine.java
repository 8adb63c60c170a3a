package org.edgeoss.demo;

/**
 * The host twin of the app's LlamaEngine.kt: the same native methods of the same class name, so that the app's
 * JNI library (app/src/main/cpp) built for this machine runs in a plain JVM. No logic lives here.
 */
public final class LlamaEngine implements AutoCloseable {
    /** Receives each sampled token's id and bytes; returns false to stop. */
    public interface TokenSink {
        boolean onToken(int id, byte[] piece);
    }

    private long handle;

    public LlamaEngine(String nativeLibDir) {
        System.loadLibrary("edgeoss_jni");
        nativeInit(nativeLibDir);
    }

    public void load(String modelPath, int nCtx, int nThreads, int nBatch, boolean flashAttn, long expertBudget,
                     int[] pinnedPairs, int nUbatch) {
        close();
        handle = nativeLoad(modelPath, nCtx, nThreads, 0, true, false, nBatch, flashAttn, expertBudget, pinnedPairs,
                nUbatch);
    }

    public int generate(byte[] prompt, float temperature, boolean reuse, TokenSink sink) {
        return nativeGenerate(handle, prompt, temperature, reuse, sink);
    }

    public int generateIds(int[] prompt, float temperature, boolean reuse, TokenSink sink) {
        return nativeGenerateIds(handle, prompt, temperature, reuse, sink);
    }

    public int reusedTokens() {
        return nativeReusedTokens(handle);
    }

    public long[] storeStats() {
        return nativeStoreStats(handle);
    }

    @Override
    public void close() {
        if (handle != 0) {
            nativeFree(handle);
            handle = 0;
        }
    }

    private native void nativeInit(String nativeLibDir);

    private native long nativeLoad(String modelPath, int nCtx, int nThreads, int nGpuLayers, boolean useMmap,
                                   boolean useMlock, int nBatch, boolean flashAttn, long expertBudget,
                                   int[] pinnedPairs, int nUbatch);

    private native int nativeGenerate(long handle, byte[] prompt, float temperature, boolean reuse, TokenSink sink);

    private native int nativeGenerateIds(long handle, int[] prompt, float temperature, boolean reuse, TokenSink sink);

    private native int nativeReusedTokens(long handle);

    private native long[] nativeStoreStats(long handle);

    private native void nativeFree(long handle);
}
