//! skygate's engines against the reference implementations, through fixtures.

use std::ops::ControlFlow;

use skygate_inference::embed::{EmbedInput, Embedder, EmbedderOptions};
use skygate_inference::{Llm, LlmOptions, Message, Sampling};

use crate::{fixture, model, GGUF, MINILM};

/// Greedy generation equals llama.cpp's (llama-cpp-python) token for token, from the same chat
/// prompt rendered by the model's template and tokenized to the same ids.
#[test]
fn greedy_generation_equals_llama_cpp_token_for_token() {
    let Some(path) = model(GGUF, "greedy_generation_equals_llama_cpp_token_for_token") else {
        return;
    };
    let fx = fixture("smollm2_greedy.json");
    let opts = LlmOptions {
        context: Some(u32::try_from(fx["n_ctx"].as_u64().unwrap()).unwrap()),
        ..LlmOptions::default()
    };
    let mut llm = Llm::load(&path, opts).unwrap();
    let n_predict = u32::try_from(fx["n_predict"].as_u64().unwrap()).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 5, "the fixture has {} cases", cases.len());
    for (i, case) in cases.iter().enumerate() {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let prompt = llm.chat_prompt(&messages).unwrap();
        assert_eq!(
            prompt,
            case["prompt"].as_str().unwrap(),
            "case {i}: the chat template renders differently"
        );
        let tokens = llm.tokenize(&prompt);
        let want_prompt: Vec<i32> = serde_json::from_value(case["prompt_tokens"].clone()).unwrap();
        assert_eq!(tokens, want_prompt, "case {i}: the prompt tokenizes differently");
        let sampling = Sampling {
            max_tokens: n_predict,
            temperature: 0.0,
            ..Sampling::default()
        };
        let (mut got, mut text) = (Vec::new(), String::new());
        let done = llm
            .generate(&tokens, &sampling, &mut |p| {
                got.push(p.token);
                text.push_str(p.text);
                ControlFlow::Continue(())
            })
            .unwrap();
        let want: Vec<i32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        assert_eq!(got, want, "case {i}: greedy tokens differ from llama.cpp's");
        assert_eq!(done.completion_tokens as usize, want.len());
        assert_eq!(text, case["text"].as_str().unwrap(), "case {i}: the text differs");
    }
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// all-MiniLM-L6-v2 vectors match sentence-transformers' with cosine ≥ 0.9999, batched or one by one.
#[test]
fn embeddings_match_sentence_transformers() {
    let Some(dir) = model(MINILM, "embeddings_match_sentence_transformers") else {
        return;
    };
    let fx = fixture("minilm_embeddings.json");
    let sentences: Vec<String> = serde_json::from_value(fx["sentences"].clone()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(fx["embeddings"].clone()).unwrap();
    assert!(sentences.len() >= 20);
    let model = Embedder::load(&dir, EmbedderOptions::default()).unwrap();
    assert_eq!(model.dimensions(), want[0].len());
    let inputs: Vec<EmbedInput> = sentences.iter().cloned().map(EmbedInput::Text).collect();
    let tokens = model.tokenize(&inputs).unwrap();
    let batched = model.embed(&tokens).unwrap();
    let mut worst = 1.0f64;
    for (i, (got, want)) in batched.iter().zip(&want).enumerate() {
        let c = cosine(got, want);
        worst = worst.min(c);
        assert!(c >= 0.9999, "sentence {i}: cosine {c}");
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "sentence {i}: norm {norm}");
    }
    // Alone, each input gives the same vector as in a padded batch.
    let alone = model.embed(&tokens[..1]).unwrap();
    assert!(
        cosine(
            &alone[0],
            &batched[0].iter().map(|&x| f64::from(x)).collect::<Vec<_>>()
        ) > 0.99999
    );
    eprintln!(
        "embeddings: {} sentences, worst cosine {worst:.7}",
        sentences.len()
    );
}
