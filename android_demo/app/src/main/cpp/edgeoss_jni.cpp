// JNI bridge between the demo's Kotlin code (org.edgeoss.demo.LlamaEngine) and llama.cpp: load the
// bundle's GGUF memory-mapped, run one harmony prompt, stream each sampled token's id and bytes to Kotlin.
// A prompt that extends the last one (the next turn, a tool's result) reuses the KV cache's common prefix.
// With an expert budget the experts stream from the file through the expert store (expert_store.h).
#include <jni.h>
#include <android/log.h>

#include <algorithm>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "expert_store.h"
#include "ggml-backend.h"
#include "llama-cpp.h"
#include "llama.h"

namespace {

constexpr const char *kTag = "edgeoss";

// Harmony stop tokens (o200k_harmony, gpt-oss).
constexpr llama_token kReturn = 200002;  // <|return|>: the final answer is complete
constexpr llama_token kCall = 200012;    // <|call|>: the model calls a tool
// <|end|> (200007) closes one message. After an analysis message the model goes on with
// <|start|>assistant<|channel|>final..., so <|end|> stops generation only when it closes the final
// channel; Kotlin's HarmonyStream decides that and the sink then returns false.

struct Session {
    std::unique_ptr<edgeoss::ExpertStore> store;  // declared first: destroyed last (the model points into it)
    llama_model_ptr model;
    llama_context_ptr ctx;  // declared after model: destroyed first
    int n_batch;
    size_t reused = 0;                // how many prompt tokens the last generate kept from the cache
    std::vector<llama_token> cached;  // the tokens whose keys and values sequence 0 holds, positions 0..n-1
};

// How many leading tokens of `tokens` the KV cache already holds and can keep: the common prefix with what
// it holds (at least one token is left to decode, for its logits), or 0 when the sliding layers' ring has
// already dropped positions that the next token still attends to. The rest of the cache is removed.
size_t reuse_prefix(Session *session, const std::vector<llama_token> &tokens) {
    llama_memory_t memory = llama_get_memory(session->ctx.get());
    const std::vector<llama_token> &cached = session->cached;
    size_t keep = std::mismatch(cached.begin(), cached.end(), tokens.begin(),
                                tokens.begin() + std::min(cached.size(), tokens.size())).first - cached.begin();
    keep = std::min(keep, tokens.size() - 1);
    const llama_pos window = llama_model_n_swa(session->model.get());
    const llama_pos oldest_needed = std::max<llama_pos>(0, (llama_pos) keep - window);
    if (keep > 0 && llama_memory_seq_pos_min(memory, 0) > oldest_needed) keep = 0;
    if (keep > 0 && !llama_memory_seq_rm(memory, 0, (llama_pos) keep, -1)) keep = 0;
    if (keep == 0) llama_memory_clear(memory, false);
    session->cached.resize(keep);
    return keep;
}

void log_to_logcat(ggml_log_level level, const char *text, void *) {
    const int prio = level == GGML_LOG_LEVEL_ERROR ? ANDROID_LOG_ERROR
                   : level == GGML_LOG_LEVEL_WARN  ? ANDROID_LOG_WARN
                   : level == GGML_LOG_LEVEL_DEBUG ? ANDROID_LOG_DEBUG
                                                   : ANDROID_LOG_INFO;
    __android_log_write(prio, kTag, text);
}

void throw_java(JNIEnv *env, const char *cls, const std::string &msg) {
    env->ThrowNew(env->FindClass(cls), msg.c_str());
}

std::string to_string(JNIEnv *env, jstring s) {
    const char *chars = env->GetStringUTFChars(s, nullptr);
    std::string out(chars);
    env->ReleaseStringUTFChars(s, chars);
    return out;
}

// Harmony markers (<|start|>, <|message|>, ...) become their special tokens; no BOS is added.
bool tokenize(const llama_vocab *vocab, const std::string &text, std::vector<llama_token> &out) {
    const int32_t need = llama_tokenize(vocab, text.data(), (int32_t) text.size(), nullptr, 0, false, true);
    if (need == INT32_MIN) return false;
    out.resize(need < 0 ? -need : need);
    return llama_tokenize(vocab, text.data(), (int32_t) text.size(), out.data(), (int32_t) out.size(),
                          false, true) == (int32_t) out.size();
}

// The token's text with special tokens rendered (so Kotlin sees <|channel|>, <|end|>, ...). A piece
// can end inside a UTF-8 character; Kotlin's Utf8Stream joins the bytes.
std::string piece(const llama_vocab *vocab, llama_token token) {
    std::string out(64, '\0');
    int32_t n = llama_token_to_piece(vocab, token, out.data(), (int32_t) out.size(), 0, true);
    if (n < 0) {
        out.resize(-n);
        n = llama_token_to_piece(vocab, token, out.data(), (int32_t) out.size(), 0, true);
    }
    out.resize(n < 0 ? 0 : n);
    return out;
}

// The store stops the graph when it fails (it cannot throw through llama.cpp): raise its message in Java.
bool store_ok(JNIEnv *env, const Session *session) {
    if (!session->store || session->store->error().empty()) return true;
    throw_java(env, "java/lang/IllegalStateException", "expert store: " + session->store->error());
    return false;
}

// Decodes `tokens` (the prompt) and samples until the sink returns false, <|return|> or <|call|>, or the
// context is full; returns the number of tokens generated. With `reuse` the KV cache keeps its common prefix
// with the prompt (reuse_prefix); otherwise it starts empty.
int generate(JNIEnv *env, Session *session, const std::vector<llama_token> &tokens, jfloat temperature,
             jboolean reuse, jobject sink) {
    llama_context *ctx = session->ctx.get();
    const llama_vocab *vocab = llama_model_get_vocab(session->model.get());
    const int n_ctx = (int) llama_n_ctx(ctx);
    if (tokens.empty() || (int) tokens.size() >= n_ctx) {
        throw_java(env, "java/lang/IllegalArgumentException",
                   "the prompt is " + std::to_string(tokens.size()) + " tokens; the context holds " +
                   std::to_string(n_ctx));
        return 0;
    }

    // With reuse, the cache keeps what it holds of this prompt (a conversation's earlier turns, a tool call
    // before its result); otherwise it starts empty. The rest is fed n_batch tokens at a time.
    if (!reuse) {
        llama_memory_clear(llama_get_memory(ctx), false);
        session->cached.clear();
    }
    session->reused = reuse ? reuse_prefix(session, tokens) : 0;
    for (size_t i = session->reused; i < tokens.size(); i += session->n_batch) {
        const int n = std::min<int>(session->n_batch, (int) (tokens.size() - i));
        if (llama_decode(ctx, llama_batch_get_one(const_cast<llama_token *>(tokens.data()) + i, n)) != 0 || !store_ok(env, session)) {
            session->cached.clear();
            llama_memory_clear(llama_get_memory(ctx), false);
            if (!env->ExceptionCheck()) throw_java(env, "java/lang/IllegalStateException", "llama_decode failed on the prompt");
            return 0;
        }
        session->cached.insert(session->cached.end(), tokens.begin() + i, tokens.begin() + i + n);
    }

    llama_sampler_ptr sampler(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (temperature <= 0) {
        llama_sampler_chain_add(sampler.get(), llama_sampler_init_greedy());
    } else {
        llama_sampler_chain_add(sampler.get(), llama_sampler_init_temp(temperature));
        llama_sampler_chain_add(sampler.get(), llama_sampler_init_dist(LLAMA_DEFAULT_SEED));
    }

    const jmethodID on_token = env->GetMethodID(env->GetObjectClass(sink), "onToken", "(I[B)Z");
    int n_past = (int) tokens.size();
    int generated = 0;
    while (n_past < n_ctx) {
        llama_token token = llama_sampler_sample(sampler.get(), ctx, -1);
        const std::string bytes = piece(vocab, token);
        jbyteArray jbytes = env->NewByteArray((jsize) bytes.size());
        env->SetByteArrayRegion(jbytes, 0, (jsize) bytes.size(), reinterpret_cast<const jbyte *>(bytes.data()));
        const jboolean keep_going = env->CallBooleanMethod(sink, on_token, (jint) token, jbytes);
        env->DeleteLocalRef(jbytes);
        generated++;
        if (env->ExceptionCheck() || !keep_going || token == kReturn || token == kCall) break;
        if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0 || !store_ok(env, session)) {
            session->cached.clear();
            llama_memory_clear(llama_get_memory(ctx), false);
            if (!env->ExceptionCheck()) throw_java(env, "java/lang/IllegalStateException", "llama_decode failed while generating");
            break;
        }
        session->cached.push_back(token);
        n_past++;
    }
    return generated;
}

}  // namespace

