// The expert store for llama.cpp (see expert_store.h, and runtimes/llamacpp_store.py for the algorithm).
#include "expert_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "ggml.h"
#include "gguf.h"

namespace edgeoss {
namespace {

constexpr const char *kTopkPrefix = "ffn_moe_topk-";
constexpr const char *kEmbedding = "token_embd.weight";
constexpr const char *kProjections[3] = {"gate", "up", "down"};
constexpr int kDefaultUbatch = 512;  // llama.cpp's own n_ubatch
constexpr int kReadLanes = 4;        // concurrent preads of a ubatch's missed slices

int64_t page_size() {
    static const int64_t page = sysconf(_SC_PAGESIZE);
    return page;
}

int64_t round_up(int64_t n) { return (n + page_size() - 1) / page_size() * page_size(); }

std::string expert_name(int layer, int projection) {
    return "blk." + std::to_string(layer) + ".ffn_" + kProjections[projection] + "_exps.weight";
}

bool starts_with(const char *s, const char *prefix) { return std::strncmp(s, prefix, std::strlen(prefix)) == 0; }

// An unsigned integer key of any width, or -1.
int64_t gguf_int(const gguf_context *g, const std::string &key) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) return -1;
    switch (gguf_get_kv_type(g, id)) {
        case GGUF_TYPE_UINT8: return gguf_get_val_u8(g, id);
        case GGUF_TYPE_UINT16: return gguf_get_val_u16(g, id);
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(g, id);
        case GGUF_TYPE_INT32: return gguf_get_val_i32(g, id);
        case GGUF_TYPE_UINT64: return (int64_t) gguf_get_val_u64(g, id);
        case GGUF_TYPE_INT64: return gguf_get_val_i64(g, id);
        default: return -1;
    }
}

// Every shard of a llama.cpp split GGUF from its first one (NAME-00001-of-0000N.gguf), or [first].
std::vector<std::string> split_files(const std::string &first, int64_t count) {
    if (count <= 1) return {first};
    const size_t at = first.rfind("-00001-of-");
    std::vector<std::string> out;
    for (int64_t i = 1; i <= count; i++) {
        char tail[32];
        std::snprintf(tail, sizeof tail, "-%05d-of-%05d.gguf", (int) i, (int) count);
        out.push_back(first.substr(0, at) + tail);
    }
    return out;
}

// A reservation (noreserve) is kept off transparent huge pages: a written byte costs one page, as counted.
void *anonymous(int64_t nbytes, bool noreserve) {
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS | (noreserve ? MAP_NORESERVE : 0);
    void *p = mmap(nullptr, (size_t) round_up(nbytes), PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    if (noreserve) madvise(p, (size_t) round_up(nbytes), MADV_NOHUGEPAGE);
    return p;
}

// madvise the whole pages inside [address, address + nbytes).
void release_pages(void *address, int64_t nbytes, int advice) {
    const uintptr_t first = ((uintptr_t) address + page_size() - 1) / page_size() * page_size();
    const uintptr_t last = ((uintptr_t) address + nbytes) / page_size() * page_size();
    if (last > first) madvise((void *) first, last - first, advice);
}

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Lanes::Lanes(int n) {
    for (int i = 0; i < n; i++) {
        threads_.emplace_back([this] {
            std::unique_lock<std::mutex> lock(mutex_);
            for (;;) {
                wake_.wait(lock, [this] { return stop_ || (jobs_ && next_ < jobs_->size()); });
                if (stop_) return;
                const std::function<void()> &job = (*jobs_)[next_++];
                lock.unlock();
                job();
                lock.lock();
                if (++finished_ == jobs_->size()) done_.notify_all();
            }
        });
    }
}

Lanes::~Lanes() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    wake_.notify_all();
    for (std::thread &t : threads_) t.join();
}

void Lanes::run_all(const std::vector<std::function<void()>> &jobs) {
    if (jobs.empty()) return;
    std::unique_lock<std::mutex> lock(mutex_);
    jobs_ = &jobs;
    next_ = finished_ = 0;
    wake_.notify_all();
    done_.wait(lock, [&] { return finished_ == jobs.size(); });
    jobs_ = nullptr;
}

