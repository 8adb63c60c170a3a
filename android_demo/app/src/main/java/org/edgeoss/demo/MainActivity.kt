package org.edgeoss.demo

import android.app.Activity
import android.app.ActivityManager
import android.os.Bundle
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.RadioGroup
import android.widget.TextView
import java.io.File
import java.io.IOException
import java.nio.file.Paths
import java.time.LocalDate
import java.util.Locale
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicBoolean
import org.edgeoss.core.BundleException
import org.edgeoss.core.HarmonyPrompt
import org.edgeoss.core.HarmonyStream
import org.edgeoss.core.MemoryDecision
import org.edgeoss.core.ModelBundle
import org.edgeoss.core.ReasoningEffort
import org.edgeoss.core.StoreStats
import org.edgeoss.core.TokenTimer
import org.edgeoss.core.Utf8Stream

/**
 * Loads an edgeoss Android bundle where adb pushed it (checked against its manifest and the free RAM),
 * then runs one prompt at a time with llama.cpp, showing the analysis and final channels as they stream.
 */
class MainActivity : Activity() {
    // All engine and bundle work runs on this one thread; views are touched on the UI thread only.
    private val worker = Executors.newSingleThreadExecutor()
    private val stopRequested = AtomicBoolean(false)
    private var engine: LlamaEngine? = null
    private var generating = false

    private lateinit var pathField: EditText
    private lateinit var checkHashes: CheckBox
    private lateinit var loadButton: Button
    private lateinit var status: TextView
    private lateinit var effort: RadioGroup
    private lateinit var instructions: EditText
    private lateinit var prompt: EditText
    private lateinit var runButton: Button
    private lateinit var speed: TextView
    private lateinit var analysis: TextView
    private lateinit var finalText: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        pathField = findViewById(R.id.bundle_path)
        checkHashes = findViewById(R.id.check_hashes)
        loadButton = findViewById(R.id.load)
        status = findViewById(R.id.status)
        effort = findViewById(R.id.effort)
        instructions = findViewById(R.id.instructions)
        prompt = findViewById(R.id.prompt)
        runButton = findViewById(R.id.run)
        speed = findViewById(R.id.speed)
        analysis = findViewById(R.id.analysis)
        finalText = findViewById(R.id.final_text)

