//! The caption pipeline of pycocoevalcap 1.2's `COCOEvalCap.evaluate`, without SPICE:
//! references and predictions are PTB-tokenized (two tokenizer runs, as in `eval.py`),
//! then BLEU-1..4, ROUGE-L and CIDEr-D score them in the caller's image order, which is
//! the reference's `coco.getImgIds()` / `params['image_id']` order and matters for the
//! numpy means. METEOR needs the Java jar: `mmloop-eval` runs it on `tokenized` and
//! `crate::meteor` aggregates its statistics. Pure computation, no I/O.

use crate::bleu::{BleuStats, bleu};
use crate::cider::cider_d;
use crate::ptb::tokenize_captions;
use crate::rouge::rouge_l;

/// One image: its reference captions and the single predicted caption.
#[derive(Clone, Debug)]
pub struct CaptionImage<S> {
    pub references: Vec<S>,
    pub prediction: S,
}

/// Captions after the PTB tokenizer and punctuation filter, per image in input order.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Tokenized {
    pub references: Vec<Vec<String>>,
    pub predictions: Vec<String>,
}

/// Per-image scores, keyed as pycocoevalcap's `imgToEval`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ImageScores {
    pub bleu: [f64; 4],
    pub rouge_l: f64,
    pub cider: f64,
}

/// Corpus scores (as `COCOEvalCap.eval`) and per-image scores, in input order.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CaptionScores {
    /// Bleu_1..Bleu_4.
    pub bleu: [f64; 4],
    pub bleu_stats: BleuStats,
    #[serde(rename = "ROUGE_L")]
    pub rouge_l: f64,
    #[serde(rename = "CIDEr")]
    pub cider: f64,
    pub per_image: Vec<ImageScores>,
}

/// PTB-tokenizes references and predictions as `COCOEvalCap.evaluate` does.
/// pycocoevalcap 1.2, Java 17 PTB tokenizer (CoreNLP 3.4.1).
pub fn tokenize<S: AsRef<str>>(images: &[CaptionImage<S>]) -> Tokenized {
    let all_refs: Vec<&str> = images.iter().flat_map(|im| im.references.iter().map(AsRef::as_ref)).collect();
    let mut flat = tokenize_captions(&all_refs).into_iter();
    let references = images.iter().map(|im| flat.by_ref().take(im.references.len()).collect()).collect();
    let preds: Vec<&str> = images.iter().map(|im| im.prediction.as_ref()).collect();
    Tokenized { references, predictions: tokenize_captions(&preds) }
}

/// BLEU, ROUGE-L and CIDEr-D on already tokenized captions (the scorers' own input).
/// pycocoevalcap 1.2.
pub fn score_tokenized(t: &Tokenized) -> CaptionScores {
    // CIDEr-D takes about as long as the other two together: one thread each.
    let (c, (b, r)) = std::thread::scope(|s| {
        let other = s.spawn(|| (bleu(&t.predictions, &t.references), rouge_l(&t.predictions, &t.references)));
        (cider_d(&t.predictions, &t.references), other.join().expect("scorer thread panicked"))
    });
    let per_image = (0..t.predictions.len())
        .map(|i| ImageScores { bleu: b.per_image[i], rouge_l: r.per_image[i], cider: c.per_image[i] })
        .collect();
    CaptionScores { bleu: b.corpus, bleu_stats: b.stats, rouge_l: r.corpus, cider: c.corpus, per_image }
}

/// Tokenizes, then scores: the whole pycocoevalcap 1.2 pipeline minus METEOR and SPICE.
pub fn evaluate<S: AsRef<str>>(images: &[CaptionImage<S>]) -> (Tokenized, CaptionScores) {
    let t = tokenize(images);
    let s = score_tokenized(&t);
    (t, s)
}
