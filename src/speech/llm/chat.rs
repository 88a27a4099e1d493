//! Chat prompts: the ChatML template SmolLM2 was tuned on, built as segments so that the turn
//! markers are encoded as control tokens while everything said inside a turn is plain text.

use super::tokenizer::Tokenizer;
use crate::agent::Script;

/// The system text for answers grounded in a script: the business, and its knowledge list as
/// the only facts the model may state. Fixed per script, so it is the natural cached prefix.
pub fn grounded_system(script: &Script) -> String {
    let mut s = format!(
        "You are {}, the phone assistant of {}. Answer the caller in one or two short, \
         friendly sentences, using only the facts below. If the facts do not answer the \
         question, say you will have someone call back.\n\nFacts:\n",
        script.business.assistant, script.business.name
    );
    for k in &script.knowledge {
        s.push_str("- ");
        s.push_str(&k.topic);
        s.push_str(": ");
        s.push_str(&k.answer);
        s.push('\n');
    }
    s
}

/// A prompt as segments: markup (control tokens allowed) and text (never control tokens).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompt {
    parts: Vec<(String, bool)>,
}

impl Prompt {
    pub fn new() -> Prompt {
        Prompt::default()
    }

    /// Template markup: `<|im_start|>` and the like become their single ids.
    pub fn markup(mut self, s: &str) -> Prompt {
        self.parts.push((s.to_string(), true));
        self
    }

    /// Content: encoded as plain text, whatever it contains.
    pub fn text(mut self, s: &str) -> Prompt {
        self.parts.push((s.to_string(), false));
        self
    }

    /// This prompt followed by another.
    pub fn then(mut self, other: Prompt) -> Prompt {
        self.parts.extend(other.parts);
        self
    }

    pub fn encode(&self, tokenizer: &Tokenizer) -> Vec<u32> {
        self.parts
            .iter()
            .flat_map(|(s, special)| tokenizer.encode(s, *special))
            .collect()
    }

    /// The prompt as one string (for display and tests).
    pub fn render(&self) -> String {
        self.parts.iter().map(|(s, _)| s.as_str()).collect()
    }
}

/// How turns are marked up for the loaded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2).
    ChatMl,
}

impl ChatTemplate {
    /// The text that ends an assistant turn.
    pub fn end_of_turn(self) -> &'static str {
        match self {
            ChatTemplate::ChatMl => "<|im_end|>",
        }
    }

    /// A system turn: the fixed start of every conversation.
    pub fn system(self, text: &str) -> Prompt {
        match self {
            ChatTemplate::ChatMl => Prompt::new()
                .markup("<|im_start|>system\n")
                .text(text)
                .markup("<|im_end|>\n"),
        }
    }

    /// A user turn followed by the opening of the assistant's reply.
    pub fn user(self, text: &str) -> Prompt {
        self.user_open().text(text).then(self.user_close())
    }

    /// The opening of a user turn (its text follows).
    pub fn user_open(self) -> Prompt {
        match self {
            ChatTemplate::ChatMl => Prompt::new().markup("<|im_start|>user\n"),
        }
    }

    /// The end of a user turn and the opening of the assistant's reply.
    pub fn user_close(self) -> Prompt {
        match self {
            ChatTemplate::ChatMl => Prompt::new().markup("<|im_end|>\n<|im_start|>assistant\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_layout() {
        let t = ChatTemplate::ChatMl;
        let p = t.system("Be brief.").then(t.user("Hi"));
        assert_eq!(
            p.render(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn grounded_system_lists_every_fact() {
        let script = Script::builtin("clinic").unwrap();
        let text = grounded_system(&script);
        assert!(text.contains(&script.business.name));
        for k in &script.knowledge {
            assert!(text.contains(&k.answer));
        }
    }
}
