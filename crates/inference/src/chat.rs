//! Chat prompts: the model's own chat template (GGUF `tokenizer.chat_template`, a Jinja template as
//! Hugging Face writes them) rendered with `minijinja`, configured as `transformers` and
//! llama-cpp-python configure Jinja2 (`trim_blocks`, `lstrip_blocks`, Python string methods,
//! `raise_exception`).

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::Error;

/// One chat message, already validated by the caller (roles `system`, `user`, `assistant`; the API
/// maps `developer` to `system`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Prompts are user data: lengths only.
        f.debug_struct("Message")
            .field("role", &self.role)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// The template used when a model carries none: ChatML, which SmolLM2 and Qwen2 use.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

impl ChatTemplate {
    /// Compiles `source`. `bos` and `eos` are the model's token texts, passed to the template as
    /// `bos_token` and `eos_token`.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| Error::Load(format!("the model's chat template does not compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_owned(),
            eos: eos.to_owned(),
        })
    }

    /// The prompt for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> Result<String, Error> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Engine(format!("chat template: {e}")))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| match e.kind() {
            // The template refused these messages (e.g. roles out of order): the caller's input.
            ErrorKind::InvalidOperation => Error::invalid(
                "messages",
                format!(
                    "the model's chat template refused the messages: {}",
                    e.detail().unwrap_or("")
                ),
            ),
            _ => Error::Engine(format!("the chat template failed: {e}")),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn chatml_renders_with_the_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let p = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")])
            .unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work_as_in_jinja2() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip().upper() }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(t.render(&[msg("user", "  hi ")]).unwrap(), "HI");
        let err = t.render(&[msg("assistant", "x")]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Invalid {
                    param: "messages",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("first must be user"));
    }

    #[test]
    fn a_broken_template_is_a_load_error() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(Error::Load(_))
        ));
    }
}
