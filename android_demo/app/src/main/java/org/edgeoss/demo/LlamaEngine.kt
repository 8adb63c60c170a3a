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
     * Runs one harmony [prompt] (ending in `<|start|>assistant`) from an empty context until the sink
     * returns false, `<|return|>` or `<|call|>` is sampled, or the context is full. Returns the number
     * of tokens generated. A temperature of 0 samples greedily.
     */
    fun generate(prompt: String, temperature: Float, sink: TokenSink): Int {
        check(isLoaded) { "no model loaded" }
        return nativeGenerate(handle, prompt.toByteArray(Charsets.UTF_8), temperature, sink)
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

    private external fun nativeGenerate(handle: Long, prompt: ByteArray, temperature: Float, sink: TokenSink): Int

    private external fun nativeStoreStats(handle: Long): LongArray

    private external fun nativeFree(handle: Long)

    companion object {
        init {
            System.loadLibrary("edgeoss_jni")
        }
    }
}
