//! The PTB tokenization that pycocoevalcap 1.2 applies to every caption before BLEU,
//! METEOR, ROUGE-L and CIDEr-D: `java -cp stanford-corenlp-3.4.1.jar
//! edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase` over all captions
//! joined by newlines, then `tokenizer/ptbtokenizer.py`'s `PUNCTUATIONS` filter.
//!
//! This is a reimplementation written from the tokenizer's observed behaviour (the jar is
//! the oracle of a differential test over `tests/fixtures/metrics/ptb_tokens.jsonl`, made
//! by `tools/metrics_reference/ptb_corpus.py`) and from reading how its lexer is
//! organised: a JFlex scanner where, at each position, the rule with the longest match
//! wins (trailing context counts towards the length) and ties go to the earlier rule.
//! Here each rule is a small pattern evaluated by a backtracking matcher that reports
//! every end position; plain ASCII words (alone, before common punctuation, or hyphenated)
//! take a fast path that gives the same tokens, the rule chosen anywhere else is
//! remembered by the characters the choice read (a trie: the next `can't` or `café` costs
//! a walk of its letters instead of the whole rule set), and large batches are split in
//! two threads at a line break.
//!
//! Java quirks kept on purpose: the lexer works on UTF-16 units, so characters outside
//! the BMP (emoji) are untokenizable and silently deleted unless a URL or e-mail rule
//! swallows them; `\r`, `\r\n`, U+000B, U+000C, U+2028 and U+2029 inside a caption end
//! a line for Java but are not replaced by pycocoevalcap, so every later caption of the
//! batch gets the previous one's line, exactly as in the reference; a caption's last
//! token can depend on the next caption's first character (`etc.` before an uppercase
//! letter becomes `etc. .`).
//!
//! Differential results (jar = pycocoevalcap 1.2's `stanford-corenlp-3.4.1.jar`, Java 17):
//! the committed corpus of 3,602 captions and 9 multi-caption batches matches exactly, and
//! so did three fresh corpora of 20,000, 50,000 and 30,000 generated captions (seeds 7, 11,
//! 13; see `tests/ptb_parity.rs` to rerun), 0 mismatches in 103,602 captions. Two more
//! (seeds 17 and 19, 30,000 captions each) found 3 mismatches, not fixed: a final sigma
//! before digits and a hyphen (`ΟΔΟΣ2014-01-02S`: the jar ends the word at the hyphen),
//! `{` inside a URL after a no-break space and U+FEFF (the jar ends the URL there), and
//! `A.` before `Their` (the jar splits the period off).
//!
//! Known differences, none seen in those corpora: letters and digits follow Unicode 16
//! (the jar's tables come from the Java 7 it was generated with, Unicode 6), so scripts
//! and characters assigned since then classify differently; rules that never fired in the
//! corpora (HTML entities other than the common ones, rare abbreviations in unusual
//! contexts) follow a reading of the scanner's rules rather than observed output.
//! This module never does I/O.

use std::cell::Cell;
use std::sync::LazyLock;

use rustc_hash::{FxHashMap, FxHashSet};
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

use crate::pystr;

/// Tokens that `ptbtokenizer.py` drops after tokenization. The bracket escapes are
/// upper case here but lower case in the jar's `-lowerCase` output, so they survive.
pub const PUNCTUATIONS: [&str; 17] =
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"];

/// Tokenizes captions exactly as pycocoevalcap 1.2's `PTBTokenizer.tokenize` does for the
/// captions of one call, in that order: one output string per caption, tokens separated
/// by single spaces. pycocoevalcap 1.2, Java 17 PTB tokenizer (CoreNLP 3.4.1).
pub fn tokenize_captions<S: AsRef<str>>(captions: &[S]) -> Vec<String> {
    let mut text = Vec::new();
    for (i, c) in captions.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.extend(c.as_ref().chars().map(|ch| if ch == '\n' { ' ' } else { ch }));
    }
    let mut lines = lex_parallel(&text);
    lines.truncate(captions.len());
    lines.iter().map(|l| filter_line(l)).collect()
}

/// Scans large inputs in two halves split at a line break, one per thread: no token
/// spans a line break, and each half still sees the other for trailing context.
fn lex_parallel(text: &[char]) -> Vec<String> {
    const MIN_SPLIT: usize = 1 << 16;
    let mid = text.len() / 2;
    let split = (text.len() >= MIN_SPLIT).then(|| text[mid..].iter().position(|&c| c == '\n')).flatten();
    let Some(p) = split else { return Lexer::new(text).run() };
    let b = mid + p + 1;
    let (mut first, second) = std::thread::scope(|s| {
        let h = s.spawn(|| Lexer::range(text, b, text.len()).run());
        let first = Lexer::range(text, 0, b).run();
        (first, h.join().expect("tokenizer thread panicked"))
    });
    // The first half ends with a line break, so its last (empty) line is the second's first.
    first.pop();
    first.extend(second);
    first
}

/// One caption tokenized on its own (a batch of one).
pub fn tokenize_caption(caption: &str) -> String {
    tokenize_captions(&[caption]).pop().unwrap_or_default()
}

/// The jar's raw output lines for `text` (no punctuation filter), one per line break
/// that Java sees. Useful to inspect what the filter removed.
pub fn jar_lines(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    Lexer::new(&chars).run()
}

/// `' '.join(w for w in line.rstrip().split(' ') if w not in PUNCTUATIONS)`.
fn filter_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut first = true;
    for w in line.trim_end_matches(pystr::is_space).split(' ') {
        if PUNCTUATIONS.contains(&w) {
            continue;
        }
        if !first {
            out.push(' ');
        }
        out.push_str(w);
        first = false;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Character classes. ASCII is tested first: almost every character of a caption is ASCII.

// The jar's scanner reads UTF-16 units: the two halves of a character outside the BMP
// are never letters, digits or symbols, only members of negated classes.
fn letter(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        c <= '\u{ffff}' && c.general_category_group() == GeneralCategoryGroup::Letter
    }
}

fn digit(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        c <= '\u{ffff}' && c.general_category() == GeneralCategory::DecimalNumber
    }
}

fn alnum(c: char) -> bool {
    letter(c) || digit(c)
}

fn word_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    // Besides letters, the scanner's word class lists soft hyphen, combining marks and a
    // few modifier symbols of particular scripts.
    letter(c)
        || matches!(c,
            '\u{ad}' | '\u{237}'..='\u{24f}' | '\u{2c2}'..='\u{2c5}' | '\u{2d2}'..='\u{2df}'
            | '\u{2e5}'..='\u{2ff}' | '\u{300}'..='\u{36f}' | '\u{370}'..='\u{37d}' | '\u{384}'
            | '\u{385}' | '\u{3cf}' | '\u{3f6}' | '\u{3fc}'..='\u{3ff}' | '\u{483}'..='\u{487}'
            | '\u{4cf}' | '\u{4f6}'..='\u{4ff}' | '\u{510}'..='\u{525}' | '\u{55a}'..='\u{55f}'
            | '\u{591}'..='\u{5bd}' | '\u{5bf}' | '\u{5c1}' | '\u{5c2}' | '\u{5c4}' | '\u{5c5}'
            | '\u{5c7}' | '\u{615}'..='\u{61a}' | '\u{63b}'..='\u{63f}' | '\u{64b}'..='\u{65e}'
            | '\u{670}' | '\u{6d6}'..='\u{6ef}' | '\u{6fa}'..='\u{6ff}' | '\u{70f}' | '\u{711}'
            | '\u{730}'..='\u{74f}' | '\u{750}'..='\u{77f}' | '\u{7a6}'..='\u{7b1}'
            | '\u{7ca}'..='\u{7f5}' | '\u{7fa}' | '\u{900}'..='\u{903}' | '\u{93c}'
            | '\u{93e}'..='\u{94e}' | '\u{951}'..='\u{955}' | '\u{962}'..='\u{963}'
            | '\u{981}'..='\u{983}' | '\u{9bc}'..='\u{9c4}' | '\u{9c7}' | '\u{9c8}'
            | '\u{9cb}'..='\u{9cd}' | '\u{9d7}' | '\u{9e2}' | '\u{9e3}' | '\u{a01}'..='\u{a03}'
            | '\u{a3c}' | '\u{a3e}'..='\u{a4f}' | '\u{a81}'..='\u{a83}' | '\u{abc}'..='\u{acf}'
            | '\u{b82}' | '\u{bbe}'..='\u{bc2}' | '\u{bc6}'..='\u{bc8}' | '\u{bca}'..='\u{bcd}'
            | '\u{c01}'..='\u{c03}' | '\u{c3e}'..='\u{c56}' | '\u{d3e}'..='\u{d44}'
            | '\u{d46}'..='\u{d48}' | '\u{e30}'..='\u{e3a}' | '\u{e47}'..='\u{e4e}'
            | '\u{eb1}'..='\u{ebc}' | '\u{ec8}'..='\u{ecd}')
}

