//! Parsing gpt-oss output as harmony messages, token by token (gpt-oss-spec.md §7.4).
//!
//! A message is `<|start|>{header}<|message|>{content}{end}` where the header is the role,
//! optionally ` to={recipient}`, `<|channel|>{channel}` and `<|constrain|>{content type}`, and
//! `{end}` is `<|end|>` (more messages follow), `<|return|>` (final answer done), `<|call|>` (tool
//! call) or `<|endoftext|>`. A generation prompt ends with `<|start|>assistant`, so the model's
//! output typically reads
//! `<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>…<|return|>`.
//!
//! [`HarmonyParser`] is a small state machine (between messages → header → content) fed one
//! token id and its bytes at a time; content arrives as [`Delta`]s so it can be streamed, and
//! [`HarmonyParser::finish`] returns every message. It never fails and never panics: malformed
//! output is kept rather than dropped —
//! - text outside any message becomes content of an implicit assistant message with no channel;
//! - a message without `<|channel|>` has `channel = None` (treated as the answer by
//!   [`HarmonyOutput::final_text`]);
//! - a message cut off by the end of generation (or by a new `<|start|>`) ends with
//!   [`MessageEnd::Truncated`];
//! - structural tokens where they make no sense (e.g. `<|channel|>` inside content) are kept as
//!   their literal text.
//!
//! Invariant: the concatenation of the [`Delta`] texts of a message equals its final `content`
//! (content bytes are decoded as UTF-8 incrementally, invalid sequences as U+FFFD).

use super::{StreamDecoder, Tokenizer};

/// The ids of the harmony special tokens in a vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HarmonyIds {
    pub start: u32,
    pub end: u32,
    pub message: u32,
    pub channel: u32,
    pub constrain: Option<u32>,
    pub return_: u32,
    pub call: Option<u32>,
    pub endoftext: Option<u32>,
}

impl HarmonyIds {
    /// The harmony tokens of `tok`'s vocabulary; `None` unless it has at least `<|start|>`,
    /// `<|end|>`, `<|message|>`, `<|channel|>` and `<|return|>` (the o200k_harmony vocabulary
    /// of gpt-oss has them all).
    pub fn from_tokenizer(tok: &Tokenizer) -> Option<HarmonyIds> {
        Some(HarmonyIds {
            start: tok.token_id("<|start|>")?,
            end: tok.token_id("<|end|>")?,
            message: tok.token_id("<|message|>")?,
            channel: tok.token_id("<|channel|>")?,
            constrain: tok.token_id("<|constrain|>"),
            return_: tok.token_id("<|return|>")?,
            call: tok.token_id("<|call|>"),
            endoftext: tok.token_id("<|endoftext|>"),
        })
    }

    /// The o200k_harmony ids (gpt-oss-spec.md §7.2).
    pub const O200K: HarmonyIds = HarmonyIds {
        start: 200_006,
        end: 200_007,
        message: 200_008,
        channel: 200_005,
        constrain: Some(200_003),
        return_: 200_002,
        call: Some(200_012),
        endoftext: Some(199_999),
    };

    fn end_of(&self, id: u32) -> Option<MessageEnd> {
        if id == self.end {
            Some(MessageEnd::End)
        } else if id == self.return_ {
            Some(MessageEnd::Return)
        } else if Some(id) == self.call {
            Some(MessageEnd::Call)
        } else if Some(id) == self.endoftext {
            Some(MessageEnd::EndOfText)
        } else {
            None
        }
    }
}

/// How a message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageEnd {
    /// `<|end|>`: more messages follow.
    End,
    /// `<|return|>`: the final answer is complete.
    Return,
    /// `<|call|>`: a tool call, the caller runs the tool.
    Call,
    /// `<|endoftext|>`.
    EndOfText,
    /// Cut off: generation stopped (length, context) or a new message started without an end.
    Truncated,
}

impl MessageEnd {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageEnd::End => "end",
            MessageEnd::Return => "return",
            MessageEnd::Call => "call",
            MessageEnd::EndOfText => "endoftext",
            MessageEnd::Truncated => "truncated",
        }
    }
}

/// One parsed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HarmonyMessage {
    /// `assistant`, `user`, `system`, `developer`, `functions.NAME`, … (as written by the model).
    pub role: String,
    /// `analysis`, `commentary`, `final`; `None` if the header had no `<|channel|>`.
    pub channel: Option<String>,
    /// ` to=…` of the header (tool calls: `functions.NAME`).
    pub recipient: Option<String>,
    /// `<|constrain|>…` of the header (e.g. `json`).
    pub content_type: Option<String>,
    pub content: String,
    pub end: MessageEnd,
}

