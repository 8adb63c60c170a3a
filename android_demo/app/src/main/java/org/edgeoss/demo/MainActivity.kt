package org.edgeoss.demo

import android.app.Activity
import android.app.ActivityManager
import android.os.Build
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
import java.time.ZonedDateTime
import java.util.Locale
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicBoolean
import org.edgeoss.core.BundleException
import org.edgeoss.core.DeviceBenchmark
import org.edgeoss.core.HarmonyPrompt
import org.edgeoss.core.MemoryDecision
import org.edgeoss.core.ModelBundle
import org.edgeoss.core.ProcMemory
import org.edgeoss.core.ReasoningEffort
import org.edgeoss.core.StoreStats
import org.edgeoss.core.TokenTimer
import org.edgeoss.core.ToolLoop
import org.edgeoss.core.ToolTurn
import org.edgeoss.core.Utf8Stream

/**
 * Loads an edgeoss Android bundle where adb pushed it (checked against its manifest and the free RAM),
 * then runs one prompt at a time with llama.cpp, showing the analysis and final channels as they stream.
 * When the bundle declares tools (`edgeoss package android --tools`), they go into the prompt, the model's calls
 * are shown, and the app answers them: the built-in get_time tool (any other name gets an error result), then
 * the model goes on from the result with the KV cache kept, for at most MAX_TOOL_ROUNDS calls.
 */
class MainActivity : Activity() {
    // All engine and bundle work runs on this one thread; views are touched on the UI thread only.
    private val worker = Executors.newSingleThreadExecutor()
    private val stopRequested = AtomicBoolean(false)
    private var engine: LlamaEngine? = null
    private var toolsSection: String? = null // the loaded bundle's tools, rendered by openai-harmony
    private var loadedBundle: ModelBundle? = null
    private var loadSeconds = 0.0
    private var rssBeforeLoad = 0L
    private var rssAfterLoad = 0L
    private var generating = false

    private lateinit var pathField: EditText
    private lateinit var checkHashes: CheckBox
    private lateinit var loadButton: Button
    private lateinit var status: TextView
    private lateinit var effort: RadioGroup
    private lateinit var instructions: EditText
    private lateinit var prompt: EditText
    private lateinit var runButton: Button
    private lateinit var profileButton: Button
    private lateinit var speed: TextView
    private lateinit var analysis: TextView
    private lateinit var finalText: TextView
    private lateinit var toolCalls: TextView

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
        profileButton = findViewById(R.id.profile)
        speed = findViewById(R.id.speed)
        analysis = findViewById(R.id.analysis)
        finalText = findViewById(R.id.final_text)
        toolCalls = findViewById(R.id.tool_calls)