// ---- set-up ------------------------------------------------------------------------------------------------
std::unique_ptr<ExpertStore> ExpertStore::open(const std::string &first_gguf, int64_t budget_bytes,
                                               const std::map<int, std::vector<int>> &pinned, std::string *error) {
    std::unique_ptr<ExpertStore> store(new ExpertStore());
    store->budget_ = budget_bytes;
    gguf_init_params params{true, nullptr};
    gguf_context *g = gguf_init_from_file(first_gguf.c_str(), params);
    if (!g) {
        *error = first_gguf + ": not a readable GGUF file";
        return nullptr;
    }
    store->layers_ = (int) gguf_int(g, "gpt-oss.block_count");
    store->experts_ = (int) gguf_int(g, "gpt-oss.expert_count");
    store->k_ = (int) gguf_int(g, "gpt-oss.expert_used_count");
    const int64_t shards = gguf_int(g, "split.count");
    gguf_free(g);
    if (store->layers_ <= 0 || store->experts_ <= 0 || store->k_ <= 0) {
        *error = first_gguf + ": not a gpt-oss GGUF (no block, expert or expert-used count)";
        return nullptr;
    }
    if (!store->map_files(split_files(first_gguf, shards), error) || !store->check_pinned(pinned, error) ||
        !store->choose_ubatch(error)) {
        return nullptr;
    }
    store->lanes_ = std::make_unique<Lanes>(kReadLanes);
    for (const auto &[layer, ids] : store->pinned_) store->load_union(layer, ids, {});
    if (!store->error_.empty()) {
        *error = store->error_;
        return nullptr;
    }
    store->pinned_bytes_ = store->resident_cost_;
    store->counters_ = StoreCounters{};  // counting starts with the first token
    return store;
}

bool ExpertStore::map_files(const std::vector<std::string> &files, std::string *error) {
    tensors_.resize((size_t) layers_ * 3);
    int found = 0;
    for (int f = 0; f < (int) files.size(); f++) {
        gguf_init_params params{true, nullptr};
        gguf_context *g = gguf_init_from_file(files[f].c_str(), params);
        if (!g) {
            *error = files[f] + ": not a readable GGUF file";
            return false;
        }
        const int64_t data = (int64_t) gguf_get_data_offset(g);
        for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) {
            const std::string name = gguf_get_tensor_name(g, i);
            const int64_t offset = data + (int64_t) gguf_get_tensor_offset(g, i);
            const int64_t nbytes = (int64_t) gguf_get_tensor_size(g, i);
            if (name == kEmbedding) {
                embedding_ = {f, offset};
                continue;
            }
            if (name.find("_exps.weight") == std::string::npos) {
                dense_[name] = {f, offset};
                dense_bytes_[name] = nbytes;
                continue;
            }
            int layer = -1, projection = -1;
            for (int l = 0; l < layers_ && projection < 0; l++) {
                for (int p = 0; p < 3; p++) {
                    if (name == expert_name(l, p)) layer = l, projection = p;
                }
            }
            if (projection < 0 || nbytes % experts_) {
                *error = files[f] + ": unexpected expert tensor " + name;
                gguf_free(g);
                return false;
            }
            Tensor &t = tensor(layer, projection);
            t = Tensor{name, layer, f, offset, nbytes, nbytes / experts_,
                       static_cast<uint8_t *>(anonymous(nbytes, true))};
            if (!t.reservation) {
                *error = "cannot reserve " + std::to_string(nbytes) + " bytes for " + name;
                gguf_free(g);
                return false;
            }
            expert_index_[name] = layer * 3 + projection;
            found++;
        }
        gguf_free(g);
        const int fd = ::open(files[f].c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            *error = files[f] + ": cannot open (" + std::strerror(errno) + ")";
            return false;
        }
        posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);  // no readahead past a slice
        fds_.push_back(fd);
    }
    if (found != layers_ * 3) {
        *error = files[0] + ": has " + std::to_string(found) + " stacked expert tensors, expected " +
                 std::to_string(layers_ * 3);
        return false;
    }
    // pages each expert id spans in the three page-aligned reservations (the same in every layer)
    cost_.assign(experts_, 0);
    for (int p = 0; p < 3; p++) {
        const int64_t s = tensor(0, p).stride;
        expert_bytes_ += s;
        for (int e = 0; e < experts_; e++) {
            cost_[e] += ((e + 1) * s + page_size() - 1) / page_size() * page_size() - e * s / page_size() * page_size();
        }
    }
    return true;
}

