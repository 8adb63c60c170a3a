// The expert store for llama.cpp in C++: gpt-oss experts stream from the GGUF into a byte budget, the plan's
// hot set pinned. A port of edgeoss's runtimes/llamacpp_store.py: its docstring is the algorithm, step for
// step (load, reservations, budget, ubatch, route, bind, counters); keep the two in step.
//
//   std::string error;
//   auto store = edgeoss::ExpertStore::open(gguf_path, budget_bytes, pinned, &error);
//   mp.load_mode = LLAMA_LOAD_MODE_MMAP; mp.use_extra_bufts = false;       // mmap, no repack
//   cp.cb_eval = edgeoss::ExpertStore::eval_callback; cp.cb_eval_user_data = store.get();
//   cp.n_ubatch = store->n_ubatch();
//   ... llama_decode ...; if (!store->error().empty()) fail;
//
// The store must outlive the llama model: the model's expert tensors point into its reservations.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

struct ggml_tensor;

namespace edgeoss {

// A few threads that run a batch of jobs and wait for all of them (the store's concurrent preads).
class Lanes {
  public:
    explicit Lanes(int n);
    ~Lanes();
    void run_all(const std::vector<std::function<void()>> &jobs);

  private:
    std::vector<std::thread> threads_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    const std::vector<std::function<void()>> *jobs_ = nullptr;
    size_t next_ = 0, finished_ = 0;
    bool stop_ = false;
};

struct StoreCounters {
    int64_t hits = 0;
    int64_t misses = 0;
    int64_t bytes_read = 0;
    int64_t read_ns = 0;
    int64_t evictions = 0;
};

class ExpertStore {
  public:
    // pinned: layer -> the GGUF's stored expert ids to read at start and never evict. Returns null and sets
    // *error (one line) when the file is not a gpt-oss GGUF or the budget cannot hold one layer's top-k.
    static std::unique_ptr<ExpertStore> open(const std::string &first_gguf, int64_t budget_bytes,
                                             const std::map<int, std::vector<int>> &pinned, std::string *error);
    ~ExpertStore();
    ExpertStore(const ExpertStore &) = delete;
    ExpertStore &operator=(const ExpertStore &) = delete;

    // llama_context_params.cb_eval; user_data is the store.
    static bool eval_callback(ggml_tensor *t, bool ask, void *user_data);

    int n_ubatch() const { return n_ubatch_; }
    int slots() const { return slots_; }
    int64_t budget_bytes() const { return budget_; }
    int pinned_experts() const;
    int64_t pinned_bytes() const { return pinned_bytes_; }
    int64_t expert_bytes() const { return expert_bytes_; }  // what one miss reads
    int64_t resident_bytes() const { return resident_cost_; }
    int64_t peak_bytes() const { return peak_cost_; }
    int64_t resident_pages_bytes() const;  // what the reservations really hold (mincore)
    int resident_experts() const { return (int) resident_.size(); }
    int cached_experts() const { return (int) lru_.size(); }  // resident and not pinned: the LRU
    bool weights_bound() const { return all_bound_; }
    bool original_released() const { return released_; }
    const StoreCounters &counters() const { return counters_; }
    // What the callback met; it cannot throw through llama.cpp (the graph is stopped instead).
    const std::string &error() const { return error_; }

  private:
    struct Tensor {  // one stacked expert tensor: blk.L.ffn_{gate,up,down}_exps.weight
        std::string name;
        int layer = 0;
        int file = 0;
        int64_t offset = 0;  // absolute file offset of its data
        int64_t nbytes = 0;
        int64_t stride = 0;  // one expert's bytes
        uint8_t *reservation = nullptr;
    };
    struct Bound {  // a weight moved off the original mapping (copy == nullptr: left mapped, the embedding)
        void *original = nullptr;
        int64_t nbytes = 0;
        void *copy = nullptr;
        int file = 0;
        int64_t offset = 0;
    };
    using Key = std::pair<int, int>;  // (layer, expert)

    ExpertStore() = default;
    bool map_files(const std::vector<std::string> &files, std::string *error);
    bool check_pinned(const std::map<int, std::vector<int>> &pinned, std::string *error);
    bool choose_ubatch(std::string *error);
    bool on_node(ggml_tensor *t, bool ask);
    void bind(ggml_tensor *node);
    void route(int layer, const ggml_tensor *topk);
    void load_union(int layer, const std::vector<int> &experts, const std::set<Key> &protect);
    void read_experts(int layer, const std::vector<int> &experts);
    void read_slice(Tensor &t, int e);
    void evict(Key key);  // by value: callers pass an element of lru_, which evict erases
    bool shared(const Tensor &t, uintptr_t page, int e) const;
    void release_originals();
    void fail(const std::string &message);
    Tensor &tensor(int layer, int projection) { return tensors_[layer * 3 + projection]; }

    int layers_ = 0, experts_ = 0, k_ = 0;
    int64_t budget_ = 0;
    std::vector<int> fds_;
    std::vector<Tensor> tensors_;                          // layer * 3 + projection (gate, up, down)
    std::unordered_map<std::string, int> expert_index_;  // name -> index into tensors_
    std::unordered_map<std::string, std::pair<int, int64_t>> dense_;  // name -> (file, offset); nbytes below
    std::unordered_map<std::string, int64_t> dense_bytes_;
    std::pair<int, int64_t> embedding_{0, 0};
    std::vector<int64_t> cost_;  // pages each expert id spans over its three slices
    int64_t expert_bytes_ = 0;
    std::map<int, std::vector<int>> pinned_;
    std::set<Key> pinned_keys_;
    int slots_ = 0;
    int n_ubatch_ = 0;

    std::set<Key> resident_;
    std::vector<Key> lru_;  // least recently used first (a few hundred entries: a vector is enough)
    int64_t resident_cost_ = 0, peak_cost_ = 0, pinned_bytes_ = 0;
    StoreCounters counters_;

    std::unordered_map<std::string, Bound> bound_;
    std::unordered_set<const ggml_tensor *> seen_;
    std::unique_ptr<Lanes> lanes_;
    std::mutex read_error_mutex_;
    bool all_bound_ = false;
    bool released_ = false;
    int mul_mat_id_op_ = -1;
    std::string error_;
};

}  // namespace edgeoss