        pathField.setText(defaultBundlePath())
        loadButton.setOnClickListener { loadBundle() }
        runButton.setOnClickListener { if (generating) stopRequested.set(true) else runPrompt() }
        profileButton.setOnClickListener { runProfile() }
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
                profileButton.isEnabled = loaded
            }
        }
    }

    /** Loads the model (worker thread) and describes what was loaded. */
    private fun load(bundle: ModelBundle, hashes: Boolean, memory: MemoryDecision): String {
        val m = bundle.manifest
        val threads = minOf(m.settings.nThreads, Runtime.getRuntime().availableProcessors())
        val llama = engine ?: LlamaEngine(applicationInfo.nativeLibraryDir).also { engine = it }
        rssBeforeLoad = ProcMemory.read().rssBytes
        val start = System.nanoTime()
        llama.load(bundle.modelPath().toString(), m.settings, threads, m.expertStore)
        loadSeconds = (System.nanoTime() - start) / 1e9
        rssAfterLoad = ProcMemory.read().rssBytes
        loadedBundle = bundle
        toolsSection = bundle.toolsSection()
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
        lines += if (toolsSection == null) "tools: none declared" else "tools: declared; get_time answers"
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
        val tools = toolsSection
        val text = HarmonyPrompt.render(level, LocalDate.now(), instructions.text.toString().trim(), tools, message)
        stopRequested.set(false)
        generating = true
        runButton.text = getString(R.string.stop)
        loadButton.isEnabled = false
        profileButton.isEnabled = false
        analysis.text = ""
        finalText.text = ""
        speed.text = ""
        toolCalls.text = if (tools == null) getString(R.string.no_tools) else ""
        worker.execute {
            val loop = ToolLoop(text, mapOf("get_time" to ToolLoop.Handler { ToolTurn.getTime(it, ZonedDateTime.now()) }),
                MAX_TOOL_ROUNDS)
            val llama = engine!!
            val storeBefore = llama.storeStats()
            var error: String? = null
            var outcome: ToolLoop.Outcome
            do {
                // Each round continues the conversation: the KV cache keeps the prompt and the earlier rounds.
                val utf8 = Utf8Stream()
                val timer = TokenTimer()
                timer.start(System.nanoTime())
                try {
                    llama.generate(loop.prompt(), TEMPERATURE, true) { _, piece ->
                        loop.feed(utf8.decode(piece))
                        timer.onToken(System.nanoTime())
                        show(loop, timer, storeBefore?.let { before -> llama.storeStats()?.since(before) })
                        !loop.stream().isComplete && !stopRequested.get()
                    }
                } catch (e: RuntimeException) {
                    error = e.message
                }
                loop.feed(utf8.finish())
                val stopped = error != null || stopRequested.get()
                if (stopped) loop.stream().finish()
                outcome = if (stopped) ToolLoop.Outcome.ANSWER else loop.endRound()
                show(loop, timer, storeBefore?.let { before -> llama.storeStats()?.since(before) })
            } while (outcome == ToolLoop.Outcome.CALL_ANSWERED)
            if (outcome == ToolLoop.Outcome.MAX_ROUNDS) error = "stopped after $MAX_TOOL_ROUNDS tool calls"
            val failure = error
            ui {
                generating = false
                runButton.text = getString(R.string.run)
                loadButton.isEnabled = true
                profileButton.isEnabled = true
                if (failure != null) status.text = failure
            }
        }
    }

    /**
     * Runs the benchmark protocol of `edgeoss profile` (DeviceBenchmark: PROFILE_PROMPT random prompt tokens,
     * PROFILE_TOKENS generated greedily, one cold and PROFILE_RUNS warm runs) and writes profile.json into this
     * app's external files folder, for `adb pull` and `edgeoss plan --calibrate` / `edgeoss profiles import`.
     */
    private fun runProfile() {
        val bundle = loadedBundle ?: return
        runButton.isEnabled = false
        profileButton.isEnabled = false
        loadButton.isEnabled = false
        status.text = getString(R.string.profile)
        worker.execute {
            val llama = engine!!
            val report = try {
                val driven = object : DeviceBenchmark.Engine {
                    override fun generate(prompt: IntArray, onToken: DeviceBenchmark.TokenCallback): Int =
                        llama.generateIds(prompt, 0f, false) { _, _ -> onToken.next() }

                    override fun storeStats(): StoreStats? = llama.storeStats()
                }
                val settings = DeviceBenchmark.Settings(PROFILE_PROMPT, PROFILE_TOKENS, PROFILE_RUNS)
                val bench = DeviceBenchmark.run(driven, settings, { System.nanoTime() }, { ProcMemory.read() })
                val m = bundle.manifest
                val json = bench.json(if (m.expertStore != null) "llamacpp-stream" else "llamacpp", m.modelName,
                    m.modelFile, m.settings.nCtx, loadSeconds, rssBeforeLoad, rssAfterLoad, deviceDescription())
                val file = File(getExternalFilesDir(null), "profile.json")
                file.writeText(json)
                String.format(Locale.ROOT, "profile: decode %.2f tok/s (median of %d), TTFT %.2f s; wrote %s " +
                    "(adb pull it, then edgeoss plan --calibrate profile.json)",
                    bench.warm.map { it.decodeTokensPerSecond }.sorted()[bench.warm.size / 2], PROFILE_RUNS,
                    bench.warm.map { it.ttftSeconds }.sorted()[bench.warm.size / 2], file.path)
            } catch (e: RuntimeException) {
                "profile failed: ${e.message}"
            } catch (e: IOException) {
                "cannot write profile.json: ${e.message}"
            }
            ui {
                status.text = report
                runButton.isEnabled = true
                profileButton.isEnabled = true
                loadButton.isEnabled = true
            }
        }
    }

    /** The phone as the profile records it. */
    private fun deviceDescription(): Map<String, Any> {
        val info = ActivityManager.MemoryInfo()
        (getSystemService(ACTIVITY_SERVICE) as ActivityManager).getMemoryInfo(info)
        return linkedMapOf(
            "device" to "${Build.MANUFACTURER} ${Build.MODEL}",
            "ram_bytes" to info.totalMem,
            "cores" to Runtime.getRuntime().availableProcessors(),
            "os" to "Android ${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT})",
            "abi" to Build.SUPPORTED_ABIS.first(),
            "soc" to if (Build.VERSION.SDK_INT >= 31) "${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}" else "unknown",
            "source" to "edgeoss Android demo app",
        )
    }

    /**
     * Posts this round's channels, the calls answered so far (and the one being written), the speed and (when
     * experts stream) the store's hit rate and reads so far (worker thread).
     */
    private fun show(loop: ToolLoop, timer: TokenTimer, store: StoreStats?) {
        val stream = loop.stream()
        val a = stream.analysis()
        val f = stream.finalText()
        val calls = loop.exchanges().joinToString("\n") { "→ ${it.call.recipient}(${it.call.arguments})\n← ${it.result}" }
        val pending = stream.pendingCall()?.let { "→ ${it.recipient}(${it.arguments}…" }
        val c = listOfNotNull(calls.ifEmpty { null }, pending).joinToString("\n")
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
            toolCalls.text = c
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
        // Calls the app answers in one conversation before it stops the loop.
        const val MAX_TOOL_ROUNDS = 4
        // The benchmark protocol's defaults, as `edgeoss profile` (--prompt-tokens 512 --gen-tokens 128 --runs 3).
        const val PROFILE_PROMPT = 512
        const val PROFILE_TOKENS = 128
        const val PROFILE_RUNS = 3
    }
}