bool ExpertStore::check_pinned(const std::map<int, std::vector<int>> &pinned, std::string *error) {
    int64_t cost = 0;
    for (const auto &[layer, ids] : pinned) {
        if (layer < 0 || layer >= layers_) {
            *error = "the plan pins experts of layer " + std::to_string(layer) + "; the model has layers 0.." +
                     std::to_string(layers_ - 1);
            return false;
        }
        std::set<int> unique;
        for (int e : ids) {
            if (e < 0 || e >= experts_) {
                *error = "the plan pins expert " + std::to_string(e) + " of layer " + std::to_string(layer);
                return false;
            }
            unique.insert(e);
        }
        for (int e : unique) {
            pinned_[layer].push_back(e);
            pinned_keys_.insert({layer, e});
            cost += cost_[e];
        }
    }
    if (cost > budget_) {
        *error = "the plan's " + std::to_string(pinned_keys_.size()) + " pinned experts need " +
                 std::to_string(cost) + " bytes; the expert budget is " + std::to_string(budget_);
        return false;
    }
    slots_ = (int) std::max<int64_t>(0, (budget_ - cost) / *std::max_element(cost_.begin(), cost_.end()));
    return true;
}

bool ExpertStore::choose_ubatch(std::string *error) {
    int fewest_pinned = experts_;
    for (int layer = 0; layer < layers_; layer++) {
        auto it = pinned_.find(layer);
        fewest_pinned = std::min(fewest_pinned, it == pinned_.end() ? 0 : (int) it->second.size());
    }
    auto needed = [&](int ubatch) { return (int) std::min<int64_t>(experts_ - fewest_pinned, (int64_t) k_ * ubatch); };
    if (needed(1) > slots_) {
        *error = "expert budget of " + std::to_string(budget_) + " bytes holds " + std::to_string(slots_) +
                 " experts beside the " + std::to_string(pinned_keys_.size()) + " pinned; one token's top-" +
                 std::to_string(k_) + " in a layer needs " + std::to_string(needed(1));
        return false;
    }
    n_ubatch_ = needed(kDefaultUbatch) <= slots_ ? kDefaultUbatch : std::max(1, slots_ / k_);
    return true;
}

ExpertStore::~ExpertStore() {
    for (Tensor &t : tensors_) {
        if (t.reservation) munmap(t.reservation, (size_t) round_up(t.nbytes));
    }
    for (auto &[name, b] : bound_) {
        if (b.copy) munmap(b.copy, (size_t) round_up(b.nbytes));
    }
    for (int fd : fds_) close(fd);
}

int ExpertStore::pinned_experts() const { return (int) pinned_keys_.size(); }

// ---- the eval callback ------------------------------------------------------------------------------------
bool ExpertStore::eval_callback(ggml_tensor *t, bool ask, void *user_data) {
    return static_cast<ExpertStore *>(user_data)->on_node(t, ask);
}

void ExpertStore::fail(const std::string &message) {
    if (error_.empty()) error_ = message;
}

bool ExpertStore::on_node(ggml_tensor *t, bool ask) {
    if (!error_.empty()) return false;  // stop the graph: llama_decode's caller reads error()
    if (ask) {
        if (starts_with(t->name, kTopkPrefix)) return true;  // compute up to it, then call back with its ids
        if (!all_bound_) bind(t);
        return false;
    }
    route(std::atoi(t->name + std::strlen(kTopkPrefix)), t);
    return error_.empty();
}

