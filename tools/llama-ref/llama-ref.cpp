// llama-ref: dump llama.cpp's reference logits / greedy generations for kvspool's comparison tests.
//
//   llama-ref logits   MODEL TOKENS_FILE TOP_K            > out.json   (teacher-forced, one batch)
//   llama-ref generate MODEL TOKENS_FILE TOP_K N_STEPS    > out.json   (greedy continuation)
//
// TOKENS_FILE holds token ids (a JSON array or whitespace/comma separated). Settings are fixed to
// the most exact ones llama.cpp has: F32 K and V cache, flash attention off, the whole prompt in a
// single batch (n_batch = n_ubatch = prompt length), one sequence. LLAMA_REF_SETTINGS=default
// selects llama.cpp's default context settings instead (F16 K/V, flash attention auto). Output: JSON on stdout with, per
// position, the TOP_K (id, logit) pairs sorted by logit and the top-1/top-2 margin.
#include "llama.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static std::vector<llama_token> read_tokens(const char *path) {
    std::ifstream f(path);
    if (!f) { fprintf(stderr, "llama-ref: cannot open %s\n", path); exit(1); }
    std::stringstream ss; ss << f.rdbuf();
    std::string s = ss.str();
    std::vector<llama_token> out;
    std::string cur;
    for (char c : s) {
        if (isdigit((unsigned char)c)) cur.push_back(c);
        else if (!cur.empty()) { out.push_back(std::stoi(cur)); cur.clear(); }
    }
    if (!cur.empty()) out.push_back(std::stoi(cur));
    return out;
}

static void print_top(const float *logits, int n_vocab, int k) {
    std::vector<int> idx(n_vocab);
    for (int i = 0; i < n_vocab; i++) idx[i] = i;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    printf("{\"top\":[");
    for (int j = 0; j < k; j++) printf("%s[%d,%.9g]", j ? "," : "", idx[j], logits[idx[j]]);
    printf("],\"margin\":%.9g}", logits[idx[0]] - logits[idx[1]]);
}

static void quiet_log(enum ggml_log_level level, const char *text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: llama-ref logits|generate MODEL TOKENS_FILE TOP_K [N_STEPS]\n");
        return 2;
    }
    std::string mode = argv[1];
    const char *model_path = argv[2];
    std::vector<llama_token> prompt = read_tokens(argv[3]);
    int top_k = atoi(argv[4]);
    int n_steps = argc > 5 ? atoi(argv[5]) : 0;
    if (prompt.empty() || top_k < 2 || (mode != "logits" && mode != "generate")) {
        fprintf(stderr, "llama-ref: bad arguments\n");
        return 2;
    }
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) { fprintf(stderr, "llama-ref: failed to load %s\n", model_path); return 1; }
    const llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);

    int n_prompt = (int)prompt.size();
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_prompt + n_steps + 8;
    cp.n_batch = n_prompt;
    cp.n_ubatch = n_prompt;
    cp.n_seq_max = 1;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    // LLAMA_REF_SETTINGS=default: llama.cpp's own defaults instead (F16 K/V, flash attention
    // auto) -- what a user of llama.cpp gets; used to compare default-mode accuracy.
    // LLAMA_REF_SETTINGS=q8kv: defaults but Q8_0 K/V (needs flash attention for V).
    if (const char *s = getenv("LLAMA_REF_SETTINGS")) {
        std::string v = s;
        if (v == "default" || v == "q8kv") {
            cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
            cp.type_k = cp.type_v = v == "q8kv" ? GGML_TYPE_Q8_0 : GGML_TYPE_F16;
            if (v == "q8kv") cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
        } else if (v != "exact") {
            fprintf(stderr, "llama-ref: LLAMA_REF_SETTINGS must be exact, default or q8kv\n");
            return 2;
        }
    }
    cp.n_threads = cp.n_threads_batch = 2;
    cp.no_perf = true;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "llama-ref: failed to create context\n"); return 1; }

    llama_batch batch = llama_batch_init(n_prompt, 0, 1);
    for (int i = 0; i < n_prompt; i++) {
        batch.token[i] = prompt[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = (mode == "logits" || i == n_prompt - 1) ? 1 : 0;
    }
    batch.n_tokens = n_prompt;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "llama-ref: decode failed\n"); return 1; }

    printf("{\"tool\":\"llama-ref\",\"llama_cpp\":\"b11434\",\"mode\":\"%s\",\"n_vocab\":%d,\"top_k\":%d,\"prompt\":[",
           mode.c_str(), n_vocab, top_k);
    for (int i = 0; i < n_prompt; i++) printf("%s%d", i ? "," : "", prompt[i]);
    printf("],\"positions\":[");
    if (mode == "logits") {
        for (int i = 0; i < n_prompt; i++) {
            if (i) printf(",");
            print_top(llama_get_logits_ith(ctx, i), n_vocab, top_k);
        }
        printf("]}\n");
    } else {
        std::vector<llama_token> gen;
        const float *logits = llama_get_logits_ith(ctx, n_prompt - 1);
        for (int s = 0; s < n_steps; s++) {
            if (s) printf(",");
            print_top(logits, n_vocab, top_k);
            llama_token best = 0;
            for (int v = 1; v < n_vocab; v++) if (logits[v] > logits[best]) best = v;
            gen.push_back(best);
            if (s + 1 == n_steps) break;
            llama_batch one = llama_batch_init(1, 0, 1);
            one.token[0] = best; one.pos[0] = n_prompt + s; one.n_seq_id[0] = 1; one.seq_id[0][0] = 0;
            one.logits[0] = 1; one.n_tokens = 1;
            if (llama_decode(ctx, one) != 0) { fprintf(stderr, "llama-ref: decode failed\n"); return 1; }
            llama_batch_free(one);
            logits = llama_get_logits_ith(ctx, 0);
        }
        printf("],\"generated\":[");
        for (size_t i = 0; i < gen.size(); i++) printf("%s%d", i ? "," : "", gen[i]);
        printf("]}\n");
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
