package org.edgeoss.demo

import org.edgeoss.core.BundleManifest

/**
 * llama.cpp through JNI (app/src/main/cpp/edgeoss_jni.cpp). One model at a time; call everything from
 * one background thread.
 */
class LlamaEngine(nativeLibDir: String) : AutoCloseable {
    /** Receives each sampled token's bytes (special tokens rendered); returns false to stop. */
    fun interface TokenSink {
        fun onToken(piece: ByteArray): Boolean
    }

    private var handle = 0L

    init {
        nativeInit(nativeLibDir)
    }

    val isLoaded: Boolean get() = handle != 0L

    /** Loads the GGUF at [modelPath] (memory-mapped when the bundle says so), replacing any loaded model. */
    fun load(modelPath: String, settings: BundleManifest.EngineSettings, threads: Int) {
        close()
        handle = nativeLoad(modelPath, settings.nCtx, threads, settings.nGpuLayers, settings.useMmap,
            settings.useMlock, settings.nBatch)
    }

    /**
     * Runs one harmony [prompt] (ending in `<|start|>assistant`) from an empty context until the sink
     * returns false, `<|return|>` or `<|call|>` is sampled, or the context is full. Returns the number
     * of tokens generated.
     */
    fun generate(prompt: String, temperature: Float, sink: TokenSink): Int {
        check(isLoaded) { "no model loaded" }
        return nativeGenerate(handle, prompt.toByteArray(Charsets.UTF_8), temperature, sink)
    }

    override fun close() {
        if (handle != 0L) {
            nativeFree(handle)
            handle = 0L
        }
    }

    private external fun nativeInit(nativeLibDir: String)

    private external fun nativeLoad(
        modelPath: String, nCtx: Int, nThreads: Int, nGpuLayers: Int,
        useMmap: Boolean, useMlock: Boolean, nBatch: Int,
    ): Long

    private external fun nativeGenerate(handle: Long, prompt: ByteArray, temperature: Float, sink: TokenSink): Int

    private external fun nativeFree(handle: Long)

    companion object {
        init {
            System.loadLibrary("edgeoss_jni")
        }
    }
}
