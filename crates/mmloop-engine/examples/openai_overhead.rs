//! The OpenAI backend's own overhead: requests per second against a local server that
//! answers at once (with logprobs), so the client side (JSON, base64 images, HTTP, retries
//! bookkeeping, confidence, rules) is all that is measured. See docs/benchmarks.md.
//!
//! ```sh
//! cargo run -p mmloop-engine --example openai_overhead -- [requests] [concurrency]
//! cargo run -p mmloop-engine --example openai_overhead -- serve 8765   # server only, for `mmloop infer --api`
//! ```

#[path = "../tests/support/fake_openai.rs"]
mod fake_openai;

use std::sync::Arc;
use std::time::Instant;

use mmloop_engine::openai::{OpenAiBackend, OpenAiOptions};
use mmloop_engine::{Annotator, AnnotatorOptions, Backend, GenParams, InputImage, Job, Prompt, RuleSet, RulesConfig};

fn tiny_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let port: u16 = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(8765);
        let addr = format!("127.0.0.1:{port}");
        let _server = fake_openai::start_on(&addr, |_, _| fake_openai::Reply::answer("It is red", -0.1), false).await;
        eprintln!("instant OpenAI server on http://{addr}/v1");
        std::future::pending::<()>().await;
    }
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let server = fake_openai::start_with(|_, _| fake_openai::Reply::answer("It is red", -0.1), false).await;
    let mut o = OpenAiOptions::new(&server.url, "fake-vlm");
    o.concurrency = concurrency;
    let backend: Arc<dyn Backend> = Arc::new(OpenAiBackend::connect(o).await.unwrap());
    let annotator = Arc::new(Annotator::new(
        backend,
        RuleSet::new(RulesConfig::default()).unwrap(),
        AnnotatorOptions::new(GenParams::greedy(16)),
    ));
    let png = Arc::new(tiny_png());
    for round in ["warm-up", "measured"] {
        let count = if round == "warm-up" { n / 10 } else { n };
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let mut done = 0usize;
        let mut next = 0usize;
        while done < count {
            while next < count && set.len() < concurrency {
                let a = annotator.clone();
                let img = InputImage::new("tiny.png", png.clone());
                let job = Job {
                    prompt: Prompt::new("What colour is it?", vec![img]),
                    stream: next as u64,
                    is_caption: false,
                    answer_type: None,
                };
                set.spawn(async move { a.annotate(job).await });
                next += 1;
            }
            let r = set.join_next().await.unwrap().unwrap().unwrap();
            assert_eq!(r.candidate.answer, "It is red");
            done += 1;
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "{round}: {count} requests, concurrency {concurrency}: {s:.2} s, {:.0} req/s (server saw at most {} in flight)",
            count as f64 / s,
            server.max_in_flight()
        );
    }
}