fn space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{a0}' | '\u{2000}'..='\u{200a}' | '\u{3000}')
}

fn newline_char(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{2028}' | '\u{2029}' | '\u{b}' | '\u{c}' | '\u{85}')
}

fn space_nl(c: char) -> bool {
    space(c) || newline_char(c)
}

fn ascii_alpha(c: char) -> bool {
    c.is_ascii_alphabetic()
}

fn ascii_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn ascii_upper(c: char) -> bool {
    c.is_ascii_uppercase()
}

fn ascii_digit(c: char) -> bool {
    c.is_ascii_digit()
}

fn apos_char(c: char) -> bool {
    matches!(c, '\'' | '\u{92}' | '\u{2019}')
}

fn url_body(c: char) -> bool {
    !matches!(c, ' ' | '\t' | '\n' | '\u{c}' | '\r' | '"' | '<' | '>' | '|' | '(' | ')')
}

fn url_last(c: char) -> bool {
    url_body(c) && !matches!(c, '.' | '!' | '?' | '{' | '}' | ',' | '-')
}

fn www_label(c: char) -> bool {
    url_body(c) && !matches!(c, '.' | '!' | '?' | '{' | '}' | ',')
}

// The reference's class is written `[^ ... ,-_$]`: `,-_` is a range, so digits, upper case
// letters and most ASCII punctuation cannot appear in these domain labels.
fn domain_label(c: char) -> bool {
    url_body(c) && !matches!(c, '`' | '\'' | '.' | '!' | '?' | '{' | '}' | '$' | ','..='_')
}

fn email_char(c: char) -> bool {
    url_body(c) && !matches!(c, '\u{a0}' | '{' | '}')
}

fn email_label(c: char) -> bool {
    email_char(c) && c != '.'
}

fn asian_eye(c: char) -> bool {
    matches!(c, '-' | '^' | 'x' | '=' | '~' | '<' | '>' | '\'')
}

fn hyphen(c: char) -> bool {
    matches!(c, '-' | '_' | '\u{58a}' | '\u{2010}' | '\u{2011}')
}

fn in_sentence_punct(c: char) -> bool {
    matches!(c, ',' | ';' | ':' | '\u{3001}')
}

fn misc_symbol(c: char) -> bool {
    matches!(c,
        '+' | '%' | '&' | '~' | '^' | '|' | '\\' | '\u{a6}' | '\u{a7}' | '\u{a8}' | '\u{a9}'
        | '\u{ac}' | '\u{ae}' | '\u{af}' | '\u{b0}'..='\u{ba}' | '\u{d7}' | '\u{f7}' | '\u{387}'
        | '\u{5be}' | '\u{5c0}' | '\u{5c3}' | '\u{5c6}' | '\u{5f3}' | '\u{5f4}'
        | '\u{600}'..='\u{603}' | '\u{606}'..='\u{60a}' | '\u{60c}' | '\u{614}' | '\u{61b}'
        | '\u{61e}' | '\u{66a}' | '\u{66d}' | '\u{703}'..='\u{70d}' | '\u{7f6}'..='\u{7f8}'
        | '\u{964}' | '\u{965}' | '\u{e4f}' | '\u{1fbd}' | '\u{2016}' | '\u{2017}'
        | '\u{2020}'..='\u{2023}' | '\u{2030}'..='\u{2038}' | '\u{203b}' | '\u{203e}'..='\u{2042}'
        | '\u{2044}' | '\u{207a}'..='\u{207f}' | '\u{208a}'..='\u{208e}' | '\u{2100}'..='\u{214f}'
        | '\u{2190}'..='\u{21ff}' | '\u{2200}'..='\u{2bff}' | '\u{3012}' | '\u{30fb}'
        | '\u{ff01}'..='\u{ff0f}' | '\u{ff1a}'..='\u{ff20}' | '\u{ff3b}'..='\u{ff40}'
        | '\u{ff5b}'..='\u{ff65}')
}

// ---------------------------------------------------------------------------------------
// A tiny pattern language with "report every end" semantics, enough for longest match.

