//! How generation behaves: seeds, stop sequences, limits, cancellation, bad parameters.

use std::ops::ControlFlow;

use skygate_inference::{Error, Finish, Llm, LlmOptions, Message, Sampling};

use crate::{model, GGUF};

fn load(test: &str) -> Option<Llm> {
    let path = model(GGUF, test)?;
    let opts = LlmOptions {
        context: Some(512),
        ..LlmOptions::default()
    };
    Some(Llm::load(&path, opts).unwrap())
}

fn ask(
    llm: &mut Llm,
    content: &str,
    s: &Sampling,
) -> (Result<skygate_inference::Completion, Error>, String, Vec<String>) {
    let messages = [Message {
        role: "user".into(),
        content: content.into(),
    }];
    let tokens = llm.tokenize(&llm.chat_prompt(&messages).unwrap());
    let (mut text, mut pieces) = (String::new(), Vec::new());
    let r = llm.generate(&tokens, s, &mut |p| {
        text.push_str(p.text);
        pieces.push(p.text.to_owned());
        ControlFlow::Continue(())
    });
    (r, text, pieces)
}

#[test]
fn sampling_seeds_stops_limits_and_cancellation() {
    let Some(mut llm) = load("sampling_seeds_stops_limits_and_cancellation") else {
        return;
    };
    // The same seed gives the same text; sampling at temperature 1 with another seed differs
    // somewhere over three tries (a fixed seed is not ignored).
    let s = |seed| Sampling {
        max_tokens: 24,
        temperature: 1.0,
        seed: Some(seed),
        ..Sampling::default()
    };
    let a = ask(&mut llm, "Write a short poem about the sea.", &s(7)).1;
    let b = ask(&mut llm, "Write a short poem about the sea.", &s(7)).1;
    assert_eq!(a, b);
    let others: Vec<String> = (8..11)
        .map(|seed| ask(&mut llm, "Write a short poem about the sea.", &s(seed)).1)
        .collect();
    assert!(others.iter().any(|o| *o != a), "three other seeds all gave {a:?}");

    // max_tokens ends with `length` after exactly that many tokens.
    let limited = Sampling {
        max_tokens: 5,
        temperature: 0.0,
        ..Sampling::default()
    };
    let (done, _, pieces) = ask(&mut llm, "Count from one to fifty in words.", &limited);
    let done = done.unwrap();
    assert_eq!(
        (done.finish, done.completion_tokens, pieces.len()),
        (Finish::Length, 5, 5)
    );

    // A stop sequence taken from the greedy answer cuts it there, and is never sent.
    let greedy = Sampling {
        max_tokens: 40,
        temperature: 0.0,
        ..Sampling::default()
    };
    let (_, full, _) = ask(&mut llm, "Count from one to fifty in words.", &greedy);
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() > 4, "{full:?}");
    let stop = words[3].to_owned();
    let cut = full.find(&stop).unwrap();
    let (done, text, _) = ask(
        &mut llm,
        "Count from one to fifty in words.",
        &Sampling {
            stop: vec![stop.clone()],
            ..greedy.clone()
        },
    );
    assert_eq!(done.unwrap().finish, Finish::Stop);
    assert_eq!(text, full[..cut], "stop {stop:?}");

    // Breaking from the callback stops before the next token.
    let messages = [Message {
        role: "user".into(),
        content: "Count from one to fifty in words.".into(),
    }];
    let tokens = llm.tokenize(&llm.chat_prompt(&messages).unwrap());
    let mut seen = 0;
    let done = llm
        .generate(&tokens, &greedy, &mut |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(
        (done.finish, done.completion_tokens, seen),
        (Finish::Cancelled, 3, 3)
    );
}

