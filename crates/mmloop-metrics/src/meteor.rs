//! The pure part of METEOR 1.5 as pycocoevalcap 1.2 uses it (`meteor/meteor.py` driving
//! `meteor-1.5.jar - - -stdio -l en -norm`): the `SCORE ||| …` request lines, the 23
//! statistics the jar answers with, and the jar's `EVAL` arithmetic — `MeteorScorer.
//! computeMetrics` with the English defaults and `MeteorStats.addStats` for the corpus —
//! so that per-image and corpus scores can be computed (and re-aggregated, e.g. for a
//! bootstrap) from the statistics without the jar.
//!
//! The corpus score sums the statistics, skipping `chunks` of perfectly matched segments
//! (`addStats`), so it is not the mean of the per-image scores. The jar raises the
//! fragmentation to β with Java's `Math.pow`, which differs from glibc's `pow` by one ulp
//! for about 0.1% of arguments; scores computed here can therefore differ from the jar's
//! in the last bit (measured max |Δ| in `tests/caption_parity.rs`). Running the aligner
//! (stemmer, WordNet synonyms, paraphrase table) needs the jar: see `mmloop-eval`.
//! Pure computation, no I/O.

use thiserror::Error;

/// METEOR 1.5 parameters for `-l en` with the default task: α, β, γ, δ.
pub const ALPHA: f64 = 0.85;
pub const BETA: f64 = 0.20;
pub const GAMMA: f64 = 0.60;
pub const DELTA: f64 = 0.75;
/// Module weights: exact, stem, synonym, paraphrase.
pub const MODULE_WEIGHTS: [f64; 4] = [1.0, 0.6, 0.8, 0.6];

/// `Meteor._stat`'s request: `SCORE ||| ref 1 ||| … ||| ref n ||| hypothesis`, where the
/// hypothesis loses every `|||` and has double spaces replaced once, left to right.
pub fn score_line<R: AsRef<str>>(hypothesis: &str, references: &[R]) -> String {
    let hyp = hypothesis.replace("|||", "").replace("  ", " ");
    let mut line = String::from("SCORE");
    for r in references {
        line.push_str(" ||| ");
        line.push_str(r.as_ref());
    }
    line.push_str(" ||| ");
    line.push_str(&hyp);
    line
}

/// `Meteor.compute_score`'s request: `EVAL ||| stats 1 ||| … ||| stats n`.
pub fn eval_line<S: AsRef<str>>(stats: &[S]) -> String {
    let mut line = String::from("EVAL");
    for s in stats {
        line.push_str(" ||| ");
        line.push_str(s.as_ref());
    }
    line
}

/// A statistics line the jar should not have produced.
#[derive(Debug, Error, PartialEq)]
#[error("METEOR statistics line {line:?}: {why}; expected 23 numbers as the jar's SCORE prints them")]
pub struct StatsParseError {
    pub line: String,
    pub why: String,
}

/// `MeteorStats`: 23 numbers (test/reference lengths and function words, content and
/// function matches of the four stages, chunks, word matches), plus the totals the jar
/// derives when it parses them. All integral, held as `f64` like the jar.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MeteorStats {
    pub test_length: f64,
    pub reference_length: f64,
    pub test_function_words: f64,
    pub reference_function_words: f64,
    pub test_total_matches: f64,
    pub reference_total_matches: f64,
    pub test_stage_content: Vec<f64>,
    pub reference_stage_content: Vec<f64>,
    pub test_stage_function: Vec<f64>,
    pub reference_stage_function: Vec<f64>,
    pub chunks: f64,
    pub test_word_matches: f64,
    pub reference_word_matches: f64,
}

impl MeteorStats {
    /// Parses one `SCORE` answer (`MeteorStats(String)`: whitespace-separated numbers).
    pub fn parse(line: &str) -> Result<Self, StatsParseError> {
        let err = |why: String| StatsParseError { line: line.to_owned(), why };
        let nums = line
            .split_whitespace()
            .map(|t| t.parse::<f64>().map_err(|_| err(format!("{t:?} is not a number"))))
            .collect::<Result<Vec<f64>, _>>()?;
        if nums.len() != 23 {
            return Err(err(format!("{} numbers", nums.len())));
        }
        let mut s = MeteorStats {
            test_length: nums[0],
            reference_length: nums[1],
            test_function_words: nums[2],
            reference_function_words: nums[3],
            chunks: nums[20],
            test_word_matches: nums[21],
            reference_word_matches: nums[22],
            ..Default::default()
        };
        for stage in nums[4..20].chunks(4) {
            s.test_total_matches += stage[0];
            s.reference_total_matches += stage[1];
            s.test_stage_content.push(stage[0]);
            s.reference_stage_content.push(stage[1]);
            s.test_total_matches += stage[2];
            s.reference_total_matches += stage[3];
            s.test_stage_function.push(stage[2]);
            s.reference_stage_function.push(stage[3]);
        }
        Ok(s)
    }