impl HarmonyMessage {
    /// Part of the answer shown to the user: the `final` channel, or no channel at all.
    pub fn is_final(&self) -> bool {
        is_final_channel(self.channel.as_deref())
    }
}

fn is_final_channel(channel: Option<&str>) -> bool {
    matches!(channel, None | Some("final"))
}

/// New content of the message being generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta<'p> {
    /// The message's channel (`None`: no `<|channel|>` in its header).
    pub channel: Option<&'p str>,
    pub text: String,
}

impl Delta<'_> {
    /// See [`HarmonyMessage::is_final`].
    pub fn is_final(&self) -> bool {
        is_final_channel(self.channel)
    }
}

/// All messages of a generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HarmonyOutput {
    pub messages: Vec<HarmonyMessage>,
}

impl HarmonyOutput {
    /// The answer: content of the messages for which [`HarmonyMessage::is_final`] holds, joined.
    pub fn final_text(&self) -> String {
        self.channel_text(HarmonyMessage::is_final)
    }

    /// The chain of thought: content of the `analysis` messages, joined.
    pub fn reasoning(&self) -> String {
        self.channel_text(|m| m.channel.as_deref() == Some("analysis"))
    }

    fn channel_text(&self, pick: impl Fn(&HarmonyMessage) -> bool) -> String {
        let mut out = String::new();
        for m in self.messages.iter().filter(|m| pick(m)) {
            if !out.is_empty() && !m.content.is_empty() {
                out.push('\n');
            }
            out.push_str(&m.content);
        }
        out
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Between messages (before the first `<|start|>`, or after `<|end|>`).
    Between,
    /// After `<|start|>`: collecting the header (its text, special tokens written literally).
    Header(Vec<u8>),
    /// After `<|message|>`.
    Content,
    /// After `<|return|>`/`<|call|>`/`<|endoftext|>`: later tokens start new messages.
    Done,
}

/// Token-level harmony parser; see the module documentation.
#[derive(Debug)]
pub struct HarmonyParser {
    ids: HarmonyIds,
    state: State,
    /// The message whose content is being read (valid in `State::Content`).
    current: HarmonyMessage,
    decoder: StreamDecoder,
    messages: Vec<HarmonyMessage>,
}

impl HarmonyParser {
    pub fn new(ids: HarmonyIds) -> HarmonyParser {
        HarmonyParser {
            ids,
            state: State::Between,
            current: empty_message(),
            decoder: StreamDecoder::new(false),
            messages: Vec::new(),
        }
    }

    /// A parser positioned after `prompt`: the prompt's tail from its last `<|start|>` (normally
    /// `<|start|>assistant`) is fed, so the model's output continues that message's header.
    pub fn after_prompt(ids: HarmonyIds, prompt: &[u32], tok: &Tokenizer) -> HarmonyParser {
        let mut p = HarmonyParser::new(ids);
        if let Some(k) = prompt.iter().rposition(|&t| t == ids.start) {
            for &t in &prompt[k..] {
                let _ = p.push_token(tok, t);
            }
        }
        p
    }

    /// [`HarmonyParser::push`] with the token's bytes from `tok` (control tokens as their text).
    pub fn push_token(&mut self, tok: &Tokenizer, id: u32) -> Option<Delta<'_>> {
        self.push(id, tok.token_bytes(id))
    }

