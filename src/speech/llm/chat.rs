//! Chat prompts: the templates the models were tuned on (ChatML for SmolLM2, Gemma's
//! `<start_of_turn>` turns), built as segments so that the turn markers are encoded as control
//! tokens while everything said inside a turn is plain text.

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

/// One segment of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Template markup: control tokens allowed.
    Markup(String),
    /// Content: never control tokens.
    Text(String),
    /// The opening of a user turn, left out when a user turn is already open (Gemma puts the
    /// system text at the start of the first user turn).
    OpenUser(String),
    /// Marks the user turn as left open by what came before (no text).
    LeaveUserOpen,
}

/// A prompt as segments: markup (control tokens allowed) and text (never control tokens).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompt {
    parts: Vec<Part>,
}

impl Prompt {
    pub fn new() -> Prompt {
        Prompt::default()
    }

    /// Template markup: `<|im_start|>` and the like become their single ids.
    pub fn markup(mut self, s: &str) -> Prompt {
        self.parts.push(Part::Markup(s.to_string()));
        self
    }

    /// Content: encoded as plain text, whatever it contains.
    pub fn text(mut self, s: &str) -> Prompt {
        self.parts.push(Part::Text(s.to_string()));
        self
    }

    fn open_user(mut self, s: &str) -> Prompt {
        self.parts.push(Part::OpenUser(s.to_string()));
        self
    }

    fn leave_user_open(mut self) -> Prompt {
        self.parts.push(Part::LeaveUserOpen);
        self
    }

    /// This prompt followed by another.
    pub fn then(mut self, other: Prompt) -> Prompt {
        self.parts.extend(other.parts);
        self
    }

    /// The segments as they are written after a start that left a user turn open or not:
    /// (text, control tokens allowed), and whether a user turn is open at the end.
    fn segments(&self, open_at_start: bool) -> (Vec<(&str, bool)>, bool) {
        let mut open = open_at_start;
        let mut out = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            match part {
                Part::Markup(s) => {
                    out.push((s.as_str(), true));
                    open = false;
                }
                Part::Text(s) => {
                    out.push((s.as_str(), false));
                    open = false;
                }
                Part::OpenUser(s) => {
                    if !open {
                        out.push((s.as_str(), true));
                    }
                    open = false;
                }
                Part::LeaveUserOpen => open = true,
            }
        }
        (out, open)
    }

    pub fn encode(&self, tokenizer: &Tokenizer) -> Vec<u32> {
        self.encode_after(tokenizer, false)
    }

    /// Encodes the prompt as the continuation of one that left a user turn open or not.
    pub(crate) fn encode_after(&self, tokenizer: &Tokenizer, open_at_start: bool) -> Vec<u32> {
        self.segments(open_at_start)
            .0
            .into_iter()
            .flat_map(|(s, special)| tokenizer.encode(s, special))
            .collect()
    }

    /// Does the prompt end inside a user turn that the next user turn continues?
    pub(crate) fn leaves_user_open(&self, open_at_start: bool) -> bool {
        self.segments(open_at_start).1
    }

    /// The prompt as one string (for display and tests).
    pub fn render(&self) -> String {
        self.segments(false).0.into_iter().map(|(s, _)| s).collect()
    }
}

/// How turns are marked up for the loaded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2).
    ChatMl,
    /// `<bos><start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n` (Gemma). Gemma has
    /// no system role: the system text opens the first user turn, followed by a blank line.
    Gemma,
}

impl ChatTemplate {
    /// The template of a model architecture (`general.architecture`).
    pub fn for_architecture(architecture: &str) -> ChatTemplate {
        if architecture.starts_with("gemma") {
            ChatTemplate::Gemma
        } else {
            ChatTemplate::ChatMl
        }
    }

    /// What every sequence starts with (Gemma's `<bos>`), before any prompt.
    pub fn sequence_start(self) -> Prompt {
        match self {
            ChatTemplate::ChatMl => Prompt::new(),
            ChatTemplate::Gemma => Prompt::new().markup("<bos>"),
        }
    }

    /// The text that ends an assistant turn.
    pub fn end_of_turn(self) -> &'static str {
        match self {
            ChatTemplate::ChatMl => "<|im_end|>",
            ChatTemplate::Gemma => "<end_of_turn>",
        }
    }

    /// A system turn: the fixed start of every conversation.
    pub fn system(self, text: &str) -> Prompt {
        match self {
            ChatTemplate::ChatMl => Prompt::new()
                .markup("<|im_start|>system\n")
                .text(text)
                .markup("<|im_end|>\n"),
            ChatTemplate::Gemma => Prompt::new()
                .markup("<start_of_turn>user\n")
                .text(text)
                .text("\n\n")
                .leave_user_open(),
        }
    }

    /// A user turn followed by the opening of the assistant's reply.
    pub fn user(self, text: &str) -> Prompt {
        match self {
            ChatTemplate::ChatMl => Prompt::new()
                .markup("<|im_start|>user\n")
                .text(text)
                .markup("<|im_end|>\n<|im_start|>assistant\n"),
            ChatTemplate::Gemma => Prompt::new()
                .open_user("<start_of_turn>user\n")
                .text(text)
                .markup("<end_of_turn>\n<start_of_turn>model\n"),
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
    fn gemma_layout_puts_the_system_text_in_the_first_user_turn() {
        let t = ChatTemplate::Gemma;
        assert_eq!(ChatTemplate::for_architecture("gemma3"), t);
        assert_eq!(
            ChatTemplate::for_architecture("llama"),
            ChatTemplate::ChatMl
        );
        let system = t.system("Be brief.");
        let user = t.user("Hi");
        assert_eq!(
            system.clone().then(user.clone()).render(),
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            user.render(),
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        // A prefix made of the system text leaves the turn open for the user's words.
        assert!(system.leaves_user_open(false));
        assert!(!user.leaves_user_open(true));
        let (after_system, _) = user.segments(true);
        assert_eq!(after_system[0], ("Hi", false));
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
