#!/usr/bin/env python3
"""The reference engines' speed, for BENCHMARKS.md: llama.cpp itself (through llama-cpp-python, built
with llama.cpp's default -march=native) and sentence-transformers (PyTorch on the CPU), on the same
models, prompt and threads as `cargo bench -p skygate-inference --bench engines` and
`scripts/load_inference.sh`. Run outside CI, in the venv of scripts/references-requirements.txt:

    /work/refs-venv/bin/python scripts/bench_references.py MODELS_DIR [ROUNDS]

MODELS_DIR is the models/ folder that scripts/models.sh fills. THREADS (default 2) sets the threads;
ONLY=llm or ONLY=embeddings runs one part.
Prints one line per figure, medians of ROUNDS rounds (default 5):
  llama.cpp: prompt processing tok/s (512 tokens), decode tok/s (64 greedy tokens after the 37-token chat
  prompt), time to first token (ms) and the process's RSS after loading;
  sentence-transformers: sentences/s for batches of 32.
"""

import os
import statistics
import sys
import time
from pathlib import Path

THREADS = int(os.environ.get("THREADS", "2"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ["HF_HUB_OFFLINE"] = "1"

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "all-MiniLM-L6-v2"
DECODE = 64


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bench_llama(models: Path, rounds: int) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(str(models / GGUF), n_ctx=1024, n_threads=THREADS, n_threads_batch=THREADS,
                          n_batch=512, verbose=False, seed=0)
    loaded_rss = rss_mb()
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a short story about a lighthouse keeper."},
    ]
    template = llm.metadata["tokenizer.chat_template"]
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    import numpy as np

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    prompt = env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                              bos_token="", eos_token="")
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        return int(logits.argmax())

    long = (tokens * (512 // len(tokens) + 1))[:512]
    ttft, decode, pp = [], [], []
    for _ in range(rounds):
        llm.reset()
        t = time.perf_counter()
        llm.eval(tokens)
        nxt = greedy()
        first = time.perf_counter() - t
        t2 = time.perf_counter()
        for _ in range(DECODE - 1):
            llm.eval([nxt])
            nxt = greedy()
        decode.append((DECODE - 1) / (time.perf_counter() - t2))
        ttft.append(first * 1e3)
        llm.reset()
        t = time.perf_counter()
        llm.eval(long)
        pp.append(len(long) / (time.perf_counter() - t))
    print(f"prompt: {len(tokens)} tokens; threads {THREADS}; {rounds} rounds; decode {DECODE} tokens")
    print(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}): prompt {statistics.median(pp):.1f} tok/s, "
          f"decode {statistics.median(decode):.1f} tok/s, TTFT {statistics.median(ttft):.1f} ms, "
          f"RSS after load {loaded_rss:.0f} MB")


def bench_st(models: Path, rounds: int) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(str(models / MINILM), device="cpu")
    sentences = [f"Sentence number {i} talks about lighthouses, the sea and the keepers who tend the light at night."
                 for i in range(32)]
    model.encode(sentences, batch_size=32)
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        model.encode(sentences, batch_size=32, normalize_embeddings=True)
        rates.append(32 / (time.perf_counter() - t))
    import sentence_transformers
    print(f"sentence-transformers {sentence_transformers.__version__} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads): {statistics.median(rates):.1f} sentences/s for batches of 32")


if __name__ == "__main__":
    models = Path(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    only = os.environ.get("ONLY", "")
    if only != "embeddings":
        bench_llama(models, rounds)
    if only != "llm":
        bench_st(models, rounds)
