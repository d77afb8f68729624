// llama-fa: time ggml's CPU flash attention (GGML_OP_FLASH_ATTN_EXT) for one decode step, to compare
// kvspool's attention kernel against llama.cpp's. Built and run by tools/bench-llama-flash-attn.sh.
//
//   llama-fa [--kv 4096,32768] [--type f16,q8_0] [--threads 1,2] [--sinks 0,1] [--cache hot,cold]
//            [--n-head 64] [--n-head-kv 8] [--head-dim 64] [--no-mask] [--min-reps 10]
//            [--min-secs 1.0] [--max-reps 500] [--warmup 3] [--cold-bytes 100663296] [--seed 42]
//            [--max-other 0.2] [--retries 3] [--retry-wait 15]
//
// The graph is what llama.cpp builds for one decode token (src/llama-graph.cpp build_attn_mha):
// K and V are views of a KV-cache tensor laid out [n_embd_head*n_head_kv, kv_size] (all KV heads of
// one position contiguous), permuted to [head_dim, n_kv, n_head_kv]; Q is F32 [head_dim, 1, n_head];
// the mask is F16 [n_kv, 1] (all zeros = every position visible); optional F32 sinks [n_head];
// accumulation precision GGML_PREC_F32; scale 1/sqrt(head_dim).
//
// "hot": one copy of Q/K/V/mask, re-run back to back (K/V stay in cache if they fit).
// "cold": enough independent copies, cycled, that their total size is >= --cold-bytes (default
// 96 MiB, 3x this machine's 32 MiB L3), like a real decode step that moves on to the next layer.
//
// Each configuration is run once and checked against a double-precision reference computed from
// the (dequantized) K/V actually stored; then warmed up and timed. One JSON line per configuration
// on stdout; progress on stderr. Each JSON line carries "other_cores_busy": how many cores other
// processes kept busy during the timed loop (/proc/stat minus this process). Above --max-other the
// configuration is re-timed after --retry-wait seconds, at most --retries times; the last attempt
// is reported with its "attempts" count.
#include "ggml.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include <sys/resource.h>

