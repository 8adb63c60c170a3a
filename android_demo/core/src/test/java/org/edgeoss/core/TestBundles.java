package org.edgeoss.core;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.LinkedHashMap;
import java.util.Map;

/** Builds small but complete bundle folders and manifest texts for the tests. */
final class TestBundles {
    static final String MODEL = "model-00001-of-00002.gguf";

    static final String PLAN = "{\"format\": \"edgeoss-plan\", \"version\": 1,"
            + " \"device\": {\"name\": \"pixel-9-pro\", \"app_budget_bytes\": 9000000000},"
            + " \"context\": 8192, \"fits\": true,"
            + " \"memory\": {\"total_bytes\": 7850000000, \"dense_bytes\": 1,"
            + " \"kv_cache_bytes\": 2,"
            + " \"resident_expert_bytes\": 3, \"engine_overhead_bytes\": 4, \"scratch_bytes\": 5, \"headroom_bytes\": 6},"
            + " \"prediction\": {\"decode_tok_s\": 7.5, \"ttft_s\": 1.2},"
            + " \"engines\": {\"llamacpp\": {\"n_ctx\": 8192, \"n_gpu_layers\": 0, \"use_mmap\": true,"
            + " \"use_mlock\": false, \"flags\": [\"-c\", \"8192\"]}},"
            + " \"a_future_key\": [1, 2, {\"x\": null}]}";

    private TestBundles() {
    }

    /** The files of a bundle (everything except manifest.json), by relative path. */
    static Map<String, byte[]> files() {
        Map<String, byte[]> files = new LinkedHashMap<>();
        files.put(MODEL, bytes("GGUF shard one \u0000\u0001\u0002"));
        files.put("model-00002-of-00002.gguf", bytes("GGUF shard two"));
        files.put("o200k_base.tiktoken", bytes("IQ== 0\nIg== 1\n"));
        files.put("chat_template.jinja", bytes("{{ messages }}"));
        files.put("README.md", bytes("# bundle\n"));
        files.put("plan.json", bytes(PLAN));
        return files;
    }

    /** manifest.json text listing {@code files} with their real sizes and hashes. */
    static String manifest(Map<String, byte[]> files) throws Exception {
        StringBuilder list = new StringBuilder();
        for (Map.Entry<String, byte[]> e : files.entrySet()) {
            if (list.length() > 0) list.append(",\n    ");
            list.append("{\"path\": \"").append(e.getKey().replace("\\", "\\\\"))
                    .append("\", \"size\": ").append(e.getValue().length)
                    .append(", \"sha256\": \"").append(sha256(e.getValue())).append("\"}");
        }
        return "{\"format\": \"edgeoss-bundle\", \"format_version\": 1, \"target\": \"android\",\n"
                + " \"model\": {\"name\": \"gpt-oss-20b\", \"num_hidden_layers\": 24, \"num_local_experts\": 32,"
                + " \"num_experts_per_tok\": 4, \"hidden_size\": 2880, \"vocab_size\": 201088,"
                + " \"params_total\": 20914757184, \"params_active\": 3608307264},\n"
                + " \"context\": 8192,\n"
                + " \"files\": [" + list + "],\n"
                + " \"memory\": {\"min_free_ram_bytes\": 7000000000, \"app_budget_bytes\": 9000000000},\n"
                + " \"engine\": {\"name\": \"llama.cpp\", \"model_file\": \"" + MODEL + "\",\n"
                + "  \"settings\": {\"n_ctx\": 8192, \"n_threads\": 6, \"n_gpu_layers\": 0, \"use_mmap\": true,"
                + " \"use_mlock\": false, \"n_batch\": 512},\n"
                + "  \"flags\": [\"-m\", \"" + MODEL + "\", \"-c\", \"8192\", \"-t\", \"6\"]},\n"
                + " \"tokenizer\": {\"vocab_file\": \"o200k_base.tiktoken\","
                + " \"sha256\": \"446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d\"},\n"
                + " \"chat_template\": \"chat_template.jinja\",\n"
                + " \"plan\": \"plan.json\"}\n";
    }

    /** Writes a valid bundle into {@code dir} and returns {@code dir}. */
    static Path write(Path dir) throws Exception {
        Map<String, byte[]> files = files();
        for (Map.Entry<String, byte[]> e : files.entrySet()) Files.write(dir.resolve(e.getKey()), e.getValue());
        Files.write(dir.resolve("manifest.json"), bytes(manifest(files)));
        return dir;
    }

    static String sha256(byte[] data) throws Exception {
        StringBuilder hex = new StringBuilder();
        for (byte b : MessageDigest.getInstance("SHA-256").digest(data)) hex.append(String.format("%02x", b));
        return hex.toString();
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}