extern "C" JNIEXPORT void JNICALL
Java_org_edgeoss_demo_LlamaEngine_nativeInit(JNIEnv *env, jobject, jstring native_lib_dir) {
    static std::once_flag once;
    const std::string dir = to_string(env, native_lib_dir);
    std::call_once(once, [&dir] {
        llama_log_set(log_to_logcat, nullptr);
        // GGML_BACKEND_DL: the CPU backend variants are libggml-cpu-*.so next to this library.
        ggml_backend_load_all_from_path(dir.c_str());
        llama_backend_init();
    });
}

// expert_budget > 0: stream experts within that many bytes, pinning pinned_pairs (layer, stored id, ...);
// n_ubatch > 0 caps the store's ubatch. flash_attn: llama.cpp's -fa on (else off).
extern "C" JNIEXPORT jlong JNICALL
Java_org_edgeoss_demo_LlamaEngine_nativeLoad(JNIEnv *env, jobject, jstring jpath, jint n_ctx, jint n_threads,
                                             jint n_gpu_layers, jboolean use_mmap, jboolean use_mlock,
                                             jint n_batch, jboolean flash_attn, jlong expert_budget,
                                             jintArray pinned_pairs, jint n_ubatch) {
    const std::string path = to_string(env, jpath);
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = n_gpu_layers;
    // mmap: the weights stay in the pushed file and the page cache, never in app storage or the heap.
    mp.load_mode = use_mmap ? (use_mlock ? LLAMA_LOAD_MODE_MMAP_MLOCK : LLAMA_LOAD_MODE_MMAP)
                            : (use_mlock ? LLAMA_LOAD_MODE_MLOCK : LLAMA_LOAD_MODE_NONE);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n_ctx;
    cp.n_batch = (uint32_t) n_batch;
    cp.n_ubatch = (uint32_t) n_batch;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.flash_attn_type = flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    // The sliding layers keep a ring of window + n_ubatch cells, not n_ctx (llama.cpp's library default is the
    // full-size SWA cache: at 20b and 32k that is 0.75 GiB more on the phone). A reused prefix is checked
    // against the ring (reuse_prefix).
    cp.swa_full = false;

    std::unique_ptr<edgeoss::ExpertStore> store;
    if (expert_budget > 0) {
        std::map<int, std::vector<int>> pinned;
        if (pinned_pairs) {
            std::vector<jint> flat((size_t) env->GetArrayLength(pinned_pairs));
            env->GetIntArrayRegion(pinned_pairs, 0, (jsize) flat.size(), flat.data());
            for (size_t i = 0; i + 1 < flat.size(); i += 2) pinned[flat[i]].push_back(flat[i + 1]);
        }
        std::string error;
        store = edgeoss::ExpertStore::open(path, expert_budget, pinned, &error);
        if (!store) {
            throw_java(env, "java/lang/IllegalArgumentException", error);
            return 0;
        }
        mp.load_mode = LLAMA_LOAD_MODE_MMAP;  // the experts' bytes stay the file's: no repacked copy
        mp.use_extra_bufts = false;
        mp.n_gpu_layers = 0;
        cp.cb_eval = edgeoss::ExpertStore::eval_callback;
        cp.cb_eval_user_data = store.get();
        cp.n_ubatch = (uint32_t) std::min(store->n_ubatch(), n_ubatch > 0 ? (int) n_ubatch : n_batch);
    }
    llama_model_ptr model(llama_model_load_from_file(path.c_str(), mp));
    if (!model) {
        throw_java(env, "java/io/IOException", "llama.cpp could not load " + path + " (logcat tag: edgeoss)");
        return 0;
    }
    llama_context_ptr ctx(llama_init_from_model(model.get(), cp));
    if (!ctx) {
        throw_java(env, "java/lang/IllegalStateException",
                   "llama.cpp could not create a " + std::to_string(n_ctx) + "-token context (logcat tag: edgeoss)");
        return 0;
    }
    return reinterpret_cast<jlong>(new Session{std::move(store), std::move(model), std::move(ctx), n_batch, 0, {}});
}

