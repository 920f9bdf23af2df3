//! Engine speed, outside the gateway: `cargo bench -p skygate-inference --bench engines -- [MODELS]`
//! with `SKYGATE_TEST_MODELS` (or the argument) naming the folder `scripts/models.sh` fills.
//!
//! - `llama.cpp (llama-cpp-2)`: what skygate runs — prompt processing and decode tokens/s and time
//!   to first token on a 37-token chat prompt, medians of `ROUNDS` rounds;
//! - `candle quantized_llama`: the pure-Rust alternative on the same GGUF and the same prompt ids
//!   (the engine choice in BENCHMARKS.md);
//! - embeddings: sentences/s for batches of 32 with all-MiniLM-L6-v2.
//!
//! Threads: `THREADS` (default 2). `ONLY=llm` or `ONLY=embeddings` runs one part. Prints one line per figure; no criterion (each round loads
//! nothing, but a round is seconds long).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use skygate_inference::embed::{EmbedInput, Embedder, EmbedderOptions};
use skygate_inference::{Llm, LlmOptions, Message, Sampling};

const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MINILM: &str = "all-MiniLM-L6-v2";
const DECODE: u32 = 64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("SKYGATE_TEST_MODELS").map(PathBuf::from))
        .expect("give the models folder (scripts/models.sh) or set SKYGATE_TEST_MODELS");
    let threads: u16 = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(5);
    let only = std::env::var("ONLY").unwrap_or_default();
    if only != "embeddings" {
        bench_llm(&dir, threads, rounds);
    }
    if only != "llm" {
        bench_embeddings(&dir, threads, rounds);
    }
}

fn bench_llm(dir: &std::path::Path, threads: u16, rounds: usize) {
    let opts = LlmOptions {
        threads,
        context: Some(1024),
        ..LlmOptions::default()
    };
    let mut llm = Llm::load(&dir.join(GGUF), opts).unwrap();
    let messages = [
        Message {
            role: "system".into(),
            content: "You are a helpful assistant.".into(),
        },
        Message {
            role: "user".into(),
            content: "Write a short story about a lighthouse keeper.".into(),
        },
    ];
    let prompt = llm.tokenize(&llm.chat_prompt(&messages).unwrap());
    println!(
        "prompt: {} tokens; threads {threads}; {rounds} rounds; decode {DECODE} tokens",
        prompt.len()
    );
    let greedy = Sampling {
        max_tokens: DECODE,
        temperature: 0.0,
        ..Sampling::default()
    };
    // A long prompt for prompt processing: the chat prompt repeated to ~512 tokens.
    let long: Vec<i32> = prompt.iter().copied().cycle().take(512).collect();
    let one = Sampling {
        max_tokens: 1,
        ..greedy.clone()
    };
    let (mut ttft, mut decode, mut pp) = (Vec::new(), Vec::new(), Vec::new());
    let (mut c_ttft, mut c_decode, mut c_pp) = (Vec::new(), Vec::new(), Vec::new());
    let mut candle = CandleLlama::load(&dir.join(GGUF));
    for _ in 0..rounds {
        let t = Instant::now();
        let mut first = None;
        let mut n = 0u32;
        llm.generate(&prompt, &greedy, &mut |_| {
            n += 1;
            first.get_or_insert_with(|| t.elapsed());
            ControlFlow::Continue(())
        })
        .unwrap();
        let first = first.unwrap();
        ttft.push(first.as_secs_f64() * 1e3);
        decode.push(f64::from(n - 1) / (t.elapsed() - first).as_secs_f64());
        let t = Instant::now();
        llm.generate(&long, &one, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        pp.push(long.len() as f64 / t.elapsed().as_secs_f64());

        let (f, d) = candle.generate(&prompt, DECODE as usize);
        c_ttft.push(f * 1e3);
        c_decode.push(d);
        let t = Instant::now();
        candle.generate(&long, 1);
        c_pp.push(long.len() as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "llama.cpp (llama-cpp-2): prompt {:.1} tok/s, decode {:.1} tok/s, TTFT {:.1} ms",
        median(pp),
        median(decode),
        median(ttft)
    );
    println!(
        "candle quantized_llama:  prompt {:.1} tok/s, decode {:.1} tok/s, TTFT {:.1} ms",
        median(c_pp),
        median(c_decode),
        median(c_ttft)
    );
}

fn bench_embeddings(dir: &std::path::Path, threads: u16, rounds: usize) {
    let emb = Embedder::load(&dir.join(MINILM), EmbedderOptions { threads, batch: 32 }).unwrap();
    let sentences: Vec<EmbedInput> = (0..32)
        .map(|i| EmbedInput::Text(format!("Sentence number {i} talks about lighthouses, the sea and the keepers who tend the light at night.")))
        .collect();
    let tokens = emb.tokenize(&sentences).unwrap();
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        emb.embed(&tokens).unwrap();
        rates.push(32.0 / t.elapsed().as_secs_f64());
    }
    println!(
        "embeddings (candle BERT): {:.1} sentences/s for batches of 32",
        median(rates)
    );
}

/// candle's quantized llama on the same GGUF, fed the same token ids.
struct CandleLlama {
    model: ModelWeights,
}

impl CandleLlama {
    fn load(path: &std::path::Path) -> CandleLlama {
        let mut f = std::fs::File::open(path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        CandleLlama {
            model: ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap(),
        }
    }

    /// Greedy: (seconds to the first token, decode tokens/s after it).
    fn generate(&mut self, prompt: &[i32], n: usize) -> (f64, f64) {
        let t = Instant::now();
        let ids: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = self.model.forward(&input, 0).unwrap();
        let mut next = argmax(&logits);
        let first = t.elapsed();
        for i in 1..n {
            let input = Tensor::new(&[next], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let logits = self.model.forward(&input, prompt.len() + i - 1).unwrap();
            next = argmax(&logits);
        }
        let rest = (t.elapsed() - first).as_secs_f64();
        (
            first.as_secs_f64(),
            if n > 1 { (n - 1) as f64 / rest } else { 0.0 },
        )
    }
}

fn argmax(logits: &Tensor) -> u32 {
    let v: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}