    /// Feed one token (`bytes`: its text, special tokens as their literal text). Returns the
    /// content that became available, if any.
    pub fn push(&mut self, id: u32, bytes: &[u8]) -> Option<Delta<'_>> {
        let ids = self.ids;
        match std::mem::replace(&mut self.state, State::Between) {
            State::Between | State::Done if id == ids.start => {
                self.state = State::Header(Vec::new());
                None
            }
            State::Between | State::Done => {
                if let Some(end) = ids.end_of(id) {
                    // An end with no message open: nothing to close.
                    self.state = if end == MessageEnd::End {
                        State::Between
                    } else {
                        State::Done
                    };
                    return None;
                }
                // Text outside a message: content of an implicit assistant message.
                self.current = empty_message();
                self.current.role = "assistant".into();
                self.state = State::Content;
                self.content(bytes)
            }
            State::Header(mut h) => {
                if id == ids.message {
                    self.current = parse_header(&h);
                    self.state = State::Content;
                } else if id == ids.start {
                    // A header that never got its <|message|>: keep it, empty and truncated.
                    self.close_header(&h, MessageEnd::Truncated);
                    self.state = State::Header(Vec::new());
                } else if let Some(end) = ids.end_of(id) {
                    self.close_header(&h, end);
                    self.state = after(end);
                } else {
                    h.extend_from_slice(bytes);
                    self.state = State::Header(h);
                }
                None
            }
            State::Content => {
                if let Some(end) = ids.end_of(id) {
                    self.state = after(end);
                    self.close(end)
                } else if id == ids.start {
                    self.state = State::Header(Vec::new());
                    self.close(MessageEnd::Truncated)
                } else {
                    self.state = State::Content;
                    self.content(bytes)
                }
            }
        }
    }

    /// End of generation: an open message is closed as [`MessageEnd::Truncated`]. Returns its
    /// last content (an incomplete UTF-8 tail as U+FFFD) and all messages.
    pub fn finish(mut self) -> (Option<String>, HarmonyOutput) {
        let last = match std::mem::replace(&mut self.state, State::Done) {
            State::Content => self
                .close(MessageEnd::Truncated)
                .map(|d| d.text)
                .filter(|t| !t.is_empty()),
            State::Header(h) => {
                self.close_header(&h, MessageEnd::Truncated);
                None
            }
            State::Between | State::Done => None,
        };
        (
            last,
            HarmonyOutput {
                messages: self.messages,
            },
        )
    }

    /// The messages completed so far.
    pub fn messages(&self) -> &[HarmonyMessage] {
        &self.messages
    }

    fn content(&mut self, bytes: &[u8]) -> Option<Delta<'_>> {
        let text = self.decoder.push_bytes(bytes);
        if text.is_empty() {
            return None;
        }
        self.current.content.push_str(&text);
        Some(Delta {
            channel: self.current.channel.as_deref(),
            text,
        })
    }

    /// Close the content message; returns the flushed tail as a delta (possibly empty text).
    fn close(&mut self, end: MessageEnd) -> Option<Delta<'_>> {
        let tail = self.decoder.finish();
        self.current.content.push_str(&tail);
        let mut m = std::mem::replace(&mut self.current, empty_message());
        m.end = end;
        self.messages.push(m);
        if tail.is_empty() {
            return None;
        }
        let last = self.messages.last()?;
        Some(Delta {
            channel: last.channel.as_deref(),
            text: tail,
        })
    }

    fn close_header(&mut self, header: &[u8], end: MessageEnd) {
        let mut m = parse_header(header);
        m.end = end;
        self.messages.push(m);
    }
}

fn after(end: MessageEnd) -> State {
    match end {
        MessageEnd::End | MessageEnd::Truncated => State::Between,
        _ => State::Done,
    }
}

fn empty_message() -> HarmonyMessage {
    HarmonyMessage {
        role: String::new(),
        channel: None,
        recipient: None,
        content_type: None,
        content: String::new(),
        end: MessageEnd::Truncated,
    }
}

/// Parse a header such as `assistant<|channel|>commentary to=functions.f <|constrain|>json`.
fn parse_header(h: &[u8]) -> HarmonyMessage {
    let text = String::from_utf8_lossy(h);
    let mut m = empty_message();
    // Split into segments at the special markers; the first segment holds the role.
    let mut rest: &str = &text;
    let mut field = "role";
    loop {
        let next = [("<|channel|>", "channel"), ("<|constrain|>", "constrain")]
            .iter()
            .filter_map(|&(marker, f)| rest.find(marker).map(|p| (p, marker.len(), f)))
            .min();
        let (seg, following) = match next {
            Some((p, n, f)) => (&rest[..p], Some((p + n, f))),
            None => (rest, None),
        };
        header_segment(&mut m, field, seg);
        match following {
            Some((skip, f)) => {
                rest = &rest[skip..];
                field = f;
            }
            None => break,
        }
    }
    if m.role.is_empty() {
        m.role = "assistant".into();
    }
    m
}