// The expert store's counters: hits, misses, bytes read, read ns, resident bytes, peak bytes, budget,
// evictions, pinned experts, slots, n_ubatch, resident pages (mincore), bytes per miss, resident experts,
// cached (LRU) experts; all 0 without a store.
extern "C" JNIEXPORT jlongArray JNICALL
Java_org_edgeoss_demo_LlamaEngine_nativeStoreStats(JNIEnv *env, jobject, jlong handle) {
    constexpr int kFields = 15;
    const auto *session = reinterpret_cast<Session *>(handle);
    jlong values[kFields] = {0};
    if (const edgeoss::ExpertStore *s = session->store.get()) {
        const edgeoss::StoreCounters &c = s->counters();
        const jlong all[kFields] = {c.hits, c.misses, c.bytes_read, c.read_ns, s->resident_bytes(), s->peak_bytes(),
                                    s->budget_bytes(), c.evictions, s->pinned_experts(), s->slots(), s->n_ubatch(),
                                    s->resident_pages_bytes(), s->expert_bytes(), s->resident_experts(),
                                    s->cached_experts()};
        std::copy(all, all + kFields, values);
    }
    jlongArray out = env->NewLongArray(kFields);
    env->SetLongArrayRegion(out, 0, kFields, values);
    return out;
}