enum P {
    One(fn(char) -> bool),
    /// ASCII literal, matched case-insensitively (the scanner is `%caseless`).
    Lit(&'static str),
    /// Alternatives of ASCII literals, bucketed by lower-cased first byte.
    Lits(Box<[Vec<&'static str>; 128]>),
    Seq(Vec<P>),
    Alt(Vec<P>),
    /// Repetition `{min,max}` of a pattern.
    Rep(Box<P>, u32, u32),
    /// Repetition of a pattern that has at most one end per start, run as a loop.
    RepDet(Box<P>, u32, u32),
}

const INF: u32 = u32::MAX;

fn one(f: fn(char) -> bool) -> P {
    P::One(f)
}
fn lit(s: &'static str) -> P {
    P::Lit(s)
}
fn lits(ss: &[&'static str]) -> P {
    let mut buckets: Box<[Vec<&'static str>; 128]> = Box::new(std::array::from_fn(|_| Vec::new()));
    for s in ss {
        let b = s.as_bytes()[0];
        assert!(b.is_ascii(), "literal {s:?} must be ASCII");
        buckets[b.to_ascii_lowercase() as usize].push(s);
    }
    P::Lits(buckets)
}
fn seq(ps: Vec<P>) -> P {
    P::Seq(ps)
}
fn alt(ps: Vec<P>) -> P {
    P::Alt(ps)
}
fn rep(p: P, min: u32, max: u32) -> P {
    P::Rep(Box::new(p), min, max)
}
fn opt(p: P) -> P {
    rep(p, 0, 1)
}
fn star(p: P) -> P {
    rep(p, 0, INF)
}
fn plus(p: P) -> P {
    rep(p, 1, INF)
}

fn eq_caseless(c: char, b: u8) -> bool {
    c.is_ascii() && (c as u8).eq_ignore_ascii_case(&b)
}

/// The text as the matcher reads it: every read goes through `at`, which remembers how far
/// the matcher looked, so that a match can be remembered by the characters it depended on.
struct Text<'a> {
    t: &'a [char],
    /// One past the furthest position read; past `t.len()` once the end itself was seen.
    seen: Cell<usize>,
}

impl<'a> Text<'a> {
    fn new(t: &'a [char], i: usize) -> Self {
        Text { t, seen: Cell::new(i) }
    }

    fn at(&self, j: usize) -> Option<char> {
        self.seen.set(self.seen.get().max(j + 1));
        self.t.get(j).copied()
    }
}

impl P {
    fn ends(&self, t: &Text, i: usize, k: &mut dyn FnMut(usize)) {
        match self {
            P::One(f) => {
                if t.at(i).is_some_and(f) {
                    k(i + 1)
                }
            }
            P::Lit(s) => {
                let b = s.as_bytes();
                if b.iter().enumerate().all(|(n, &b)| t.at(i + n).is_some_and(|c| eq_caseless(c, b))) {
                    k(i + b.len())
                }
            }
            P::Lits(buckets) => {
                if let Some(c) = t.at(i).filter(char::is_ascii) {
                    for s in &buckets[c.to_ascii_lowercase() as usize] {
                        P::Lit(s).ends(t, i, k)
                    }
                }
            }
            P::Seq(ps) => seq_ends(ps, t, i, k),
            P::Alt(ps) => {
                for p in ps {
                    p.ends(t, i, k)
                }
            }
            P::Rep(p, min, max) => {
                if let P::One(f) = **p {
                    let limit = if *max == INF { usize::MAX } else { i + *max as usize };
                    let mut j = i;
                    while j < limit && t.at(j).is_some_and(f) {
                        j += 1;
                    }
                    let lo = i + *min as usize;
                    if j >= lo {
                        for e in lo..=j {
                            k(e)
                        }
                    }
                } else {
                    rep_ends(p, *min, *max, 0, t, i, k)
                }
            }
            P::RepDet(p, min, max) => {
                let (mut n, mut j) = (0u32, i);
                loop {
                    if n >= *min {
                        k(j)
                    }
                    if n == *max {
                        break;
                    }
                    let mut next = None;
                    p.ends(t, j, &mut |e| next = Some(e));
                    match next {
                        Some(e) if e > j => {
                            n += 1;
                            j = e;
                        }
                        _ => break,
                    }
                }
            }
        }
    }

    /// Whether a match can start with `c` (conservative: true when unsure).
    fn may_start(&self, c: char) -> bool {
        match self {
            P::One(f) => f(c),
            P::Lit(s) => s.bytes().next().is_none_or(|b| eq_caseless(c, b)),
            P::Lits(buckets) => c.is_ascii() && !buckets[c.to_ascii_lowercase() as usize].is_empty(),
            P::Seq(ps) => {
                for p in ps {
                    if p.may_start(c) {
                        return true;
                    }
                    if !p.nullable() {
                        return false;
                    }
                }
                true
            }
            P::Alt(ps) => ps.iter().any(|p| p.may_start(c)),
            P::Rep(p, min, _) | P::RepDet(p, min, _) => p.may_start(c) || *min == 0,
        }
    }

    fn nullable(&self) -> bool {
        match self {
            P::One(_) => false,
            P::Lit(s) => s.is_empty(),
            P::Lits(_) => false,
            P::Seq(ps) => ps.iter().all(P::nullable),
            P::Alt(ps) => ps.iter().any(P::nullable),
            P::Rep(p, min, _) | P::RepDet(p, min, _) => *min == 0 || p.nullable(),
        }
    }
}

fn seq_ends(ps: &[P], t: &Text, i: usize, k: &mut dyn FnMut(usize)) {
    match ps.split_first() {
        None => k(i),
        Some((p, rest)) => p.ends(t, i, &mut |e| seq_ends(rest, t, e, k)),
    }
}

fn rep_ends(p: &P, min: u32, max: u32, n: u32, t: &Text, i: usize, k: &mut dyn FnMut(usize)) {
    if n >= min {
        k(i)
    }
    if n < max {
        p.ends(t, i, &mut |e| {
            if e > i {
                rep_ends(p, min, max, n + 1, t, e, k)
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// The rules, in the scanner's priority order.

/// What a rule does with the text it matched.
#[derive(Clone, Copy, PartialEq)]
enum Act {
    Keep,
    /// Keep, without soft hyphens (U+00AD); a token of only soft hyphens becomes `-`.
    NoSoftHyphen,
    Text(&'static str),
    /// Keep the first n characters; the rest is scanned again.
    Prefix(usize),
    /// Keep the whole match but scan its final period again (`etc.` → `etc.` `.`).
    RepeatPeriod,
    Quote {
        left: bool,
    },
    /// Spaces inside the token become no-break spaces.
    Nbsp,
    Phone,
    Currency,
    Fraction,
    /// `&amp;` becomes `&`.
    Amp,
    Hyphens,
    /// `U.S.` before `The`: keep `U.S.` and scan the period again; `A.` before `The`:
    /// a letter, then the period.
    AcronymBeforeWord,
    /// Round brackets inside become `-LRB-` / `-RRB-`.
    Smiley,
    Ignore,
    Newline,
}

struct Rule {
    main: P,
    /// Trailing context: must match after `main`, counts for the longest match, is not
    /// part of the token.
    ctx: Option<P>,
    act: Act,
}

fn rule(main: P, act: Act) -> Rule {
    Rule { main, ctx: None, act }
}

fn rule_ctx(main: P, ctx: P, act: Act) -> Rule {
    Rule { main, ctx: Some(ctx), act }
}

/// `A` then the rest caseless: the reference writes these words as `[A]bout`.
fn cap_word(w: &'static str) -> P {
    let first = w.as_bytes()[0];
    let f: fn(char) -> bool = match first {
        b'A' => |c| c == 'A',
        b'D' => |c| c == 'D',
        b'P' => |c| c == 'P',
        b'B' => |c| c == 'B',
        b'E' => |c| c == 'E',
        b'H' => |c| c == 'H',
        b'I' => |c| c == 'I',
        b'L' => |c| c == 'L',
        b'M' => |c| c == 'M',
        b'N' => |c| c == 'N',
        b'O' => |c| c == 'O',
        b'S' => |c| c == 'S',
        b'T' => |c| c == 'T',
        b'W' => |c| c == 'W',
        b'Y' => |c| c == 'Y',
        b'R' => |c| c == 'R',
        _ => unreachable!("no such capital in the rules: {w}"),
    };
    seq(vec![one(f), lit(&w[1..])])
}

fn apos() -> P {
    alt(vec![one(apos_char), lit("&apos;")])
}

fn apos_etc() -> P {
    alt(vec![apos(), one(|c| matches!(c, '`' | '\u{91}' | '\u{2018}' | '\u{201b}'))])
}

/// A letter of `WORD`: a word character or an HTML entity for an accented vowel.
fn word_letter() -> P {
    let splet = seq(vec![
        lit("&"),
        one(|c| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'A' | 'E' | 'I' | 'O' | 'U')),
        lits(&["acute", "grave", "uml"]),
        lit(";"),
    ]);
    alt(vec![one(word_char), splet])
}

/// Letters, then letters or digits; `.`, `!` or `?` may join such runs (`e.g.x`, `hola!this`).
fn word() -> P {
    let run = || seq(vec![word_letter(), P::RepDet(Box::new(alt(vec![word_letter(), one(digit)])), 0, INF)]);
    seq(vec![run(), star(seq(vec![one(|c| matches!(c, '.' | '!' | '?')), run()]))])
}

fn redaux() -> P {
    seq(vec![apos(), alt(vec![one(|c| matches!(c, 'm' | 's' | 'd' | 'M' | 'S' | 'D')), lits(&["re", "ve", "ll"])])])
}

fn sredaux() -> P {
    seq(vec![lit("n"), apos_etc(), lit("t")])
}

/// A markup tag: `<b>`, `</b>`, `<br/>`, `<a href="x y">`, `<!-- x -->`, `<?xml?>`.
/// Attributes are bare names or quoted values; unquoted values make it plain text.
fn sgml() -> P {
    let name =
        || seq(vec![one(ascii_alpha), star(one(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-')))]);
    let spaces = || star(lit(" "));
    let quoted = alt(vec![
        seq(vec![lit("'"), star(one(|c| !matches!(c, '\'' | '\r' | '\n'))), lit("'")]),
        seq(vec![lit("\""), star(one(|c| !matches!(c, '"' | '\r' | '\n'))), lit("\"")]),
    ]);
    let attr = seq(vec![plus(lit(" ")), name(), opt(seq(vec![spaces(), lit("="), spaces(), quoted]))]);
    seq(vec![
        lit("<"),
        alt(vec![
            seq(vec![one(|c| c == '!' || c == '?'), star(one(|c| !matches!(c, '>' | '\r' | '\n')))]),
            seq(vec![opt(lit("/")), name(), star(attr), spaces(), opt(lit("/"))]),
        ]),
        lit(">"),
    ])
}

/// `name.ext` for common file extensions, before a space or sentence punctuation.
fn filename() -> P {
    let ext = lits(&[
        "bat", "bmp", "bz2", "c", "class", "cgi", "cpp", "dll", "doc", "docx", "exe", "gif", "gz", "h", "htm", "html",
        "jar", "java", "jpeg", "jpg", "mov", "mp3", "pdf", "php", "pl", "png", "ppt", "ps", "py", "sql", "tar", "txt",
        "wav", "x", "xml", "zip",
    ]);
    seq(vec![plus(one(alnum)), star(seq(vec![lit("."), plus(one(alnum))])), lit("."), ext])
}

fn acro() -> P {
    alt(vec![
        seq(vec![one(ascii_alpha), plus(seq(vec![lit("."), one(ascii_alpha)]))]),
        seq(vec![lits(&["Canada", "Sino", "Korean", "EU", "Japan", "non"]), lit("-U.S")]),
        seq(vec![lit("U.S.-"), lits(&["U.K", "U.S.S.R"])]),
    ])
}

fn acro_or_letter() -> P {
    alt(vec![one(ascii_alpha), acro()])
}

/// Abbreviations usually followed by a lower case word; before an upper case word (or
/// at the very end) their period is also a sentence end.
const ABBREV1_WORDS: &[&str] = &[
    // months, days
    "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec", "Mon", "Tue", "Tues", "Wed",
    "Thu", "Thurs", "Fri", // states
    "Ala", "Ariz", "Calif", "Colo", "Conn", "Ct", "Dak", "Fla", "Ga", "Ind", "Kan", "Kans", "Ky", "Md", "Mich", "Minn",
    "Mo", "Mont", "Neb", "Nev", "Okla", "Penn", "Tenn", "Va", "Vt", "Wis", "Wisc", "Wyo", // companies
    "Inc", "Co", "Cos", "Corp", "Pty", "Ptys", "Pte", "Ptes", "Ppty", "Pptys", "Ppte", "Pptes", "Ltd", "Plc", "Rt",
    "Bancorp", "Bhd", "Assn", "Univ", "Intl", "Sys", // numbers, after names, misc
    "tel", "est", "ext", "sq", "Jr", "Sr", "Bros", "Ed.D", "Ph.D", "Blvd", "Rd", "Esq", "etc", "al", "seq", "Bldg",
];
/// States written with a case-sensitive capital in the reference (`[A]rk`).
const ABBREV1_CAPPED: &[&str] = &["Az", "Ark", "Del", "Ill", "La", "Mass", "Miss", "Ore", "Pa", "Tex", "Wash"];
/// Abbreviations that count as such only before a number (`No. 5`, `pp. 12`).
const ABBREV3_WORDS: &[&str] = &["ca", "fig", "figs", "no", "nos", "prop", "art", "arts", "pp"];
/// Abbreviations usually followed by an upper case word (titles and the like).
const ABBREV4_WORDS: &[&str] = &[
    "Mr", "Mrs", "Ms", "Dr", "Drs", "Prof", "Profs", "Sen", "Sens", "Rep", "Reps", "Atty", "Attys", "Lt", "Col", "Gen",
    "Messrs", "Gov", "Govs", "Adm", "Rev", "Maj", "Sgt", "Cpl", "Pvt", "Capt", "St", "Ste", "Ave", "Pres", "Lieut",
    "Hon", "Brig", "Comdr", "Cmdr", "Pfc", "Spc", "Supt", "Supts", "Det", "Mt", "Ft", "Adj", "Adv", "Asst", "Assoc",
    "Ens", "Insp", "Mlle", "Mme", "Msgr", "Sfc", "vs", "Alex", "Wm", "Jos", "Cie", "a.k.a", "cf", "TREAS", "Ph",
    "Invt", "Elec", "Natl", "Mfg", "Mtg", "Dept",
];
const ABBREV4_CAPPED: &[&str] = &["Miss"];
/// Words the scanner splits (`can` `not`, `gon` `na`).
const ASSIMILATIONS: &[&str] = &["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"];

fn abbrev1() -> P {
    let mut words = vec![lits(ABBREV1_WORDS)];
    words.extend(ABBREV1_CAPPED.iter().map(|w| cap_word(w)));
    seq(vec![alt(words), lit(".")])
}

fn abbrev3() -> P {
    seq(vec![lits(ABBREV3_WORDS), lit(".")])
}

fn abbrev4() -> P {
    let mut alts = vec![one(ascii_alpha), lits(ABBREV4_WORDS)];
    alts.extend(ABBREV4_CAPPED.iter().map(|w| cap_word(w)));
    alts.push(acro());
    alt(alts)
}

/// Lower-cased letters-only words that some rule treats specially before a period.
fn special_before_period() -> FxHashSet<String> {
    [ABBREV1_WORDS, ABBREV1_CAPPED, ABBREV3_WORDS, ABBREV4_WORDS, ABBREV4_CAPPED, ASSIMILATIONS]
        .iter()
        .flat_map(|ws| ws.iter())
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

fn sentence_end() -> P {
    seq(vec![one(space_nl), alt(vec![one(space_nl), one(ascii_upper), sgml()])])
}

fn acronym_context() -> P {
    let words = [
        "About",
        "According",
        "Additionally",
        "After",
        "An",
        "A",
        "As",
        "At",
        "But",
        "Earlier",
        "He",
        "Her",
        "Here",
        "However",
        "If",
        "In",
        "It",
        "Last",
        "Many",
        "More",
        "Mr.",
        "Ms.",
        "Now",
        "Once",
        "One",
        "Other",
        "Our",
        "She",
        "Since",
        "So",
        "Some",
        "Such",
        "That",
        "The",
        "Then",
        "There",
        "These",
        "They",
        "This",
        "We",
        "When",
        "While",
        "What",
        "Yet",
        "You",
    ];
    let mut after: Vec<P> = words.iter().map(|w| cap_word(w)).collect();
    after.push(sgml());
    seq(vec![plus(one(space_nl)), alt(after), one(space_nl)])
}

fn number() -> P {
    let num = alt(vec![
        plus(one(digit)),
        seq(vec![
            star(one(digit)),
            plus(seq(vec![one(|c| matches!(c, '.' | ':' | ',' | '\u{ad}' | '\u{66b}' | '\u{66c}')), plus(one(digit))])),
        ]),
    ]);
    seq(vec![opt(one(|c| c == '-' || c == '+')), num])
}

fn phone() -> P {
    let sep = || one(|c| matches!(c, '-' | ' ' | '\u{a0}'));
    let d = |a, b| rep(one(ascii_digit), a, b);
    let plus_sign = || opt(seq(vec![lit("+"), opt(lit("+"))]));
    alt(vec![
        seq(vec![
            alt(vec![
                seq(vec![lit("("), d(2, 3), lit(")"), opt(one(|c| c == ' ' || c == '\u{a0}'))]),
                seq(vec![plus_sign(), opt(seq(vec![d(2, 4), sep()])), d(2, 4), sep()]),
            ]),
            d(3, 4),
            opt(sep()),
            d(3, 5),
        ]),
        seq(vec![opt(seq(vec![plus_sign(), d(2, 4), lit(".")])), d(2, 4), lit("."), d(3, 4), lit("."), d(3, 5)]),
    ])
}

fn thing() -> P {
    let lead = || opt(seq(vec![one(|c| matches!(c, 'd' | 'D' | 'o' | 'O' | 'l' | 'L')), apos_etc(), one(alnum)]));
    seq(vec![lead(), plus(one(alnum)), star(seq(vec![one(hyphen), lead(), plus(one(alnum))]))])
}

fn hthing() -> P {
    seq(vec![
        one(ascii_alnum),
        star(one(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ',' | '\u{ad}'))),
        plus(seq(vec![
            lit("-"),
            alt(vec![plus(one(|c| c.is_ascii_alphanumeric() || c == '\u{ad}')), seq(vec![acro(), lit(".")])]),
        ])),
    ])
}

fn thinga() -> P {
    seq(vec![
        plus(one(ascii_upper)),
        plus(seq(vec![alt(vec![one(|c| c == '+' || c == '&'), lit("&amp;")]), plus(one(ascii_upper))])),
    ])
}

fn with_period(p: P) -> P {
    seq(vec![p, lit(".")])
}

fn rules() -> Vec<Rule> {
    use Act::*;
    let in_sent = || one(in_sentence_punct);
    vec![
        rule(lits(ASSIMILATIONS), Prefix(3)),
        rule(seq(vec![one(|c| c == '\''), lits(&["tis", "twas"])]), Prefix(2)),
        rule(lits(&["c++", "c#", "f#"]), Keep),
        rule(sgml(), Nbsp),
        rule(
            alt(vec![
                seq(vec![lit("&"), lits(&["MD", "mdash", "ndash"]), lit(";")]),
                one(|c| matches!(c, '\u{96}' | '\u{97}' | '\u{2013}' | '\u{2014}' | '\u{2015}')),
            ]),
            Text("--"),
        ),
        rule(lit("&amp;"), Amp),
        rule(
            seq(vec![
                lit("&"),
                alt(vec![
                    lits(&["HT", "TL", "UR", "LR", "QC", "QL", "QR", "odq", "cdq"]),
                    seq(vec![lit("#"), plus(one(ascii_digit))]),
                ]),
                lit(";"),
            ]),
            Keep,
        ),
        rule_ctx(word(), redaux(), NoSoftHyphen),
        rule_ctx(
            seq(vec![
                star(one(|c| c.is_ascii_alphabetic() || c == '\u{ad}')),
                one(|c| c.is_ascii_alphabetic() && c != 'n' && c != 'N'),
                star(one(|c| c == '\u{ad}')),
            ]),
            sredaux(),
            NoSoftHyphen,
        ),
        rule(word(), NoSoftHyphen),
        rule(
            alt(vec![
                seq(vec![apos(), lit("n"), opt(apos())]),
                seq(vec![one(|c| matches!(c, 'l' | 'L' | 'd' | 'D' | 'j' | 'J')), apos()]),
                seq(vec![lits(&["Dunkin", "somethin", "ol"]), apos()]),
                seq(vec![apos(), lit("em")]),
                seq(vec![
                    one(|c| matches!(c, 'A'..='H' | 'J'..='X' | 'Z' | 'n')),
                    apos_etc(),
                    one(letter),
                    one(letter),
                    star(one(letter)),
                ]),
                seq(vec![apos(), one(|c| matches!(c, '2'..='9')), lit("0s")]),
                seq(vec![apos(), lit("til"), opt(lit("l"))]),
                seq(vec![
                    plus(one(letter)),
                    one(|c| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y' | 'A' | 'E' | 'I' | 'O' | 'U' | 'Y')),
                    apos_etc(),
                    one(|c| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'A'..='Z')),
                    star(one(letter)),
                ]),
                seq(vec![apos(), lit("cause")]),
                seq(vec![lit("cont'd"), opt(lit("."))]),
                lits(&["nor'easter", "c'mon", "e'er", "s'mores", "ev'ry", "li'l", "nat'l"]),
            ]),
            Keep,
        ),
        rule_ctx(seq(vec![lit("y"), apos()]), one(letter), Keep),
        rule(seq(vec![lit("http"), opt(lit("s")), lit("://"), plus(one(url_body)), one(url_last)]), Keep),
        rule(
            seq(vec![
                alt(vec![
                    seq(vec![
                        lit("www."),
                        plus(seq(vec![plus(one(www_label)), lit(".")])),
                        rep(one(ascii_alpha), 2, 4),
                    ]),
                    seq(vec![plus(seq(vec![plus(one(domain_label)), lit(".")])), lits(&["com", "net", "org", "edu"])]),
                ]),
                opt(seq(vec![lit("/"), plus(one(url_body)), one(url_last)])),
            ]),
            Keep,
        ),
        rule(
            seq(vec![
                opt(lits(&["<", "&lt;"])),
                one(ascii_alnum),
                star(one(email_char)),
                lit("@"),
                star(seq(vec![plus(one(email_label)), lit(".")])),
                plus(one(email_label)),
                opt(lits(&[">", "&gt;"])),
            ]),
            Keep,
        ),
        rule(
            alt(vec![
                seq(vec![
                    lit("@"),
                    one(|c| c.is_ascii_alphabetic() || c == '_'),
                    star(one(|c| c.is_ascii_alphanumeric() || c == '_')),
                ]),
                seq(vec![lit("#"), P::RepDet(Box::new(word_letter()), 1, INF)]),
            ]),
            Keep,
        ),
        rule_ctx(redaux(), one(|c| !c.is_ascii_alphabetic()), Quote { left: false }),
        rule(sredaux(), Quote { left: false }),
        rule(
            seq(vec![
                rep(one(digit), 1, 2),
                one(|c| c == '-' || c == '/'),
                rep(one(digit), 1, 2),
                one(|c| c == '-' || c == '/'),
                rep(one(digit), 2, 4),
            ]),
            Keep,
        ),
        rule(number(), NoSoftHyphen),
        rule(
            seq(vec![
                opt(one(|c| matches!(c, '\u{207a}' | '\u{207b}' | '\u{208a}' | '\u{208b}'))),
                alt(vec![
                    plus(one(|c| matches!(c, '\u{2070}' | '\u{b9}' | '\u{b2}' | '\u{b3}' | '\u{2074}'..='\u{2079}'))),
                    plus(one(|c| matches!(c, '\u{2080}'..='\u{2089}'))),
                ]),
            ]),
            Keep,
        ),
        rule(
            seq(vec![
                opt(seq(vec![rep(one(digit), 1, 4), one(|c| matches!(c, '-' | ' ' | '\u{a0}'))])),
                rep(one(digit), 1, 4),
                alt(vec![seq(vec![opt(lit("\\")), lit("/")]), one(|c| c == '\u{2044}')]),
                rep(one(digit), 1, 4),
            ]),
            Nbsp,
        ),
        rule(one(|c| matches!(c, '\u{bc}' | '\u{bd}' | '\u{be}' | '\u{2153}'..='\u{215e}')), Fraction),
        rule(
            alt(vec![
                seq(vec![lit("-"), lits(&["RRB", "LRB", "RCB", "LCB", "RSB", "LSB"]), lit("-")]),
                lits(&["C.D.s", "pro-", "anti-"]),
                seq(vec![lit("S"), lits(&["&", "&amp;"]), lits(&["P-500", "Ls"])]),
                seq(vec![lit("Cap"), apos(), lit("n")]),
                seq(vec![lit("c"), apos(), lit("est")]),
            ]),
            Amp,
        ),
        rule(
            seq(vec![
                plus(one(ascii_alnum)),
                rep(seq(vec![lit("-"), plus(one(ascii_alpha))]), 0, 2),
                rep(
                    seq(vec![
                        opt(lit("\\")),
                        lit("/"),
                        plus(one(ascii_alnum)),
                        rep(seq(vec![lit("-"), plus(one(ascii_alpha))]), 0, 2),
                    ]),
                    1,
                    2,
                ),
            ]),
            Keep,
        ),
        rule(alt(vec![seq(vec![star(one(ascii_upper)), lit("$")]), lit("#")]), Keep),
        rule(
            one(|c| {
                matches!(
                    c,
                    '\u{a2}'
                        | '\u{a3}'
                        | '\u{a4}'
                        | '\u{a5}'
                        | '\u{80}'
                        | '\u{20a0}'
                        | '\u{20ac}'
                        | '\u{60b}'
                        | '\u{e3f}'
                        | '\u{20a4}'
                        | '\u{ffe0}'
                        | '\u{ffe1}'
                        | '\u{ffe5}'
                        | '\u{ffe6}'
                )
            }),
            Currency,
        ),
        rule_ctx(with_period(acro_or_letter()), acronym_context(), AcronymBeforeWord),
        rule_ctx(abbrev1(), sentence_end(), RepeatPeriod),
        // Any two characters (newlines too) after it: not a sentence end.
        rule_ctx(abbrev1(), seq(vec![one(|_| true), one(|_| true)]), Keep),
        // At the very end of the input the period is repeated.
        rule(abbrev1(), RepeatPeriod),
        rule_ctx(abbrev3(), seq(vec![opt(one(space_nl)), one(digit)]), Keep),
        rule(with_period(abbrev4()), Keep),
        rule_ctx(abbrev4(), one(space), Keep),
        rule_ctx(acro(), one(space_nl), Keep),
        rule_ctx(seq(vec![apos(), one(ascii_digit), one(ascii_digit)]), one(space_nl), Keep),
        rule_ctx(filename(), one(|c| space_nl(c) || matches!(c, '.' | '?' | '!' | ',')), Keep),
        rule_ctx(with_period(word()), in_sent(), NoSoftHyphen),
        rule(phone(), Phone),
        rule_ctx(lits(&["\"", "&quot;"]), one(|c| c.is_ascii_alphanumeric() || c == '$'), Quote { left: true }),
        rule(lits(&["\"", "&quot;"]), Quote { left: false }),
        rule_ctx(
            seq(vec![
                opt(one(|c| c == '<' || c == '>')),
                one(|c| matches!(c, ':' | ';' | '=')),
                opt(one(|c| matches!(c, '-' | 'o' | '*' | '\''))),
                one(|c| matches!(c, '(' | ')' | 'D' | 'P' | 'd' | 'p' | 'O' | '\\' | '{' | '@' | '|' | '[' | ']')),
            ]),
            one(|c| !c.is_ascii_alphanumeric()),
            Smiley,
        ),
        rule(
            alt(vec![
                seq(vec![one(asian_eye), lit("_"), one(asian_eye)]),
                seq(vec![lit("("), one(asian_eye), opt(one(|c| c == '_' || c == '.')), one(asian_eye), lit(")")]),
                seq(vec![
                    lit("("),
                    one(|c| c != '-' && asian_eye(c)),
                    lit("-"),
                    one(|c| c == '`' || (c != '-' && asian_eye(c))),
                    lit(")"),
                ]),
            ]),
            Smiley,
        ),
        rule(lit("["), Text("-LSB-")),
        rule(lits(&["<", "&lt;"]), Text("<")),
        rule(lit("]"), Text("-RSB-")),
        rule(lits(&[">", "&gt;"]), Text(">")),
        rule(lit("{"), Text("-LCB-")),
        rule(lit("}"), Text("-RCB-")),
        rule(lit("("), Text("-LRB-")),
        rule(lit(")"), Text("-RRB-")),
        rule(plus(lit("-")), Hyphens),
        rule(
            alt(vec![
                rep(lit("."), 3, 5),
                seq(vec![rep(seq(vec![lit("."), one(|c| c == ' ' || c == '\u{a0}')]), 2, 4), lit(".")]),
                one(|c| c == '\u{85}' || c == '\u{2026}'),
            ]),
            Text("..."),
        ),
        rule(alt(vec![plus(lit("@")), plus(lit("#")), plus(lit("_"))]), Keep),
        rule(alt(vec![plus(lit("*")), rep(lit("\\*"), 1, 3)]), Keep),
        rule(in_sent(), Keep),
        rule(plus(one(|c| c == '?' || c == '!')), Keep),
        rule(
            one(|c| {
                matches!(
                    c,
                    '.' | '\u{a1}' | '\u{bf}' | '\u{37e}' | '\u{589}' | '\u{61f}' | '\u{6d4}' | '\u{700}'
                        ..='\u{702}' | '\u{7fa}' | '\u{3002}'
                )
            }),
            Keep,
        ),
        rule(lit("="), Keep),
        rule(lit("/"), Keep),
        rule_ctx(with_period(hthing()), in_sent(), NoSoftHyphen),
        rule(hthing(), NoSoftHyphen),
        rule_ctx(with_period(thing()), in_sent(), Keep),
        rule(thing(), Keep),
        rule_ctx(with_period(thinga()), in_sent(), Amp),
        rule(thinga(), Amp),
        rule_ctx(
            lit("'"),
            seq(vec![one(ascii_alpha), one(|c| !matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{a0}'))]),
            Quote { left: true },
        ),
        rule(redaux(), Quote { left: false }),
        rule(
            alt(vec![
                apos(),
                lit("''"),
                rep(
                    one(|c| {
                        matches!(
                            c,
                            '`' | '\u{2018}'
                                | '\u{2019}'
                                | '\u{201a}'
                                | '\u{201b}'
                                | '\u{201c}'
                                | '\u{201d}'
                                | '\u{91}'
                                | '\u{92}'
                                | '\u{93}'
                                | '\u{94}'
                                | '\u{201e}'
                                | '\u{201f}'
                                | '\u{2039}'
                                | '\u{203a}'
                                | '\u{ab}'
                                | '\u{bb}'
                        )
                    }),
                    1,
                    2,
                ),
            ]),
            Quote { left: false },
        ),
        rule(lits(&["<<", ">>"]), Keep),
        rule(one(misc_symbol), Keep),
        rule(
            alt(vec![
                plus(one(space)),
                one(|c| matches!(c, '\0' | '\u{7f}' | '\u{200b}' | '\u{200e}' | '\u{200f}' | '\u{feff}')),
            ]),
            Ignore,
        ),
        rule(alt(vec![lit("\r\n"), one(newline_char)]), Newline),
        rule(lit("&nbsp;"), Ignore),
    ]
}

struct Ruleset {
    rules: Vec<Rule>,
    /// See `plain_word`.
    special_before_period: FxHashSet<String>,
    /// For each ASCII first character, the rules that may start with it.
    ascii_candidates: Vec<Vec<u8>>,
    all: Vec<u8>,
}

impl Ruleset {
    /// The rule with the longest match at `i` (its trailing context counts), the earliest on
    /// ties, and the length of its token; `None` when no rule matches.
    fn longest(&self, t: &Text, i: usize) -> Option<Choice> {
        let c = t.at(i)?;
        let candidates = if c.is_ascii() { &self.ascii_candidates[c as usize] } else { &self.all };
        let (mut best_total, mut best) = (i, None);
        for &r in candidates {
            let rule = &self.rules[r as usize];
            let (mut total, mut end) = (i, i);
            match &rule.ctx {
                None => rule.main.ends(t, i, &mut |e| {
                    if e > total {
                        total = e;
                        end = e;
                    }
                }),
                Some(ctx) => rule.main.ends(t, i, &mut |e1| {
                    if e1 > i {
                        ctx.ends(t, e1, &mut |e2| {
                            if e2 > total || (e2 == total && e1 > end) {
                                total = e2;
                                end = e1;
                            }
                        })
                    }
                }),
            }
            if total > best_total {
                best_total = total;
                best = Some(Choice { len: (end - i) as u32, rule: r });
            }
        }
        best
    }
}

/// The rule chosen at a position and the length of its token.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Choice {
    len: u32,
    rule: u8,
}

/// Rules chosen at earlier positions, kept by the characters each choice depended on (the
/// token, and whatever the rules looked at past it): captions repeat their words, and trying
/// every rule costs microseconds a position. Choosing depends on nothing but those
/// characters, read from the position on, so a later position whose text begins with the
/// same ones gets the same choice.
struct Memo {
    /// Nodes kept at most (0: nothing is kept).
    capacity: usize,
    /// A trie of the characters read: (node, character or `END`) to node; 0 is the root.
    edges: FxHashMap<(u32, u32), u32>,
    /// By node: the choice made where exactly the node's characters were read.
    chosen: Vec<Option<Option<Choice>>>,
}

impl Memo {
    /// Stands for the end of the text, which the rules see as well.
    const END: u32 = 0x11_0000;
    /// Enough for the distinct tokens of a large corpus; past it, new choices are not kept.
    const MAX_NODES: usize = 1 << 20;

    fn new(capacity: usize) -> Self {
        Memo { capacity, edges: FxHashMap::default(), chosen: Vec::new() }
    }

    fn key(t: &[char], j: usize) -> u32 {
        t.get(j).map_or(Self::END, |&c| c as u32)
    }

    fn get(&self, t: &[char], i: usize) -> Option<Option<Choice>> {
        let mut node = 0;
        for j in i..=t.len() {
            node = *self.edges.get(&(node, Self::key(t, j)))?;
            if let Some(choice) = self.chosen[node as usize] {
                return Some(choice);
            }
        }
        None
    }

    /// Keeps `choice`, made at `i` having read the positions before `seen`.
    fn insert(&mut self, t: &[char], i: usize, seen: usize, choice: Option<Choice>) {
        if self.chosen.is_empty() {
            self.chosen.push(None);
        }
        if self.chosen.len() + (seen - i) > self.capacity {
            return;
        }
        let mut node = 0;
        for j in i..seen {
            let next = self.chosen.len() as u32;
            node = *self.edges.entry((node, Self::key(t, j))).or_insert(next);
            if node == next {
                self.chosen.push(None);
            }
        }
        self.chosen[node as usize] = Some(choice);
    }
}

static RULES: LazyLock<Ruleset> = LazyLock::new(|| {
    let rules = rules();
    assert!(rules.len() < 256);
    let ascii_candidates = (0u8..128)
        .map(|b| (0..rules.len() as u8).filter(|&r| rules[r as usize].main.may_start(b as char)).collect())
        .collect();
    let all = (0..rules.len() as u8).collect();
    Ruleset { rules, ascii_candidates, all, special_before_period: special_before_period() }
});

// ---------------------------------------------------------------------------------------
// The scanner and the `-preserveLines -lowerCase` writer.

struct Lexer<'a> {
    /// The whole input: rules may look past `end` (trailing context), never start there.
    t: &'a [char],
    start: usize,
    end: usize,
    lines: Vec<String>,
    line: String,
    line_start: bool,
    memo: Memo,
}

impl<'a> Lexer<'a> {
    fn new(t: &'a [char]) -> Self {
        Self::range(t, 0, t.len())
    }

    /// Scans `t[start..end]`; `start` must begin a line and `end` must end one (or the input).
    fn range(t: &'a [char], start: usize, end: usize) -> Self {
        Lexer {
            t,
            start,
            end,
            lines: Vec::new(),
            line: String::new(),
            line_start: true,
            memo: Memo::new(Memo::MAX_NODES),
        }
    }

    fn run(mut self) -> Vec<String> {
        let rs = &*RULES;
        let t = self.t;
        let mut i = self.start;
        while i < self.end {
            let c = t[i];
            if c == ' ' {
                i += 1;
                continue;
            }
            if c == '\n' {
                self.newline();
                i += 1;
                continue;
            }
            if let Some(j) = plain_word(t, i, &rs.special_before_period).or_else(|| hyphenated(t, i)) {
                self.emit_chars(&t[i..j]);
                i = j;
                continue;
            }
            i = self.slow(rs, i);
        }
        self.lines.push(std::mem::take(&mut self.line));
        self.lines
    }

    /// Longest match over all rules at `i`, earliest rule on ties; returns the next position.
    fn slow(&mut self, rs: &Ruleset, i: usize) -> usize {
        let t = self.t;
        let choice = match self.memo.get(t, i) {
            Some(choice) => choice,
            None => {
                let text = Text::new(t, i);
                let choice = rs.longest(&text, i);
                self.memo.insert(t, i, text.seen.get(), choice);
                choice
            }
        };
        let Some(Choice { len, rule: best_rule }) = choice else {
            // Untokenizable: the jar's default (`firstDelete`) drops it with a warning.
            return i + 1;
        };
        let best_end = i + len as usize;
        let best_rule = best_rule as usize;
        let tok = &t[i..best_end];
        match rs.rules[best_rule].act {
            Act::Keep => self.emit_chars(tok),
            Act::NoSoftHyphen => {
                let s: String = tok.iter().filter(|&&c| c != '\u{ad}').collect();
                self.emit(if s.is_empty() { "-" } else { &s });
            }
            Act::Text(s) => self.emit(s),
            Act::Prefix(n) => {
                self.emit_chars(&tok[..n]);
                return i + n;
            }
            Act::AcronymBeforeWord if tok.len() == 2 => {
                self.emit_chars(&tok[..1]);
                return i + 1;
            }
            Act::RepeatPeriod | Act::AcronymBeforeWord => {
                self.emit_chars(tok);
                return best_end - 1;
            }
            Act::Quote { left } => self.emit(&latex_quotes(tok, left)),
            Act::Nbsp => {
                let s: String = tok.iter().map(|&c| if c == ' ' { '\u{a0}' } else { c }).collect();
                self.emit(&s);
            }
            Act::Smiley => {
                let s: String = tok.iter().collect();
                self.emit(&s.replace('(', "-LRB-").replace(')', "-RRB-"));
            }
            Act::Phone => {
                let mut s = String::new();
                for &c in tok {
                    match c {
                        ' ' => s.push('\u{a0}'),
                        '(' => s.push_str("-LRB-"),
                        ')' => s.push_str("-RRB-"),
                        c => s.push(c),
                    }
                }
                self.emit(&s);
            }
            Act::Currency => self.emit(match tok[0] {
                '\u{a2}' => "cents",
                '\u{a3}' => "#",
                '\u{80}' | '\u{a4}' | '\u{20a0}' | '\u{20ac}' => "$",
                _ => return self.emit_and_next(tok, best_end),
            }),
            Act::Fraction => self.emit(match tok[0] {
                '\u{bc}' => "1/4",
                '\u{bd}' => "1/2",
                '\u{be}' => "3/4",
                '\u{2153}' => "1/3",
                '\u{2154}' => "2/3",
                _ => return self.emit_and_next(tok, best_end),
            }),
            Act::Amp => {
                let s: String = tok.iter().collect();
                self.emit(&replace_amp(&s));
            }
            Act::Hyphens => {
                if (3..=4).contains(&tok.len()) {
                    self.emit("--")
                } else {
                    self.emit_chars(tok)
                }
            }
            Act::Ignore => {}
            Act::Newline => self.newline(),
        }
        best_end
    }

    fn emit_and_next(&mut self, tok: &[char], next: usize) -> usize {
        self.emit_chars(tok);
        next
    }

    fn newline(&mut self) {
        self.lines.push(std::mem::take(&mut self.line));
        self.line_start = true;
    }

    fn sep(&mut self) {
        if !self.line_start {
            self.line.push(' ');
        }
        self.line_start = false;
    }

    fn emit(&mut self, s: &str) {
        self.sep();
        java_lower(s, &mut self.line);
    }

    fn emit_chars(&mut self, cs: &[char]) {
        self.sep();
        if cs.iter().all(char::is_ascii) {
            self.line.extend(cs.iter().map(|c| c.to_ascii_lowercase()));
        } else {
            let s: String = cs.iter().collect();
            java_lower(&s, &mut self.line);
        }
    }
}

/// The end of an ASCII word at `i` when no rule but `WORD` (or one giving the same token)
/// can match there: the word is followed by a space, a line end or the input's end, or by
/// one of `. , ; ! ? ) "` that no longer token could include. Everything else (and about
/// one word in twenty of real captions) goes through the full rule set.
fn plain_word(t: &[char], i: usize, special_before_period: &FxHashSet<String>) -> Option<usize> {
    let mut j = i;
    while j < t.len() && t[j].is_ascii_alphabetic() {
        j += 1;
    }
    let n = j - i;
    if n == 0 {
        return None;
    }
    let lower = || t[i..j].iter().map(|c| c.to_ascii_lowercase()).collect::<String>();
    if (n == 5 || n == 6) && ASSIMILATIONS.contains(&lower().as_str()) {
        return None;
    }
    let Some(&c) = t.get(j) else { return Some(j) };
    if c == ' ' || c == '\n' {
        return Some(j);
    }
    if !matches!(c, '.' | ',' | ';' | '!' | '?' | ')' | '"') {
        return None;
    }
    // `word.x`, `word!x` join into one WORD; `word.,` keeps its period; `abc.com`, file
    // names and e-mail addresses continue past the punctuation.
    let after_ok = |a: char| matches!(a, ' ' | '\n' | '.' | '!' | '?' | ')' | '"') || (a == ',' && c != '.');
    if t.get(j + 1).is_some_and(|&a| !after_ok(a)) {
        return None;
    }
    let run_end = t[j..].iter().position(|&c| c == ' ' || c == '\n').map_or(t.len(), |p| j + p);
    if t[j..run_end].iter().any(|&c| c == '@' || c == '-') {
        return None;
    }
    if c == '.' && (n == 1 || special_before_period.contains(&lower())) {
        return None;
    }
    Some(j)
}

/// The end of an ASCII hyphenated word (`snow-covered`, `t-shirt`) followed by a space,
/// a line end or the input's end: `HTHING`/`THING` take it whole and no rule reaches
/// further or rewrites it.
fn hyphenated(t: &[char], i: usize) -> Option<usize> {
    // A leading digit could start a phone number that runs on past the space.
    if !t[i].is_ascii_alphabetic() {
        return None;
    }
    let mut j = i;
    let mut parts = 0;
    loop {
        let k = j;
        while j < t.len() && t[j].is_ascii_alphanumeric() {
            j += 1;
        }
        if j == k {
            return None;
        }
        parts += 1;
        match t.get(j) {
            Some('-') => j += 1,
            None | Some(' ') | Some('\n') if parts > 1 => return Some(j),
            _ => return None,
        }
    }
}

/// Java's `String.toLowerCase(Locale.ENGLISH)`. It agrees with Rust's full mapping except
/// for the final-sigma rule: Java decides "end of word" with its own word break iterator,
/// which joins letters across `-`, `_`, `.` and `'` but not across `:`.
fn java_lower(s: &str, out: &mut String) {
    if !s.contains('\u{3a3}') {
        pystr::push_lower(s, out);
        return;
    }
    let cs: Vec<char> = s.chars().collect();
    let in_word = |c: char| {
        c.is_alphanumeric()
            || c.general_category_group() == GeneralCategoryGroup::Mark
            || matches!(c, '-' | '_' | '.' | '\'' | '\u{2019}')
    };
    let cased =
        |c: char| c.is_lowercase() || c.is_uppercase() || c.general_category() == GeneralCategory::TitlecaseLetter;
    for (k, &c) in cs.iter().enumerate() {
        if c != '\u{3a3}' {
            out.extend(c.to_lowercase());
            continue;
        }
        let before = cs[..k].iter().rev().take_while(|&&c| in_word(c)).any(|&c| cased(c));
        let after = cs[k + 1..].iter().take_while(|&&c| in_word(c)).any(|&c| cased(c));
        out.push(if before && !after { '\u{3c2}' } else { '\u{3c3}' });
    }
}

/// The `latexQuotes` normalisation: ASCII quotes by side, curly ones by shape.
fn latex_quotes(tok: &[char], left: bool) -> String {
    let s: String = tok.iter().collect();
    let s = if left {
        s.replace("&apos;", "`").replace("&APOS;", "`").replace('\'', "`").replace("&quot;", "``").replace('"', "``")
    } else {
        s.replace("&apos;", "'").replace("&quot;", "''").replace('"', "''")
    };
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{91}' | '\u{2018}' | '\u{201b}' | '\u{2039}' => out.push('`'),
            '\u{92}' | '\u{2019}' | '\u{203a}' => out.push('\''),
            '\u{93}' | '\u{201c}' | '\u{ab}' => out.push_str("``"),
            '\u{94}' | '\u{201d}' | '\u{bb}' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out
}

fn replace_amp(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        if rest[p..].len() >= 5 && rest[p..p + 5].eq_ignore_ascii_case("&amp;") {
            out.push('&');
            rest = &rest[p + 5..];
        } else {
            out.push('&');
            rest = &rest[p + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clitics_quotes_and_brackets() {
        assert_eq!(tokenize_caption("It's a dog's (big) \"toy\"."), "it 's a dog 's -lrb- big -rrb- toy");
        assert_eq!(tokenize_caption("I can't; they don't."), "i ca n't they do n't");
        assert_eq!(tokenize_caption("$5.00 x*y £3 … — end etc."), "$ 5.00 x * y # 3 end etc.");
    }

    /// Choices kept by the characters they read are the choices the rules make afresh, on
    /// the parity corpus and on texts that differ only past a token or at the text's end.
    #[test]
    fn remembered_choices_equal_fresh_ones() {
        let path = format!("{}/../../tests/fixtures/metrics/ptb_tokens.jsonl", env!("CARGO_MANIFEST_DIR"));
        let corpus = std::fs::read_to_string(&path).unwrap();
        let mut text = String::new();
        for line in corpus.lines().skip(1) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            text.push_str(v["in"].as_str().unwrap());
            text.push('\n');
        }
        text.push_str("etc.\nA etc.\na etc. U.S. The U.S. the No. 5 No. x cannot can't 1-800-555-1234 1-800 etc.");
        let chars: Vec<char> = text.chars().collect();
        let fresh = |capacity| {
            let mut lexer = Lexer::new(&chars);
            lexer.memo = Memo::new(capacity);
            lexer.run()
        };
        let remembered = fresh(Memo::MAX_NODES);
        assert_eq!(remembered, fresh(0));
        assert!(remembered.last().unwrap().ends_with("etc. ."), "{:?}", remembered.last());
    }

    #[test]
    fn empty_and_punctuation_only() {
        assert_eq!(tokenize_captions(&["", "...", "a"]), vec!["", "", "a"]);
    }

    #[test]
    fn line_breaks_java_sees_shift_later_captions() {
        assert_eq!(tokenize_captions(&["a\u{2028}b", "c", "d"]), vec!["a", "b", "c"]);
    }
}
