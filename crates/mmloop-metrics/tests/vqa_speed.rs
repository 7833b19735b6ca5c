//! Speed goal from issue 4: VQA accuracy on 200k questions × 10 answers in ≤ 2 s.
//! Run with `cargo test -p mmloop-metrics --release --test vqa_speed -- --ignored --nocapture`;
//! ignored by default because debug builds are not what the goal is about.

use std::time::Instant;

use mmloop_metrics::vqa::{VqaQuestion, VqaVariant, evaluate_vqa};

const ANSWERS: [&str; 40] = [
    "yes",
    "Yes",
    "no",
    "No.",
    "2",
    "two",
    "3",
    "1,000",
    "red",
    "white and black",
    "frisbee",
    "t-shirt",
    "tshirt",
    "a dog",
    "dog",
    "the man",
    "tennis",
    "baseball bat",
    "left",
    "right",
    "don't know",
    "dont know",
    "kitchen",
    "black/white",
    "10:30",
    "u.s.a.",
    "blue",
    "green",
    "giraffe",
    "pizza",
    "surfing",
    "skateboarding",
    "umbrella",
    "clock",
    "5",
    "five",
    "none",
    "café",
    "on the table",
    "sitting",
];

/// xorshift64*: a fixed, dependency-free stream for the synthetic answers.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
#[ignore = "timing; run in release"]
fn vqa_200k_questions_under_two_seconds() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let n = 200_000;
    let answers: Vec<Vec<&str>> = (0..n)
        .map(|_| {
            let base = (next(&mut s) % ANSWERS.len() as u64) as usize;
            (0..10)
                .map(|_| {
                    let r = next(&mut s) % 10;
                    // Mostly one answer with a few variants, as in VQAv2.
                    ANSWERS[if r < 7 { base } else { (base + r as usize) % ANSWERS.len() }]
                })
                .collect()
        })
        .collect();
    let preds: Vec<&str> = (0..n).map(|_| ANSWERS[(next(&mut s) % ANSWERS.len() as u64) as usize]).collect();
    for variant in [VqaVariant::Official, VqaVariant::VlmEvalKit] {
        let start = Instant::now();
        let report = evaluate_vqa(
            answers.iter().zip(&preds).map(|(a, p)| VqaQuestion {
                prediction: p,
                answers: a.as_slice(),
                question_type: Some("what"),
                answer_type: Some("other"),
            }),
            variant,
        )
        .unwrap();
        let elapsed = start.elapsed();
        println!("{variant}: {n} questions x 10 answers in {elapsed:?} (overall {})", report.overall);
        assert!(elapsed.as_secs_f64() <= 2.0, "{variant} took {elapsed:?}");
    }
}