        pathField.setText(defaultBundlePath())
        loadButton.setOnClickListener { loadBundle() }
        runButton.setOnClickListener { if (generating) stopRequested.set(true) else runPrompt() }
    }

    override fun onDestroy() {
        stopRequested.set(true)
        worker.execute { engine?.close() }
        worker.shutdown()
        super.onDestroy()
    }

    /** This app's external files folder, or /data/local/tmp, whichever already holds a bundle. */
    private fun defaultBundlePath(): String {
        val candidates = listOfNotNull(getExternalFilesDir(null), File("/data/local/tmp"))
            .map { File(it, BUNDLE_DIR) }
        return (candidates.firstOrNull { File(it, "manifest.json").isFile } ?: candidates.first()).path
    }

    private fun loadBundle() {
        val path = pathField.text.toString().trim()
        val hashes = checkHashes.isChecked
        loadButton.isEnabled = false
        runButton.isEnabled = false
        status.text = getString(R.string.checking)
        worker.execute {
            val report = try {
                engine?.close() // its pages would count against the free-RAM check
                val bundle = ModelBundle.open(Paths.get(path))
                var shownPercent = -1L
                bundle.verify(hashes) { file, done, total ->
                    val percent = done * 100 / total
                    if (percent != shownPercent) {
                        shownPercent = percent
                        ui { status.text = "checking SHA-256 of $file: $percent %" }
                    }
                }
                val memory = bundle.memoryDecision(availableRam())
                if (memory.allowed) load(bundle, hashes, memory) else memory.message
            } catch (e: BundleException) {
                e.message
            } catch (e: IOException) {
                "cannot read the bundle: ${e.message}"
            } catch (e: IllegalStateException) {
                e.message
            }
            val loaded = engine?.isLoaded == true
            ui {
                status.text = report
                loadButton.isEnabled = true
                runButton.isEnabled = loaded
            }
        }
    }

    /** Loads the model (worker thread) and describes what was loaded. */
    private fun load(bundle: ModelBundle, hashes: Boolean, memory: MemoryDecision): String {
        val m = bundle.manifest
        val threads = minOf(m.settings.nThreads, Runtime.getRuntime().availableProcessors())
        val llama = engine ?: LlamaEngine(applicationInfo.nativeLibraryDir).also { engine = it }
        llama.load(bundle.modelPath().toString(), m.settings, threads, m.expertStore)
        val lines = mutableListOf(
            String.format(Locale.ROOT, "%s: %.1fB parameters, %.1fB active, context %d, %d threads",
                m.modelName, m.paramsTotal / 1e9, m.paramsActive / 1e9, m.settings.nCtx, threads),
            if (hashes) "files: sizes and SHA-256 match the manifest" else "files: sizes match (SHA-256 not checked)",
            memory.message,
        )
        m.expertStore?.let { store ->
            lines += String.format(Locale.ROOT, "experts stream from flash: %.1f GB held (%d pinned, %d cache slots)",
                store.budgetBytes / 1e9, store.pinnedExperts(), store.cacheSlots)
        }
        bundle.plan?.let { plan ->
            lines += "plan for ${plan.deviceName}, context ${plan.context}: " +
                "predicted ${fmt("%.1f tok/s", plan.decodeTokensPerSecond)}, " +
                "first token in ${fmt("%.1f s", plan.ttftSeconds)}"
            if (!plan.fits) lines += "warning: the plan says this bundle does not fit ${plan.deviceName}"
        }
        return lines.joinToString("\n")
    }

    private fun availableRam(): Long {
        val info = ActivityManager.MemoryInfo()
        (getSystemService(ACTIVITY_SERVICE) as ActivityManager).getMemoryInfo(info)
        return info.availMem
    }

    private fun runPrompt() {
        val message = prompt.text.toString().trim()
        if (message.isEmpty()) return
        val level = when (effort.checkedRadioButtonId) {
            R.id.effort_low -> ReasoningEffort.LOW
            R.id.effort_high -> ReasoningEffort.HIGH
            else -> ReasoningEffort.MEDIUM
        }
        val text = HarmonyPrompt.render(level, LocalDate.now(), instructions.text.toString().trim(), message)
        stopRequested.set(false)
        generating = true
        runButton.text = getString(R.string.stop)
        loadButton.isEnabled = false
        analysis.text = ""
        finalText.text = ""
        speed.text = ""
        worker.execute {
            val stream = HarmonyStream()
            val utf8 = Utf8Stream()
            val timer = TokenTimer()
            val llama = engine!!
            val storeBefore = llama.storeStats()
            timer.start(System.nanoTime())
            val error = try {
                llama.generate(text, TEMPERATURE) { _, piece ->
                    stream.feed(utf8.decode(piece))
                    timer.onToken(System.nanoTime())
                    show(stream, timer, storeBefore?.let { before -> llama.storeStats()?.since(before) })
                    !stream.isComplete && !stopRequested.get()
                }
                null
            } catch (e: RuntimeException) {
                e.message
            }
            stream.feed(utf8.finish())
            stream.finish()
            show(stream, timer, storeBefore?.let { before -> llama.storeStats()?.since(before) })
            ui {
                generating = false
                runButton.text = getString(R.string.run)
                loadButton.isEnabled = true
                if (error != null) status.text = error
            }
        }
    }

    /** Posts the channels, speed and (when experts stream) the store's hit rate and reads so far (worker thread). */
    private fun show(stream: HarmonyStream, timer: TokenTimer, store: StoreStats?) {
        val a = stream.analysis()
        val f = stream.finalText()
        val s = listOfNotNull(
            stream.currentChannel() ?: "–",
            "${timer.tokens()} tokens",
            "first after ${fmt("%.2f s", timer.ttftSeconds())}",
            fmt("%.1f tok/s", timer.decodeTokensPerSecond()),
            store?.summary(timer.tokens().toLong()),
        ).joinToString(" · ")
        ui {
            analysis.text = a
            finalText.text = f
            speed.text = s
        }
    }

    private fun ui(block: () -> Unit) = runOnUiThread(block)

    /** [value] in [pattern], or "–" when unknown (NaN). */
    private fun fmt(pattern: String, value: Double) =
        if (value.isNaN()) "–" else String.format(Locale.ROOT, pattern, value)

    private companion object {
        const val BUNDLE_DIR = "edgeoss-bundle"
        // OpenAI's recommended sampling for gpt-oss: temperature 1.0 (top_p 1.0, i.e. no truncation).
        const val TEMPERATURE = 1.0f
    }
}
