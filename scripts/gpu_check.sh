#!/usr/bin/env bash
# One pass over the CUDA paths on a GPU machine: versions, the paper-size tokenizer's bf16 throughput, the two
# benchmarks on CUDA, the whole quickstart (bf16 is what precision=auto picks on CUDA) and the shapes-tiny tokenizer
# stages at 5x their CPU step counts (how far the CPU configs are from their ceiling). Nothing here runs in CI.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default runs/gpu-check; prints a log and writes summaries there
#   GPU_CHECK="machine quickstart" bash scripts/gpu_check.sh    # only some sections
#
# It uses the machine's own python3 and packages (torch with CUDA); the checkout is installed without dependencies
# into /tmp/site (so `import vqrae` works). Wheels for anything missing (deepspeed, for the mfu section) can sit in
# .whl/ (installed there first).
set -uo pipefail
OUT=${1:-${OUT:-runs/gpu-check}}
RUN=${RUN:-/tmp/vqrae-gpu}
mkdir -p "$OUT" "$RUN"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . \
    || echo "could not install the checkout into /tmp/site"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
vqrae="python3 -m vqrae.cli"  # a word list, so that `timeout` can run it
step() { echo; echo "=== $1 ($(date +%T))"; }
want() { [[ " ${GPU_CHECK:-machine tokenizer quantizer generate mfu quickstart long} " == *" $1 "* ]]; }  # a subset
timed() { local t0=$SECONDS; "$@"; local rc=$?; echo "--- rc=$rc in $((SECONDS - t0)) s"; return $rc; }

if want machine; then
step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'| transformers', transformers.__version__, '| timm', timm.__version__, '|', torch.cuda.get_device_name())"

fi
if want tokenizer; then
step "paper-size tokenizer (SigLIP2-so400m/16 shape, 256 px, K=16384, e=1536, mirrored decoder), bf16"
timed timeout 150 python3 - <<'EOF' | tee "$OUT/tokenizer_throughput.txt"
import time, torch
from vqrae.tokenizer import VQRAE
so400m = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
          "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 256, "patch_size": 16}
vq = VQRAE.from_encoder("siglip", encoder_config=so400m, image_size=256, codebook_size=16384,
                        codebook_dim=1536).cuda()
n_enc = sum(p.numel() for p in vq.encoder.parameters()) / 1e6
n_all = sum(p.numel() for p in vq.parameters()) / 1e6
print(f"params: encoder {n_enc:.0f}M, total {n_all:.0f}M")
x = torch.rand(64, 3, 256, 256, device="cuda")

def bench(name, fn, batch, iters=5):
    for _ in range(2):
        fn()
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize(); dt = (time.perf_counter() - t) / iters
    print(f"{name:42s} {batch / dt:8.0f} img/s  peak {torch.cuda.max_memory_allocated() / 2**30:6.1f} GiB")

with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
    vq.eval()
    bench("encode (continuous features)", lambda: vq.encode(x), 64)
    bench("tokenize (features -> codes)", lambda: vq.tokenize(x), 64)
    codes = vq.tokenize(x)
    bench("decode (codes -> pixels)", lambda: vq.decode(codes), 64)
vq.train()
for stage, trainable in (("stage 1 train step (encoder frozen)", False), ("stage 2 train step (encoder trains)", True)):
    vq.set_encoder_trainable(trainable)
    opt = torch.optim.AdamW([p for p in vq.parameters() if p.requires_grad], lr=1e-4, fused=True)
    def step():
        with torch.autocast("cuda", torch.bfloat16):
            out = vq(x)
            loss = (out.reconstruction.float() - x).pow(2).mean() + out.quantizer_loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    bench(stage + ", batch 64", step, 64)
EOF

fi
if want quantizer; then
step "bench quantizer on CUDA (ours vs vector-quantize-pytorch SimVQ)"
timed timeout 120 $vqrae bench quantizer --device cuda --num-vectors 65536 --repeats 10 2>&1 | tee "$OUT/bench_quantizer.txt"

fi
if want generate; then
step "bench generate on CUDA (our sampler vs HF generate(guidance_scale))"
timed timeout 150 $vqrae bench generate --device cuda --hidden-size 1024 --layers 12 --heads 16 --codebook-size 16384 \
    --grid 16 --prompts 8 --repeats 3 2>&1 | tee "$OUT/bench_generate.txt"