#[test]
fn bad_parameters_and_long_prompts_are_refused_by_name() {
    let Some(mut llm) = load("bad_parameters_and_long_prompts_are_refused_by_name") else {
        return;
    };
    let base = Sampling {
        max_tokens: 4,
        temperature: 0.0,
        ..Sampling::default()
    };
    let cases: [(&str, Sampling); 6] = [
        (
            "temperature",
            Sampling {
                temperature: 2.5,
                ..base.clone()
            },
        ),
        (
            "temperature",
            Sampling {
                temperature: f32::NAN,
                ..base.clone()
            },
        ),
        (
            "top_p",
            Sampling {
                top_p: 0.0,
                ..base.clone()
            },
        ),
        (
            "presence_penalty",
            Sampling {
                presence_penalty: -3.0,
                ..base.clone()
            },
        ),
        (
            "frequency_penalty",
            Sampling {
                frequency_penalty: 2.1,
                ..base.clone()
            },
        ),
        (
            "max_tokens",
            Sampling {
                max_tokens: 0,
                ..base.clone()
            },
        ),
    ];
    for (param, s) in cases {
        match ask(&mut llm, "hi", &s).0 {
            Err(Error::Invalid { param: p, .. }) => assert_eq!(p, param),
            other => panic!("{param}: {other:?}"),
        }
    }
    // Prompt and completion together past the window of 512.
    let long = "word ".repeat(600);
    assert!(matches!(
        ask(&mut llm, &long, &base).0,
        Err(Error::ContextLengthExceeded(_))
    ));
    let too_many = Sampling {
        max_tokens: 500,
        ..base.clone()
    };
    match ask(&mut llm, "hi", &too_many).0 {
        Err(Error::ContextLengthExceeded(m)) => assert!(m.contains("maximum context length is 512"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A default length the caller did not ask for is shortened to the room the prompt leaves.
    let fitted = Sampling {
        max_tokens: 500,
        fit_to_context: true,
        ..base.clone()
    };
    let (done, _, _) = ask(&mut llm, &"word ".repeat(300), &fitted);
    let done = done.unwrap();
    assert!(done.prompt_tokens + done.completion_tokens <= 512, "{done:?}");
    // Penalties run (and the model still answers) at their extremes.
    let penal = Sampling {
        presence_penalty: 2.0,
        frequency_penalty: -2.0,
        temperature: 0.7,
        top_p: 0.9,
        seed: Some(1),
        ..base
    };
    assert!(ask(&mut llm, "hi", &penal).0.is_ok());
}

/// A paced generation through the worker's line protocol: the engine answers `yield` after every
/// token but the last and decodes nothing more until it is granted a `step`; the text is the same as
/// unpaced, and a `cancel` in place of a step ends it.
#[test]
fn paced_generation_waits_for_each_step() {
    use std::io::{BufRead, BufReader, Write};
    use std::time::Duration;

    use skygate_inference::worker::{self, Reply, Request};

    let test = "paced_generation_waits_for_each_step";
    let Some(path) = model(GGUF, test) else {
        return;
    };
    let Some(mut llm) = load(test) else {
        return;
    };
    let greedy = Sampling {
        max_tokens: 6,
        temperature: 0.0,
        ..Sampling::default()
    };
    let (_, unpaced, _) = ask(&mut llm, "Name a colour.", &greedy);
    drop(llm);

    let (host_in, engine_in) = std::io::pipe().unwrap();
    let (host_out, engine_out) = std::io::pipe().unwrap();
    let engine = std::thread::spawn(move || {
        let load = move || {
            Llm::load(
                &path,
                LlmOptions {
                    context: Some(512),
                    ..LlmOptions::default()
                },
            )
        };
        worker::serve_llm(load, BufReader::new(host_in), engine_out)
    });
    let mut to_engine = engine_in;
    let (tx, replies) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(host_out).lines() {
            let reply: Reply = serde_json::from_str(&line.unwrap()).unwrap();
            if tx.send(reply).is_err() {
                return;
            }
        }
    });
    let mut send = |r: &Request| {
        let mut line = serde_json::to_vec(r).unwrap();
        line.push(b'\n');
        to_engine.write_all(&line).unwrap();
        to_engine.flush().unwrap();
    };
    let next = || replies.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(matches!(next(), Reply::Ready { .. }));
    let chat = |max_tokens| Request::Chat {
        messages: vec![Message {
            role: "user".into(),
            content: "Name a colour.".into(),
        }],
        sampling: Sampling {
            max_tokens,
            ..greedy.clone()
        },
        paced: true,
    };
    send(&chat(6));
    let (mut text, mut yields) = (String::new(), 0);
    let done = loop {
        match next() {
            Reply::Started { .. } => {}
            Reply::Text(t) => text.push_str(&t),
            Reply::Yield => {
                yields += 1;
                if yields == 1 {
                    // Nothing more comes until the step is granted.
                    assert!(replies.recv_timeout(Duration::from_millis(300)).is_err());
                }
                send(&Request::Step);
            }
            Reply::Done(c) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(text, unpaced);
    assert_eq!(done.completion_tokens, 6);
    assert_eq!(yields, 5, "a yield after every token but the last");

    // A cancel in place of a step ends the generation there.
    send(&chat(6));
    let done = loop {
        match next() {
            Reply::Yield => send(&Request::Cancel),
            Reply::Done(c) => break c,
            Reply::Started { .. } | Reply::Text(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((done.finish, done.completion_tokens), (Finish::Cancelled, 1));
    drop(to_engine);
    assert_eq!(engine.join().unwrap(), 0);
}

/// The KV cache is sized to each request, not to the window: a request longer than the smallest
/// context gets a larger one (and is answered), and the requests after it, and after the context is
/// given back, give the same tokens as before it.
#[test]
fn contexts_are_sized_to_each_request() {
    let Some(path) = model(GGUF, "contexts_are_sized_to_each_request") else {
        return;
    };
    let opts = LlmOptions {
        context: Some(4096),
        ..LlmOptions::default()
    };
    let mut llm = Llm::load(&path, opts).unwrap();
    assert_eq!(llm.context_length(), 4096);
    let greedy = |max_tokens| Sampling {
        max_tokens,
        temperature: 0.0,
        ..Sampling::default()
    };
    let (r, before, _) = ask(&mut llm, "Name three colours.", &greedy(24));
    assert_eq!(r.unwrap().completion_tokens, 24);
    // ~1,500 prompt tokens: past 512 and 1,024, within the window.
    let long = format!(
        "{} Summarise the text above.",
        "The keeper lit the lamp at dusk. ".repeat(180)
    );
    let (r, text, _) = ask(&mut llm, &long, &greedy(300));
    let done = r.unwrap();
    assert!(done.prompt_tokens > 1024, "{done:?}");
    assert!(done.completion_tokens > 0 && !text.is_empty(), "{done:?}");
    let (r, after, _) = ask(&mut llm, "Name three colours.", &greedy(24));
    assert_eq!(r.unwrap().completion_tokens, 24);
    assert_eq!(before, after);
    // An idle engine gives its context back; the next request makes one again.
    llm.release_context();
    let (r, again, _) = ask(&mut llm, "Name three colours.", &greedy(24));
    assert_eq!(r.unwrap().completion_tokens, 24);
    assert_eq!(before, again);
}