extern "C" JNIEXPORT jint JNICALL
Java_org_edgeoss_demo_LlamaEngine_nativeGenerate(JNIEnv *env, jobject, jlong handle, jbyteArray jprompt,
                                                 jfloat temperature, jboolean reuse, jobject sink) {
    auto *session = reinterpret_cast<Session *>(handle);
    std::string prompt((size_t) env->GetArrayLength(jprompt), '\0');
    env->GetByteArrayRegion(jprompt, 0, (jsize) prompt.size(), reinterpret_cast<jbyte *>(prompt.data()));
    std::vector<llama_token> tokens;
    if (!tokenize(llama_model_get_vocab(session->model.get()), prompt, tokens)) {
        throw_java(env, "java/lang/IllegalArgumentException", "the prompt cannot be tokenized");
        return 0;
    }
    return generate(env, session, tokens, temperature, reuse, sink);
}

// The same from token ids (the benchmark protocol's random prompt, as `edgeoss profile` makes it).
extern "C" JNIEXPORT jint JNICALL
Java_org_edgeoss_demo_LlamaEngine_nativeGenerateIds(JNIEnv *env, jobject, jlong handle, jintArray jprompt,
                                                    jfloat temperature, jboolean reuse, jobject sink) {
    std::vector<llama_token> tokens((size_t) env->GetArrayLength(jprompt));
    env->GetIntArrayRegion(jprompt, 0, (jsize) tokens.size(), reinterpret_cast<jint *>(tokens.data()));
    return generate(env, reinterpret_cast<Session *>(handle), tokens, temperature, reuse, sink);
}

extern "C" JNIEXPORT jint JNICALL
Java_org_edgeoss_demo_LlamaEngine_nativeReusedTokens(JNIEnv *, jobject, jlong handle) {
    return (jint) reinterpret_cast<Session *>(handle)->reused;
}

extern "C" JNIEXPORT void JNICALL
Java_org_edgeoss_demo_LlamaEngine_nativeFree(JNIEnv *, jobject, jlong handle) {
    delete reinterpret_cast<Session *>(handle);
}