fi
if want mfu; then
step "MFU: unified-gen on a Qwen3-0.6B-shaped LLM (random weights), DeepSpeed ZeRO-2, bf16, 1 GPU, 256 codes/image"
timed timeout 150 python3 - "$RUN/mfu-init" <<'EOF'
import sys
from transformers import Qwen3Config, Qwen3ForCausalLM
from vqrae.data.text_tokenizer import train_text_tokenizer
from vqrae.tokenizer import VQRAE
from vqrae.unified_model import UnifiedModel
# Qwen3-0.6B's shape (its config.json) with a small BPE vocabulary: the embedding is a lookup, the rest is the model.
words = [f"a photo of a {c} {s}" for c in ("red", "green", "blue") for s in ("circle", "square", "star")]
tok = train_text_tokenizer(words * 50, "/tmp/mfu-tok", vocab_size=300,
                           extra_special_tokens=("<|im_start|>", "<|im_end|>"), style="qwen2")
llm = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=1024, intermediate_size=3072,
                                   num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                   tie_word_embeddings=True, max_position_embeddings=4096))
so400m = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
          "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 256, "patch_size": 16}
vq = VQRAE.from_encoder("siglip", encoder_config=so400m, image_size=256, codebook_size=16384, codebook_dim=1536)
UnifiedModel.from_components(llm, tok, vq, template="chatml").save_pretrained(sys.argv[1])
EOF
timed timeout 420 python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m vqrae.cli train unified-gen \
    --config shapes-tiny/unified-gen init="$RUN/mfu-init" output_dir="$RUN/mfu-run" deepspeed=zero2 precision=bf16 \
    data="[{task: t2i, data: shapes, num: 4096}]" batch_size=32 max_steps=60 log_every=10 save_every=0 val_num=0 \
    max_length=512 \
    cache_dir="$RUN/mfu-cache" 2>&1 | grep -v "it/s\]" | tail -8
python3 - "$RUN/mfu-run" <<'EOF' | tee "$OUT/mfu.txt"
import json, os, sys
from vqrae.unified_model import UnifiedModel
run = sys.argv[1]
recs = [json.loads(line) for line in open(f"{run}/metrics.jsonl") if '"samples_per_s"' in line][1:]  # skip warm-up
m = UnifiedModel.from_pretrained(f"{run}/final")
cfg = m.llm.config
n = sum(p.numel() for name, p in m.llm.named_parameters() if "embed_tokens" not in name)
n += m.llm.get_output_embeddings().weight.numel()  # the head is a matmul even when tied to the embedding
seq = len(m.processor.t2i_prompt_ids("a photo of a red circle")) + m.config.num_image_tokens + 2
sps = sum(r["samples_per_s"] for r in recs) / len(recs)
tokens_s = sps * seq
flops_per_token = 6 * n + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq  # PaLM's
peak = float(os.environ.get("PEAK_TFLOPS", "989")) * 1e12  # H100/H200 dense bf16
print(f"unified-gen, ZeRO-2 bf16, 1 GPU: {sps:.1f} samples/s, {tokens_s:,.0f} tokens/s (~{seq} tokens/sample), "
      f"{n / 1e6:.0f}M matmul parameters, MFU {tokens_s * flops_per_token / peak:.1%} of {peak / 1e12:.0f} TFLOPS "
      "(goal >= 35%)")
EOF

fi
if want quickstart; then
step "quickstart on CUDA (the CPU configs unchanged)"
timed timeout 420 $vqrae quickstart --out "$RUN/qs" 2>&1 | grep -v "it/s\]" | tail -40
cp "$RUN/qs/quickstart.json" "$OUT/quickstart.json" 2>/dev/null

fi
if want long; then
step "shapes-tiny tokenizer at 5x steps (3000 steps each) from the quickstart encoder"
D=$RUN/qs/shapes64
timed timeout 420 $vqrae train tokenizer-stage1 --config configs/shapes-tiny/tokenizer-stage1.yaml \
    output_dir="$RUN/long-s1" encoder="$RUN/qs/encoder/final" data="$D/train" val_data="$D/val" \
    max_steps=3000 eval_every=1500 save_every=1500 2>&1 | grep -v "it/s\]" | tail -5
timed timeout 300 $vqrae train tokenizer-stage2 --config configs/shapes-tiny/tokenizer-stage2.yaml \
    output_dir="$RUN/long-s2" tokenizer="$RUN/long-s1/final" data="$D/train" val_data="$D/val" \
    max_steps=3000 eval_every=1500 save_every=1500 2>&1 | grep -v "it/s\]" | tail -5
for s in s1 s2; do
    timed $vqrae eval reconstruction --tokenizer "$RUN/long-$s/final" --data "$D/test" --out "$RUN/eval-long-$s" --device cuda \
        $([ $s = s2 ] && echo --reference-encoder "$RUN/long-s1/final") 2>&1 | tail -3
    cp "$RUN/eval-long-$s/summary.json" "$OUT/long_$s.json" 2>/dev/null
done
fi
step "done"