// CPU time used by every process on the machine (from /proc/stat, in seconds) and by this one.
// (machine - self) / wall over the timed loop = how many cores other processes kept busy.
static double machine_busy_secs() {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return NAN;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu",
                   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8) return NAN;
    // user nice system [idle] [iowait] irq softirq steal; guest time is already in user
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    return (double) busy / (double) sysconf(_SC_CLK_TCK);
}
static double self_cpu_secs() {
    rusage ru; getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

struct Copy {
    ggml_context *ctx = nullptr;
    ggml_tensor *q = nullptr, *kc = nullptr, *vc = nullptr, *k = nullptr, *v = nullptr, *mask = nullptr, *sinks = nullptr;
    ggml_tensor *out[2] = {nullptr, nullptr}; // [without sinks, with sinks]
    ggml_cgraph *gf[2] = {nullptr, nullptr};
};

static std::vector<std::string> split(const std::string &s) {
    std::vector<std::string> out;
    size_t p = 0;
    while (p <= s.size()) {
        size_t c = s.find(',', p);
        if (c == std::string::npos) c = s.size();
        if (c > p) out.push_back(s.substr(p, c - p));
        p = c + 1;
    }
    return out;
}

static ggml_type parse_type(const std::string &s) {
    if (s == "f16") return GGML_TYPE_F16;
    if (s == "q8_0") return GGML_TYPE_Q8_0;
    if (s == "q4_0") return GGML_TYPE_Q4_0;
    if (s == "f32") return GGML_TYPE_F32;
    if (s == "bf16") return GGML_TYPE_BF16;
    fprintf(stderr, "llama-fa: unknown type %s (f16, q8_0, q4_0, bf16, f32)\n", s.c_str());
    exit(2);
}

static void usage() {
    fprintf(stderr,
        "usage: llama-fa [--kv LIST] [--type LIST] [--threads LIST] [--sinks LIST] [--cache hot,cold]\n"
        "                [--n-head N] [--n-head-kv N] [--head-dim N] [--no-mask] [--min-reps N]\n"
        "                [--min-secs S] [--max-reps N] [--warmup N] [--cold-bytes B] [--seed N]\n"
        "                [--max-other CORES] [--retries N] [--retry-wait SECS]\n");
    exit(2);
}

static void quiet_log(enum ggml_log_level level, const char *text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

int main(int argc, char **argv) {
    std::vector<int64_t> kvs = {4096, 32768};
    std::vector<ggml_type> types = {GGML_TYPE_F16};
    std::vector<int> threads = {1, 2};
    std::vector<int> sinks_opts = {1};
    std::vector<std::string> caches = {"hot"};
    int64_t n_head = 64, n_head_kv = 8, head_dim = 64;
    bool use_mask = true;
    int min_reps = 10, max_reps = 500, warmup = 3;
    double min_secs = 1.0;
    size_t cold_bytes = 96ull << 20;
    unsigned seed = 42;
    double max_other = 0.2;   // re-time a configuration if other processes kept more cores than this busy
    int retries = 3, retry_wait = 15;

    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string { if (i + 1 >= argc) usage(); return argv[++i]; };
        if (a == "--kv") { kvs.clear(); for (auto &s : split(next())) kvs.push_back(atoll(s.c_str())); }
        else if (a == "--type") { types.clear(); for (auto &s : split(next())) types.push_back(parse_type(s)); }
        else if (a == "--threads") { threads.clear(); for (auto &s : split(next())) threads.push_back(atoi(s.c_str())); }
        else if (a == "--sinks") { sinks_opts.clear(); for (auto &s : split(next())) sinks_opts.push_back(atoi(s.c_str()) ? 1 : 0); }
        else if (a == "--cache") { caches = split(next()); for (auto &c : caches) if (c != "hot" && c != "cold") usage(); }
        else if (a == "--n-head") n_head = atoll(next().c_str());
        else if (a == "--n-head-kv") n_head_kv = atoll(next().c_str());
        else if (a == "--head-dim") head_dim = atoll(next().c_str());
        else if (a == "--no-mask") use_mask = false;
        else if (a == "--min-reps") min_reps = atoi(next().c_str());
        else if (a == "--max-reps") max_reps = atoi(next().c_str());
        else if (a == "--min-secs") min_secs = atof(next().c_str());
        else if (a == "--warmup") warmup = atoi(next().c_str());
        else if (a == "--cold-bytes") cold_bytes = strtoull(next().c_str(), nullptr, 10);
        else if (a == "--max-other") max_other = atof(next().c_str());
        else if (a == "--retries") retries = atoi(next().c_str());
        else if (a == "--retry-wait") retry_wait = atoi(next().c_str());
        else if (a == "--seed") seed = (unsigned) atoi(next().c_str());
        else usage();
    }
    if (kvs.empty() || types.empty() || threads.empty() || sinks_opts.empty() || caches.empty() ||
        n_head % n_head_kv != 0 || min_reps < 1 || max_reps < min_reps) usage();

    ggml_log_set(quiet_log, nullptr);
    ggml_cpu_init();

    const float scale = 1.0f / sqrtf((float) head_dim);
    const int64_t n_embd_gqa = head_dim * n_head_kv;
    const int64_t gqa = n_head / n_head_kv;

    for (int64_t n_kv : kvs) {
        for (ggml_type type : types) {
            if (head_dim % ggml_blck_size(type) != 0) {
                fprintf(stderr, "llama-fa: head_dim %lld not a multiple of %s block size\n", (long long) head_dim, ggml_type_name(type));
                return 2;
            }
            const size_t row_bytes = ggml_row_size(type, n_embd_gqa);   // one position, all KV heads
            const size_t kv_bytes = 2 * row_bytes * n_kv;                // K + V for this layer
            const size_t copy_bytes = kv_bytes + n_kv * sizeof(ggml_fp16_t) + n_head * head_dim * 4;
            bool want_cold = std::find(caches.begin(), caches.end(), "cold") != caches.end();
            int n_copies = want_cold ? (int) std::max<size_t>(1, (cold_bytes + copy_bytes - 1) / copy_bytes) : 1;

            // Random data, fixed seed: Q, K, V ~ N(0, 1), sinks ~ N(0, 2).
            std::mt19937_64 rng(seed ^ (uint64_t) n_kv * 1000003u ^ (uint64_t) type);
            std::normal_distribution<float> nd(0.0f, 1.0f);
            std::vector<float> qf(n_head * head_dim), kf(n_kv * n_embd_gqa), vf(n_kv * n_embd_gqa), sf(n_head);
            for (auto &x : qf) x = nd(rng);
            for (auto &x : kf) x = nd(rng);
            for (auto &x : vf) x = nd(rng);
            for (auto &x : sf) x = 2.0f * nd(rng);

            std::vector<Copy> copies(n_copies);
            for (int c = 0; c < n_copies; c++) {
                Copy &cp = copies[c];
                ggml_init_params ip = { copy_bytes + 64 * ggml_tensor_overhead() + 2 * ggml_graph_overhead() + (1 << 20), nullptr, false };
                cp.ctx = ggml_init(ip);
                if (!cp.ctx) { fprintf(stderr, "llama-fa: ggml_init failed (%zu bytes)\n", ip.mem_size); return 1; }
                // Q: [head_dim, n_head, n_tokens=1] then permute to [head_dim, 1, n_head] as llama.cpp does
                cp.q = ggml_new_tensor_3d(cp.ctx, GGML_TYPE_F32, head_dim, n_head, 1);
                cp.kc = ggml_new_tensor_2d(cp.ctx, type, n_embd_gqa, n_kv);
                cp.vc = ggml_new_tensor_2d(cp.ctx, type, n_embd_gqa, n_kv);
                if (c == 0) {
                    memcpy(cp.q->data, qf.data(), ggml_nbytes(cp.q));
                    ggml_quantize_chunk(type, kf.data(), cp.kc->data, 0, n_kv, n_embd_gqa, nullptr);
                    ggml_quantize_chunk(type, vf.data(), cp.vc->data, 0, n_kv, n_embd_gqa, nullptr);
                } else {
                    memcpy(cp.q->data, copies[0].q->data, ggml_nbytes(cp.q));
                    memcpy(cp.kc->data, copies[0].kc->data, ggml_nbytes(cp.kc));
                    memcpy(cp.vc->data, copies[0].vc->data, ggml_nbytes(cp.vc));
                }
                // views as in llama_kv_cache::get_k/get_v: [head_dim, n_head_kv, n_kv], then permute(0,2,1,3)
                ggml_tensor *kview = ggml_view_3d(cp.ctx, cp.kc, head_dim, n_head_kv, n_kv,
                    ggml_row_size(type, head_dim), row_bytes, 0);
                ggml_tensor *vview = ggml_view_3d(cp.ctx, cp.vc, head_dim, n_head_kv, n_kv,
                    ggml_row_size(type, head_dim), row_bytes, 0);
                cp.k = ggml_permute(cp.ctx, kview, 0, 2, 1, 3);
                cp.v = ggml_permute(cp.ctx, vview, 0, 2, 1, 3);
                ggml_tensor *q = ggml_permute(cp.ctx, cp.q, 0, 2, 1, 3);
                if (use_mask) {
                    cp.mask = ggml_new_tensor_4d(cp.ctx, GGML_TYPE_F16, n_kv, 1, 1, 1);
                    memset(cp.mask->data, 0, ggml_nbytes(cp.mask)); // F16 zero: all positions visible
                }
                cp.sinks = ggml_new_tensor_1d(cp.ctx, GGML_TYPE_F32, n_head);
                memcpy(cp.sinks->data, sf.data(), ggml_nbytes(cp.sinks));
                for (int s = 0; s < 2; s++) {
                    ggml_tensor *o = ggml_flash_attn_ext(cp.ctx, q, cp.k, cp.v, cp.mask, scale, 0.0f, 0.0f);
                    if (s) ggml_flash_attn_ext_add_sinks(o, cp.sinks);
                    ggml_prec_set_acc(o, GGML_PREC_F32);
                    cp.out[s] = o;
                    cp.gf[s] = ggml_new_graph(cp.ctx);
                    ggml_build_forward_expand(cp.gf[s], o);
                }
            }

            // Reference (double) from the stored, dequantized K/V; out[h][d] for each sinks setting.
            std::vector<float> kd(n_kv * n_embd_gqa), vd(n_kv * n_embd_gqa);
            {
                const ggml_type_traits *tr = ggml_get_type_traits(type);
                if (type == GGML_TYPE_F32) {
                    memcpy(kd.data(), copies[0].kc->data, kd.size() * 4);
                    memcpy(vd.data(), copies[0].vc->data, vd.size() * 4);
                } else {
                    tr->to_float(copies[0].kc->data, kd.data(), (int64_t) kd.size());
                    tr->to_float(copies[0].vc->data, vd.data(), (int64_t) vd.size());
                }
            }
            std::vector<double> ref[2];
            ref[0].assign(n_head * head_dim, 0.0); ref[1].assign(n_head * head_dim, 0.0);
            {
                std::vector<double> sc(n_kv), acc(head_dim);
                for (int64_t h = 0; h < n_head; h++) {
                    const int64_t hk = h / gqa;
                    const float *qh = qf.data() + h * head_dim;
                    double m = -INFINITY;
                    for (int64_t t = 0; t < n_kv; t++) {
                        const float *kr = kd.data() + t * n_embd_gqa + hk * head_dim;
                        double d = 0; for (int64_t i = 0; i < head_dim; i++) d += (double) qh[i] * kr[i];
                        sc[t] = d * scale; m = std::max(m, sc[t]);
                    }
                    double ssum = 0; std::fill(acc.begin(), acc.end(), 0.0);
                    for (int64_t t = 0; t < n_kv; t++) {
                        double p = exp(sc[t] - m); ssum += p;
                        const float *vr = vd.data() + t * n_embd_gqa + hk * head_dim;
                        for (int64_t i = 0; i < head_dim; i++) acc[i] += p * vr[i];
                    }
                    for (int s = 0; s < 2; s++) {
                        double tot = ssum + (s ? exp((double) sf[h] - m) : 0.0);
                        for (int64_t i = 0; i < head_dim; i++) ref[s][h * head_dim + i] = acc[i] / tot;
                    }
                }
            }

            const bool split_kv = (type == GGML_TYPE_F16 || type == GGML_TYPE_F32) && n_kv >= 512;
            const char *path = split_kv ? "split_kv(one_chunk per KV range, f16 VKQ accumulator)"
                                        : (type == GGML_TYPE_F16 || type == GGML_TYPE_F32)
                                              ? "rows(one_chunk, f16 VKQ accumulator)"
                                              : "rows(one_chunk per head, Q->vec_dot_type, V->f32)";
            for (int nt : threads) {
                ggml_threadpool_params tpp = ggml_threadpool_params_default(nt);
                ggml_threadpool *tp = ggml_threadpool_new(&tpp);
                if (!tp) { fprintf(stderr, "llama-fa: ggml_threadpool_new(%d) failed\n", nt); return 1; }
                for (int with_sinks : sinks_opts) {
                    std::vector<ggml_cplan> plans(n_copies);
                    std::vector<std::vector<uint8_t>> work(n_copies);
                    for (int c = 0; c < n_copies; c++) {
                        plans[c] = ggml_graph_plan(copies[c].gf[with_sinks], nt, tp);
                        work[c].resize(plans[c].work_size + 64);
                        plans[c].work_data = work[c].data();
                    }
                    // correctness check on copy 0
                    if (ggml_graph_compute(copies[0].gf[with_sinks], &plans[0]) != GGML_STATUS_SUCCESS) {
                        fprintf(stderr, "llama-fa: graph compute failed\n"); return 1;
                    }
                    // out: [head_dim, n_head, n_tokens]
                    const float *o = (const float *) copies[0].out[with_sinks]->data;
                    double max_abs = 0, max_ref = 0;
                    for (int64_t i = 0; i < n_head * head_dim; i++) {
                        max_abs = std::max(max_abs, fabs(o[i] - ref[with_sinks][i]));
                        max_ref = std::max(max_ref, fabs(ref[with_sinks][i]));
                    }
                    for (const std::string &cache : caches) {
                        const int nc = cache == "cold" ? n_copies : 1;
                        std::vector<double> ms;
                        double other_cores = 0;
                        int attempt = 0;
                        for (;;) {
                            attempt++;
                            for (int w = 0; w < warmup; w++)
                                for (int c = 0; c < nc; c++) ggml_graph_compute(copies[c].gf[with_sinks], &plans[c]);
                            ms.clear();
                            const double busy0 = machine_busy_secs(), self0 = self_cpu_secs();
                            auto t_start = std::chrono::steady_clock::now();
                            for (int r = 0; r < max_reps; r++) {
                                const int c = r % nc;
                                auto t0 = std::chrono::steady_clock::now();
                                ggml_graph_compute(copies[c].gf[with_sinks], &plans[c]);
                                auto t1 = std::chrono::steady_clock::now();
                                ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
                                double el = std::chrono::duration<double>(t1 - t_start).count();
                                if ((int) ms.size() >= min_reps && el >= min_secs && (int) ms.size() % nc == 0) break;
                            }
                            const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
                            other_cores = std::max(0.0, (machine_busy_secs() - busy0) - (self_cpu_secs() - self0)) / wall;
                            if (other_cores <= max_other || attempt > retries) break;
                            fprintf(stderr, "llama-fa: other processes kept %.2f cores busy; retrying in %d s (%d/%d)\n",
                                    other_cores, retry_wait, attempt, retries);
                            ggml_threadpool_pause(tp);
                            sleep((unsigned) retry_wait);
                            ggml_threadpool_resume(tp);
                        }
                        std::vector<double> sorted = ms;
                        std::sort(sorted.begin(), sorted.end());
                        const size_t n = sorted.size();
                        const double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
                        double mean = 0; for (double x : ms) mean += x; mean /= n;
                        printf("{\"n_tokens\":1,\"n_head\":%lld,\"n_head_kv\":%lld,\"head_dim\":%lld,\"n_kv\":%lld,"
                               "\"type_kv\":\"%s\",\"threads\":%d,\"sinks\":%s,\"mask\":%s,\"cache\":\"%s\",\"copies\":%d,"
                               "\"reps\":%zu,\"median_ms\":%.4f,\"min_ms\":%.4f,\"mean_ms\":%.4f,\"kv_bytes\":%zu,"
                               "\"kv_gbps_at_median\":%.2f,\"other_cores_busy\":%.2f,\"attempts\":%d,\"max_abs_err\":%.3g,\"max_abs_ref\":%.3g,\"path\":\"%s\"}\n",
                               (long long) n_head, (long long) n_head_kv, (long long) head_dim, (long long) n_kv,
                               ggml_type_name(type), nt, with_sinks ? "true" : "false", use_mask ? "true" : "false",
                               cache.c_str(), nc, n, median, sorted[0], mean, kv_bytes,
                               kv_bytes / (median * 1e-3) / 1e9, other_cores, attempt, max_abs, max_ref, path);
                        fflush(stdout);
                        fprintf(stderr, "llama-fa: n_kv=%lld %s threads=%d sinks=%d %s: median %.3f ms (%zu reps)\n",
                                (long long) n_kv, ggml_type_name(type), nt, with_sinks, cache.c_str(), median, n);
                    }
                }
                ggml_threadpool_free(tp);
            }
            for (auto &cp : copies) ggml_free(cp.ctx);
        }
    }
    return 0;
}