/// One header segment: `{value}[ to={recipient}]…`; the first word is the field's value.
fn header_segment(m: &mut HarmonyMessage, field: &str, seg: &str) {
    let mut words = seg.split_whitespace();
    let mut value = None;
    for w in words.by_ref() {
        if let Some(r) = w.strip_prefix("to=") {
            m.recipient = Some(r.to_string());
        } else if value.is_none() {
            value = Some(w.to_string());
        } else if let Some(v) = value.as_mut() {
            // Keep further words (e.g. "commentary json" without <|constrain|>) with the value.
            v.push(' ');
            v.push_str(w);
        }
    }
    let Some(v) = value else { return };
    match field {
        "role" => m.role = v,
        "channel" => m.channel = Some(v),
        _ => m.content_type = Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: HarmonyIds = HarmonyIds::O200K;
    const TEXT: u32 = 1;

    /// Feed a script: special tokens by name, everything else as one text token per item.
    fn run(parser: &mut HarmonyParser, script: &[&str]) -> Vec<(Option<String>, String)> {
        let mut deltas = Vec::new();
        for s in script {
            let id = match *s {
                "<|start|>" => IDS.start,
                "<|end|>" => IDS.end,
                "<|message|>" => IDS.message,
                "<|channel|>" => IDS.channel,
                "<|constrain|>" => 200_003,
                "<|return|>" => IDS.return_,
                "<|call|>" => 200_012,
                "<|endoftext|>" => 199_999,
                _ => TEXT,
            };
            if let Some(d) = parser.push(id, s.as_bytes()) {
                deltas.push((d.channel.map(str::to_string), d.text));
            }
        }
        deltas
    }

    fn after_prompt() -> HarmonyParser {
        let mut p = HarmonyParser::new(IDS);
        assert!(run(&mut p, &["<|start|>", "assistant"]).is_empty());
        p
    }

    #[test]
    fn analysis_then_final() {
        let mut p = after_prompt();
        let d = run(
            &mut p,
            &[
                "<|channel|>",
                "analysis",
                "<|message|>",
                "Simple",
                " math.",
                "<|end|>",
                "<|start|>",
                "assistant",
                "<|channel|>",
                "final",
                "<|message|>",
                "4",
                "<|return|>",
            ],
        );
        let a = Some("analysis".to_string());
        let f = Some("final".to_string());
        assert_eq!(
            d,
            [
                (a.clone(), "Simple".into()),
                (a, " math.".into()),
                (f, "4".into())
            ]
        );
        let (tail, out) = p.finish();
        assert_eq!(tail, None);
        assert_eq!(out.messages.len(), 2);
        assert_eq!(out.messages[0].end, MessageEnd::End);
        assert_eq!(out.messages[1].end, MessageEnd::Return);
        assert_eq!(out.messages[1].role, "assistant");
        assert_eq!(out.final_text(), "4");
        assert_eq!(out.reasoning(), "Simple math.");
    }

    #[test]
    fn cut_mid_message() {
        let mut p = after_prompt();
        run(
            &mut p,
            &["<|channel|>", "analysis", "<|message|>", "The user asks"],
        );
        let (_, out) = p.finish();
        assert_eq!(out.messages.len(), 1);
        assert_eq!(out.messages[0].end, MessageEnd::Truncated);
        assert_eq!(out.reasoning(), "The user asks");
        assert_eq!(out.final_text(), "");

        // Cut inside a header: the message is kept, empty.
        let mut p = after_prompt();
        run(&mut p, &["<|channel|>", "fin"]);
        let (_, out) = p.finish();
        assert_eq!(out.messages[0].channel.as_deref(), Some("fin"));
        assert_eq!(out.messages[0].end, MessageEnd::Truncated);
    }

    #[test]
    fn cut_inside_a_utf8_character() {
        let mut p = after_prompt();
        run(&mut p, &["<|channel|>", "final", "<|message|>"]);
        let euro = "€".as_bytes();
        assert!(p.push(TEXT, b"a").is_some());
        assert!(p.push(TEXT, &euro[..2]).is_none());
        let (tail, out) = p.finish();
        assert_eq!(tail.as_deref(), Some("\u{FFFD}"));
        assert_eq!(out.final_text(), "a\u{FFFD}");
    }

    #[test]
    fn missing_channel_is_the_answer() {
        let mut p = after_prompt();
        let d = run(&mut p, &["<|message|>", "Hi", "<|return|>"]);
        assert_eq!(d, [(None, "Hi".to_string())]);
        let (_, out) = p.finish();
        assert_eq!(out.messages[0].channel, None);
        assert!(out.messages[0].is_final());
        assert_eq!(out.final_text(), "Hi");
    }

    #[test]
    fn tool_call_on_commentary() {
        let mut p = after_prompt();
        run(
            &mut p,
            &[
                "<|channel|>",
                "analysis",
                "<|message|>",
                "Need weather.",
                "<|end|>",
                "<|start|>",
                "assistant",
                "<|channel|>",
                "commentary to=functions.get_weather ",
                "<|constrain|>",
                "json",
                "<|message|>",
                "{\"city\":\"Paris\"}",
                "<|call|>",
            ],
        );
        let (_, out) = p.finish();
        let call = &out.messages[1];
        assert_eq!(call.channel.as_deref(), Some("commentary"));
        assert_eq!(call.recipient.as_deref(), Some("functions.get_weather"));
        assert_eq!(call.content_type.as_deref(), Some("json"));
        assert_eq!(call.content, "{\"city\":\"Paris\"}");
        assert_eq!(call.end, MessageEnd::Call);
        assert!(!call.is_final());
        assert_eq!(out.final_text(), "");

        // Recipient in the role part of the header.
        let mut p = HarmonyParser::new(IDS);
        run(
            &mut p,
            &[
                "<|start|>",
                "assistant to=functions.f",
                "<|channel|>",
                "commentary",
                "<|message|>",
                "{}",
                "<|call|>",
            ],
        );
        let (_, out) = p.finish();
        assert_eq!(out.messages[0].role, "assistant");
        assert_eq!(out.messages[0].recipient.as_deref(), Some("functions.f"));
        assert_eq!(out.messages[0].channel.as_deref(), Some("commentary"));
    }

    #[test]
    fn malformed_sequences_are_kept() {
        // Text before any <|start|> (parser not primed), a stray <|channel|> inside content,
        // a new <|start|> without an end, text after <|end|>.
        let mut p = HarmonyParser::new(IDS);
        run(
            &mut p,
            &[
                "loose",
                "<|channel|>",
                "<|start|>",
                "assistant",
                "<|channel|>",
                "final",
                "<|message|>",
                "x",
                "<|end|>",
                "after",
                "<|endoftext|>",
                "<|return|>",
                "more",
            ],
        );
        let (_, out) = p.finish();
        let got: Vec<(&str, Option<&str>, &str, MessageEnd)> = out
            .messages
            .iter()
            .map(|m| {
                (
                    m.role.as_str(),
                    m.channel.as_deref(),
                    m.content.as_str(),
                    m.end,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("assistant", None, "loose<|channel|>", MessageEnd::Truncated),
                ("assistant", Some("final"), "x", MessageEnd::End),
                ("assistant", None, "after", MessageEnd::EndOfText),
                ("assistant", None, "more", MessageEnd::Truncated),
            ]
        );
        assert_eq!(out.final_text(), "loose<|channel|>\nx\nafter\nmore");
    }

    proptest::proptest! {
        /// Any token sequence: no panic, every message's deltas add up to its content, and each
        /// message but the last ends with a terminator or a truncating <|start|>.
        #[test]
        fn any_sequence_parses(seq in proptest::collection::vec(0usize..12, 0..60)) {
            const ITEMS: [&str; 12] = [
                "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>",
                "<|return|>", "<|call|>", "<|endoftext|>", "final", "analysis", " to=x", "é",
            ];
            let mut p = HarmonyParser::new(IDS);
            let mut per_msg: Vec<String> = vec![String::new()];
            let mut closed = 0;
            for &k in &seq {
                let d = run(&mut p, &[ITEMS[k]]);
                // Deltas belong to the message open before this token (closing tokens flush it).
                for (_, t) in d {
                    per_msg[closed].push_str(&t);
                }
                while p.messages().len() > closed {
                    closed += 1;
                    per_msg.push(String::new());
                }
            }
            let (tail, out) = p.finish();
            if let Some(t) = tail {
                per_msg[closed].push_str(&t);
            }
            let with_content: Vec<&String> = per_msg.iter().filter(|s| !s.is_empty()).collect();
            let contents: Vec<&String> =
                out.messages.iter().map(|m| &m.content).filter(|c| !c.is_empty()).collect();
            proptest::prop_assert_eq!(with_content, contents);
        }
    }

    #[test]
    fn header_only_messages_and_empty_input() {
        let (tail, out) = HarmonyParser::new(IDS).finish();
        assert_eq!((tail, out.messages.len()), (None, 0));
        let mut p = after_prompt();
        run(&mut p, &["<|channel|>", "final", "<|return|>"]);
        let (_, out) = p.finish();
        assert_eq!(out.messages[0].content, "");
        assert_eq!(out.messages[0].end, MessageEnd::Return);
        assert_eq!(parse_header(b"").role, "assistant");
        assert_eq!(parse_header(b"user<|channel|><|constrain|>").channel, None);
    }
}