void ExpertStore::route(int layer, const ggml_tensor *topk) {
    if (topk->type != GGML_TYPE_I32 || layer < 0 || layer >= layers_) {
        fail(std::string(topk->name) + ": not an int32 top-k node of a known layer");
        return;
    }
    const int64_t k = topk->ne[0], tokens = topk->ne[1];
    std::map<int, int64_t> choices;  // the ubatch's union, with how often each expert was chosen
    for (int64_t t = 0; t < tokens; t++) {
        const auto *row = reinterpret_cast<const int32_t *>(static_cast<const char *>(topk->data) + t * topk->nb[1]);
        for (int64_t j = 0; j < k; j++) {
            if (row[j] < 0 || row[j] >= experts_) {
                fail("layer " + std::to_string(layer) + ": routed expert id out of range");
                return;
            }
            choices[row[j]]++;
        }
    }
    std::vector<int> missing;
    std::set<Key> protect;
    for (const auto &[e, count] : choices) {
        const Key key{layer, e};
        protect.insert(key);
        if (resident_.count(key)) {
            counters_.hits += count;
            auto it = std::find(lru_.begin(), lru_.end(), key);
            if (it != lru_.end()) {
                lru_.erase(it);
                lru_.push_back(key);
            }
        } else {
            counters_.misses += 1;
            counters_.hits += count - 1;
            missing.push_back(e);
        }
    }
    load_union(layer, missing, protect);
}

void ExpertStore::load_union(int layer, const std::vector<int> &experts, const std::set<Key> &protect) {
    int64_t need = 0;
    for (int e : experts) need += cost_[e];
    while (resident_cost_ + need > budget_) {
        auto victim = std::find_if(lru_.begin(), lru_.end(), [&](const Key &k) { return !protect.count(k); });
        if (victim == lru_.end()) {
            fail("layer " + std::to_string(layer) + ": the routed experts of one ubatch do not fit the expert "
                 "budget (n_ubatch " + std::to_string(n_ubatch_) + ")");
            return;
        }
        evict(*victim);
    }
    read_experts(layer, experts);
    if (!error_.empty()) return;
    for (int e : experts) {
        const Key key{layer, e};
        resident_.insert(key);
        resident_cost_ += cost_[e];
        if (!pinned_keys_.count(key)) lru_.push_back(key);
    }
    peak_cost_ = std::max(peak_cost_, resident_cost_);
}

// Every slice of these experts, kReadLanes preads at a time (the flash's queue is deeper than one).
void ExpertStore::read_experts(int layer, const std::vector<int> &experts) {
    if (experts.empty()) return;
    const int64_t start = now_ns();
    std::vector<std::function<void()>> jobs;
    for (int e : experts) {
        for (int p = 0; p < 3; p++) {
            Tensor *t = &tensor(layer, p);
            jobs.emplace_back([this, t, e] { read_slice(*t, e); });
            counters_.bytes_read += t->stride;
        }
    }
    lanes_->run_all(jobs);
    counters_.read_ns += now_ns() - start;
}

void ExpertStore::read_slice(Tensor &t, int e) {
    const int64_t offset = t.offset + e * t.stride;
    int64_t done = 0;
    while (done < t.stride) {
        const ssize_t n = pread(fds_[t.file], t.reservation + e * t.stride + done, (size_t) (t.stride - done),
                                (off_t) (offset + done));
        if (n <= 0) {
            std::lock_guard<std::mutex> lock(read_error_mutex_);
            fail(t.name + " expert " + std::to_string(e) + ": read failed (" +
                 (n < 0 ? std::strerror(errno) : "end of file") + ")");
            return;
        }
        done += n;
    }
    posix_fadvise(fds_[t.file], offset, t.stride, POSIX_FADV_DONTNEED);  // the budget holds the only copy
}

