//! Token ids → text, from the checkpoint's own `tokenizer.json`: the answer is decoded once
//! from all generated ids with special tokens skipped (decoding byte-level pieces one by
//! one would give U+FFFD), and each token's raw bytes are recovered for OpenAI's
//! `logprobs[].bytes` field.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;

use crate::Error;

/// GPT-2's byte ↔ printable-character table, inverted: char → byte.
fn byte_level_inverse() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = std::collections::HashMap::new();
    let mut extra = 0u32;
    for b in 0u32..256 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map.insert(char::from_u32(c).expect("valid char"), b as u8);
    }
    map
}

pub struct TokenTable {
    tokenizer: Tokenizer,
    /// Raw bytes per id (ids past the tokenizer are padding rows: no bytes).
    bytes: Vec<Vec<u8>>,
    special: HashSet<u32>,
}

fn uses_byte_level(d: Option<&DecoderWrapper>) -> bool {
    match d {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(s)) => {
            serde_json::to_value(s).map(|v| v.to_string().contains("ByteLevel")).unwrap_or(false)
        }
        _ => false,
    }
}

impl TokenTable {
    pub fn load(path: &Path, eos: &[u32]) -> Result<TokenTable, Error> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| Error::Load(format!("{}: cannot read the tokenizer: {e}", path.display())))?;
        let byte_level = uses_byte_level(tokenizer.get_decoder());
        let inverse = byte_level_inverse();
        let added = tokenizer.get_added_tokens_decoder();
        let n = tokenizer.get_vocab_size(true);
        let mut bytes = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let b = if let Some(t) = added.get(&id) {
                t.content.as_bytes().to_vec()
            } else {
                match tokenizer.id_to_token(id) {
                    None => Vec::new(),
                    Some(s) => piece_bytes(&s, byte_level, &inverse),
                }
            };
            bytes.push(b);
        }
        let mut special: HashSet<u32> = added.iter().filter(|(_, t)| t.special).map(|(id, _)| *id).collect();
        special.extend(eos.iter().copied());
        Ok(TokenTable { tokenizer, bytes, special })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map(|b| b.as_slice()).unwrap_or(&[])
    }

    /// The token as text (lossy for partial UTF-8 sequences, as servers show them).
    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.bytes(id)).into_owned()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The answer text: all ids decoded at once, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        self.tokenizer.decode(ids, true).map_err(|e| Error::Input(format!("cannot decode the answer: {e}")))
    }

    /// `text` as token ids, without the tokenizer's own special tokens (the chat template
    /// writes every marker it wants), as `apply_chat_template` tokenizes.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| Error::Input(format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The tokenizer's size (added tokens included).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}

fn piece_bytes(s: &str, byte_level: bool, inverse: &std::collections::HashMap<char, u8>) -> Vec<u8> {
    if byte_level && let Some(b) = s.chars().map(|c| inverse.get(&c).copied()).collect::<Option<Vec<u8>>>() {
        return b;
    }
    // SentencePiece byte fallback `<0x0A>`, and `▁` for spaces.
    if s.len() == 6
        && s.starts_with("<0x")
        && s.ends_with('>')
        && let Ok(b) = u8::from_str_radix(&s[3..5], 16)
    {
        return vec![b];
    }
    s.replace('\u{2581}', " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_inverts_gpt2() {
        let inv = byte_level_inverse();
        assert_eq!(inv.len(), 256);
        assert_eq!(inv[&'Ġ'], b' ');
        assert_eq!(inv[&'Ċ'], b'\n');
        assert_eq!(inv[&'a'], b'a');
        assert_eq!(piece_bytes("Ġhello", true, &inv), b" hello");
        // "这" is three bytes, each printed as one GPT-2 character.
        assert_eq!(piece_bytes("è¿Ļ", true, &inv), "这".as_bytes());
        assert_eq!(piece_bytes("<0x0A>", false, &inv), b"\n");
        assert_eq!(piece_bytes("\u{2581}hi", false, &inv), b" hi");
    }
}
