// Writes every f32 tensor llama.cpp computes for one batch of token ids to DIR/NAME.bin (a
// name computed twice keeps its last value), and their order to stderr: the full-precision
// counterpart of `TORCHLESS_DUMP=1 TORCHLESS_DUMP_DIR=DIR torchless generate --prompt-ids …`,
// to find the first tensor where two runs part.
//
// Build against the reference build (bench/compare.sh fetches the source):
//   V=~/.cache/torchless/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp
//   B=~/.cache/torchless/llamacpp/build-avx2/bin
//   g++ -O1 -std=c++17 bench/llama_cpp_dump_tensors.cpp -I$V/include -I$V/ggml/include \
//       -L$B -lllama -lggml -lggml-base -Wl,-rpath,$B -o /tmp/llama_dump
//   /tmp/llama_dump MODEL.gguf IDS.json DIR        # IDS.json: [2, 1234, …]
#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

static std::string g_dir;

static bool on_tensor(struct ggml_tensor * t, bool ask, void *) {
    if (ask) {
        return t->type == GGML_TYPE_F32;
    }
    std::vector<float> buf(ggml_nelements(t));
    ggml_backend_tensor_get(t, buf.data(), 0, ggml_nbytes(t));
    std::string path = g_dir + "/" + t->name + ".bin";
    if (FILE * f = fopen(path.c_str(), "wb")) {
        fwrite(buf.data(), sizeof(float), buf.size(), f);
        fclose(f);
    }
    fprintf(stderr, "%s [%lld %lld %lld %lld]\n", t->name, (long long) t->ne[0], (long long) t->ne[1],
            (long long) t->ne[2], (long long) t->ne[3]);
    return true;
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf IDS.json DIR\n", argv[0]);
        return 2;
    }
    g_dir = argv[3];
    std::vector<llama_token> ids;
    {
        std::ifstream in(argv[2]);
        char c;
        int x;
        in >> c;  // '['
        while (in >> x) {
            ids.push_back(x);
            in >> c;  // ',' or ']'
        }
    }
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        return 1;
    }
    auto cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = (uint32_t) ((ids.size() + 255) / 256 * 256);
    cp.n_threads = cp.n_threads_batch = 2;
    cp.cb_eval = on_tensor;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cp);
    int rc = llama_decode(ctx, llama_batch_get_one(ids.data(), (int32_t) ids.size()));
    fprintf(stderr, "decoded %zu tokens: %d\n", ids.size(), rc);
    llama_free(ctx);
    llama_model_free(model);
    return rc;
}
