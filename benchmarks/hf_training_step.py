"""GPU check of patternc.integrations.transformers: correctness against eager (fp32, bf16: prefill
logits, greedy generation with dynamic and static caches, gradients) and an end-to-end training
step (forward+backward of a 4-layer model, hidden 2048, 16 heads of 128, 8 KV heads) at a length,
patternc (`causal & window(1024)`) vs sdpa and flex_attention with Mistral's sliding window.

    OUT=results_dir python benchmarks/hf_training_step.py fp32 bf16 8192 32768
"""
import json
import os
import sys
import time
import warnings

import torch
import transformers
import triton
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

sys.path.insert(0, os.getcwd())
import patternc.integrations.transformers as hf  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
hf.register()
dev = os.environ.get("DEV", "cuda")
OUT = os.environ.get("OUT", "/tmp")
res = {"torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
       "gpu": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}
print(res, flush=True)


def build(ref_cfg, ours_cfg, pattern, dtype, impl="eager"):
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_config(ref_cfg, attn_implementation=impl).to(dev, dtype)
    hf.configure(ours_cfg, pattern=pattern)
    ours = AutoModelForCausalLM.from_config(ours_cfg, attn_implementation="patternc").to(dev, dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def gen(model, ids, **kw):
    o = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                       output_logits=True, return_dict_in_generate=True, pad_token_id=0, **kw)
    return o.sequences, torch.stack(o.logits).float()


def correctness(mode):
    small = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                 intermediate_size=512, vocab_size=512, max_position_embeddings=4096)
    dtype = torch.float32 if mode == "fp32" else torch.bfloat16
    ref, ours = build(MistralConfig(**small, sliding_window=64), LlamaConfig(**small), "causal & window(64)", dtype)
    ids = torch.randint(1, 512, (2, 300), device=dev, generator=torch.Generator(dev).manual_seed(1))
    r = {}
    with torch.no_grad():
        a, b = ref.eval()(ids).logits.float(), ours.eval()(ids).logits.float()
    r["prefill_logits_maxdiff"] = (a - b).abs().max().item()
    r["logit_scale"] = a.abs().max().item()
    for cache in ("dynamic", "static"):
        kw = {} if cache == "dynamic" else {"cache_implementation": "static"}
        sa, la = gen(ref, ids, **kw)
        sb, lb = gen(ours, ids, **kw)
        r[f"generate_{cache}_tokens_equal"] = (sa == sb).float().mean().item()
        r[f"generate_{cache}_logits_maxdiff"] = (la - lb).abs().max().item()
    for m in (ref, ours):
        m.train().zero_grad()
        m(ids, labels=ids).loss.backward()
    rel = [((p.grad.float() - q.grad.float()).norm() / q.grad.float().norm()).item()
           for p, q in zip(ours.parameters(), ref.parameters())]
    r["grad_rel_err_max"] = max(rel)
    print(mode, r, flush=True)
    return r


def step_time(model, ids, reps=5):
    model.train()
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model(ids, labels=ids).loss.backward()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def e2e(n, window=1024):
    big = dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=8, num_hidden_layers=4,
               intermediate_size=5632, vocab_size=32000, max_position_embeddings=n)
    ids = torch.randint(1, 32000, (1, n), device=dev, generator=torch.Generator(dev).manual_seed(2))
    r = {}
    variants = [("patternc", LlamaConfig(**big), "patternc"),
                ("sdpa", MistralConfig(**big, sliding_window=window), "sdpa"),
                ("flex_attention", MistralConfig(**big, sliding_window=window), "flex_attention"),
                ("sdpa_dense_causal", LlamaConfig(**big), "sdpa")]
    for name, cfg, impl in variants:
        try:
            torch.manual_seed(0)
            if impl == "patternc":
                hf.configure(cfg, pattern=f"causal & window({window})")
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation=impl).to(dev, torch.bfloat16)
            t0 = time.perf_counter()
            r[name] = step_time(model, ids)
            r[name + "_first_s"] = round(time.perf_counter() - t0, 1)
            del model
            torch.cuda.empty_cache()
        except Exception as e:  # report and go on
            r[name] = f"error: {type(e).__name__}: {str(e)[:300]}"
        print(n, name, r[name], flush=True)
        res[str(n)] = r
        with open(os.path.join(OUT, "hf_gpu.json"), "w") as f:
            json.dump(res, f, indent=1)
    return r


what = sys.argv[1:] or ["fp32", "bf16", "8192"]
for w in what:
    res[w] = correctness(w) if w in ("fp32", "bf16") else e2e(int(w))
    with open(os.path.join(OUT, "hf_gpu.json"), "w") as f:
        json.dump(res, f, indent=1)
print(json.dumps(res, indent=1))