// Whether another resident expert's slice of `t` has bytes in this page.
bool ExpertStore::shared(const Tensor &t, uintptr_t page, int e) const {
    const uintptr_t base = (uintptr_t) t.reservation;
    const int64_t lo = std::max<int64_t>(0, (int64_t) (page - base) / t.stride);
    const int64_t hi = std::min<int64_t>(experts_ - 1, (int64_t) (page + page_size() - 1 - base) / t.stride);
    for (int64_t other = lo; other <= hi; other++) {
        if (other != e && resident_.count({t.layer, (int) other})) return true;
    }
    return false;
}

void ExpertStore::evict(Key key) {
    lru_.erase(std::find(lru_.begin(), lru_.end(), key));
    resident_.erase(key);
    resident_cost_ -= cost_[key.second];
    counters_.evictions++;
    for (int p = 0; p < 3; p++) {
        const Tensor &t = tensor(key.first, p);
        const uintptr_t start = (uintptr_t) (t.reservation + key.second * t.stride);
        uintptr_t first = start / page_size() * page_size();
        uintptr_t end = (start + t.stride + page_size() - 1) / page_size() * page_size();
        if (shared(t, first, key.second)) first += page_size();  // only the edge pages can be shared
        if (end - page_size() >= first && shared(t, end - page_size(), key.second)) end -= page_size();
        if (end > first) madvise((void *) first, end - first, MADV_DONTNEED);
    }
}

// ---- binding the weights ----------------------------------------------------------------------------------
void ExpertStore::bind(ggml_tensor *node) {
    if (mul_mat_id_op_ < 0) mul_mat_id_op_ = GGML_OP_MUL_MAT_ID;
    for (ggml_tensor *src : node->src) {
        if (!src) break;
        if (!seen_.insert(src).second) continue;
        const std::string name = src->name;
        if (bound_.count(name)) continue;
        auto expert = expert_index_.find(name);
        if (expert != expert_index_.end()) {
            Tensor &t = tensors_[expert->second];
            if (node->op != mul_mat_id_op_ || (int64_t) ggml_nbytes(src) != t.nbytes) {
                fail(name + ": not read by a MUL_MAT_ID of its size: this llama.cpp's gpt-oss graph is not the one "
                     "the store knows");
                return;
            }
            bound_[name] = Bound{src->data, t.nbytes, nullptr, t.file, t.offset};
            src->data = t.reservation;
        } else if (dense_.count(name)) {
            const int64_t nbytes = dense_bytes_[name];
            if ((int64_t) ggml_nbytes(src) != nbytes) {
                fail(name + ": ggml and the GGUF disagree on its size");
                return;
            }
            void *copy = anonymous(nbytes, false);
            if (!copy) {
                fail("cannot allocate " + std::to_string(nbytes) + " bytes for " + name);
                return;
            }
            std::memcpy(copy, src->data, (size_t) nbytes);
            bound_[name] = Bound{src->data, nbytes, copy, dense_[name].first, dense_[name].second};
            src->data = copy;
        } else if (name == kEmbedding) {
            bound_[name] = Bound{src->data, (int64_t) ggml_nbytes(src), nullptr, embedding_.first, embedding_.second};
        }
    }
    if (bound_.size() == tensors_.size() + dense_.size() + 1) {
        all_bound_ = true;
        release_originals();
    }
}

// Drop the original mapping's pages and their page cache (the embedding's rows fault back as needed).
void ExpertStore::release_originals() {
    for (auto &[name, b] : bound_) {
        if (name == kEmbedding) release_pages(b.original, b.nbytes, MADV_RANDOM);
        release_pages(b.original, b.nbytes, MADV_DONTNEED);
        posix_fadvise(fds_[b.file], b.offset, b.nbytes, POSIX_FADV_DONTNEED);
    }
    released_ = true;
}

int64_t ExpertStore::resident_pages_bytes() const {
    int64_t total = 0;
    std::vector<unsigned char> vec;
    for (const Tensor &t : tensors_) {
        const int64_t pages = round_up(t.nbytes) / page_size();
        vec.assign((size_t) pages, 0);
        if (mincore(t.reservation, (size_t) round_up(t.nbytes), vec.data()) != 0) return -1;
        for (unsigned char v : vec) total += (v & 1) ? page_size() : 0;
    }
    return total;
}

}  // namespace edgeoss
