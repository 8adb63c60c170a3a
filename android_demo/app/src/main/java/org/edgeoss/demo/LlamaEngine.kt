package org.edgeoss.demo

import org.edgeoss.core.BundleManifest
import org.edgeoss.core.StoreStats

/**
 * llama.cpp through JNI (app/src/main/cpp/edgeoss_jni.cpp). One model at a time; call everything from
 * one background thread. The host twin of this class (android_demo/host/java) declares the same natives,
 * so that the JVM test runs the same bridge on the build machine.
 */
class LlamaEngine(nativeLibDir: String) : AutoCloseable {
    /** Receives each sampled token's id and bytes (special tokens rendered); returns false to stop. */
    fun interface TokenSink {
        fun onToken(id: Int, piece: ByteArray): Boolean
    }

    private var handle = 0L

    init {
        nativeInit(nativeLibDir)
    }

    val isLoaded: Boolean get() = handle != 0L

    /**
     * Loads the GGUF at [modelPath] (memory-mapped when the bundle says so), replacing any loaded model. With
     * [store] (the bundle's engine.expert_store) the experts stream from the file within its budget.
     */
    fun load(modelPath: String, settings: BundleManifest.EngineSettings, threads: Int,
             store: BundleManifest.ExpertStoreSettings?) {
        close()
        handle = nativeLoad(modelPath, settings.nCtx, threads, settings.nGpuLayers, settings.useMmap,
            settings.useMlock, settings.nBatch, settings.flashAttn, store?.budgetBytes ?: 0L, store?.pinned,
            store?.nUbatch ?: 0)
    }

    /**
     * Runs one harmony [prompt] (ending in `<|start|>assistant`) until the sink returns false, `<|return|>` or
     * `<|call|>` is sampled, or the context is full. Returns the number of tokens generated. A temperature of 0
     * samples greedily. With [reuse] the KV cache keeps its common prefix with [prompt] (a conversation's next
     * turn, a tool's result after the call), so only the new tokens are computed; [reusedTokens] says how many
     * were kept. Without it the context starts empty (a cold run).
     */
    fun generate(prompt: String, temperature: Float, reuse: Boolean, sink: TokenSink): Int {
        check(isLoaded) { "no model loaded" }
        return nativeGenerate(handle, prompt.toByteArray(Charsets.UTF_8), temperature, reuse, sink)
    }

    /** [generate] from token ids (the benchmark protocol's random prompt, as `edgeoss profile` makes it). */
    fun generateIds(prompt: IntArray, temperature: Float, reuse: Boolean, sink: TokenSink): Int {
        check(isLoaded) { "no model loaded" }
        return nativeGenerateIds(handle, prompt, temperature, reuse, sink)
    }

    /** How many prompt tokens the last [generate] took from the KV cache instead of computing them. */
    fun reusedTokens(): Int {
        check(isLoaded) { "no model loaded" }
        return nativeReusedTokens(handle)
    }

    /** The expert store's counters so far, or null when the model runs without one. */
    fun storeStats(): StoreStats? {
        check(isLoaded) { "no model loaded" }
        return StoreStats.of(nativeStoreStats(handle))
    }

    override fun close() {
        if (handle != 0L) {
            nativeFree(handle)
            handle = 0L
        }
    }

    private external fun nativeInit(nativeLibDir: String)

    private external fun nativeLoad(
        modelPath: String, nCtx: Int, nThreads: Int, nGpuLayers: Int, useMmap: Boolean, useMlock: Boolean,
        nBatch: Int, flashAttn: Boolean, expertBudget: Long, pinnedPairs: IntArray?, nUbatch: Int,
    ): Long

    private external fun nativeGenerate(handle: Long, prompt: ByteArray, temperature: Float, reuse: Boolean,
                                        sink: TokenSink): Int

    private external fun nativeGenerateIds(handle: Long, prompt: IntArray, temperature: Float, reuse: Boolean,
                                           sink: TokenSink): Int

    private external fun nativeReusedTokens(handle: Long): Int

    private external fun nativeStoreStats(handle: Long): LongArray

    private external fun nativeFree(handle: Long)

    companion object {
        init {
            System.loadLibrary("edgeoss_jni")
        }
    }
}