    fn perfect(&self) -> bool {
        self.test_total_matches == self.test_length
            && self.reference_total_matches == self.reference_length
            && self.chunks == 1.0
    }

    /// `MeteorStats.addStats`: sums everything, except the chunks of a perfect match.
    pub fn add(&mut self, o: &MeteorStats) {
        self.test_length += o.test_length;
        self.reference_length += o.reference_length;
        self.test_function_words += o.test_function_words;
        self.reference_function_words += o.reference_function_words;
        self.test_total_matches += o.test_total_matches;
        self.reference_total_matches += o.reference_total_matches;
        let grow = o.reference_stage_content.len().saturating_sub(self.reference_stage_content.len());
        for _ in 0..grow {
            self.test_stage_content.push(0.0);
            self.reference_stage_content.push(0.0);
            self.test_stage_function.push(0.0);
            self.reference_stage_function.push(0.0);
        }
        for (a, b) in [
            (&mut self.test_stage_content, &o.test_stage_content),
            (&mut self.reference_stage_content, &o.reference_stage_content),
            (&mut self.test_stage_function, &o.test_stage_function),
            (&mut self.reference_stage_function, &o.reference_stage_function),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        if !o.perfect() {
            self.chunks += o.chunks;
        }
        self.test_word_matches += o.test_word_matches;
        self.reference_word_matches += o.reference_word_matches;
    }

    /// `MeteorScorer.computeMetrics(...).score` with the English defaults.
    pub fn score(&self) -> f64 {
        let test_weighted_length =
            DELTA * (self.test_length - self.test_function_words) + (1.0 - DELTA) * self.test_function_words;
        let reference_weighted_length = DELTA * (self.reference_length - self.reference_function_words)
            + (1.0 - DELTA) * self.reference_function_words;
        let (mut twm, mut rwm) = (0.0f64, 0.0f64);
        for (i, w) in MODULE_WEIGHTS.iter().enumerate() {
            twm += self.test_stage_content[i] * w * DELTA;
        }
        for (i, w) in MODULE_WEIGHTS.iter().enumerate() {
            rwm += self.reference_stage_content[i] * w * DELTA;
        }
        for (i, w) in MODULE_WEIGHTS.iter().enumerate() {
            twm += self.test_stage_function[i] * w * (1.0 - DELTA);
        }
        for (i, w) in MODULE_WEIGHTS.iter().enumerate() {
            rwm += self.reference_stage_function[i] * w * (1.0 - DELTA);
        }
        let precision = twm / test_weighted_length;
        let recall = rwm / reference_weighted_length;
        let f_mean = 1.0 / ((1.0 - ALPHA) / precision + ALPHA / recall);
        let frag = if self.perfect() {
            0.0
        } else {
            self.chunks / ((self.test_word_matches + self.reference_word_matches) / 2.0)
        };
        let penalty = GAMMA * frag.powf(BETA);
        let score = f_mean * (1.0 - penalty);
        if score.is_nan() { 0.0 } else { score.max(0.0) }
    }
}

/// The jar's `EVAL`: each image's score, and the score of the summed statistics.
pub fn evaluate(stats: &[MeteorStats]) -> (Vec<f64>, f64) {
    let mut total = MeteorStats::default();
    let per_image = stats
        .iter()
        .map(|s| {
            total.add(s);
            s.score()
        })
        .collect();
    // An empty EVAL would index empty stage lists; the jar itself answers NaN→0 there.
    if total.test_stage_content.is_empty() {
        return (per_image, 0.0);
    }
    (per_image, total.score())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers of `meteor-1.5.jar -stdio -l en -norm` (Java 17) to three SCORE requests,
    /// and its EVAL answer for them: 0.8999999999999999, 1.0, 0.1, then 0.5080970318016683.
    #[test]
    fn eval_matches_the_jar_on_a_small_case() {
        let lines = [
            "8.0 8.0 4.0 4.0 3.0 3.0 3.0 3.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 1.0 1.0 1.0 1.0 1.0 8.0 8.0",
            "2.0 2.0 1.0 1.0 1.0 1.0 1.0 1.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 1.0 2.0 2.0",
            "2.0 2.0 1.0 1.0 0.0 0.0 1.0 1.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 1.0 1.0 1.0",
        ];
        let stats: Vec<MeteorStats> = lines.iter().map(|l| MeteorStats::parse(l).unwrap()).collect();
        let (per, corpus) = evaluate(&stats);
        assert_eq!(per, vec![0.8999999999999999, 1.0, 0.1]);
        assert_eq!(corpus, 0.5080970318016683);
    }

    #[test]
    fn request_lines_as_meteor_py() {
        assert_eq!(score_line("a  b ||| c", &["x", "y"]), "SCORE ||| x ||| y ||| a b c");
        assert_eq!(eval_line(&["1 2", "3 4"]), "EVAL ||| 1 2 ||| 3 4");
        assert_eq!(score_line("a   b", &["x"]), "SCORE ||| x ||| a  b");
        assert!(MeteorStats::parse("1 2 3").is_err());
    }
}
