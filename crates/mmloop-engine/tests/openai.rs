//! The OpenAI-compatible backend against a real HTTP server on 127.0.0.1: request shape,
//! retries on 429/5xx/timeouts/refused connections, bounded concurrency, and the clear
//! errors for servers without vision or logprobs.

#[path = "support/fake_openai.rs"]
mod fake_openai;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use fake_openai::{Reply, start};
use mmloop_engine::openai::{OpenAiBackend, OpenAiOptions};
use mmloop_engine::{
    Annotator, AnnotatorOptions, Backend, EngineError, GenParams, GenRequest, InputImage, Job, Prompt, RuleSet,
    RulesConfig,
};
use serde_json::json;

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(4, 3, image::Rgb([200, 10, 10]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn opts(url: &str) -> OpenAiOptions {
    let mut o = OpenAiOptions::new(url, "fake-vlm");
    o.backoff = Duration::from_millis(5);
    o.backoff_max = Duration::from_millis(50);
    o.timeout = Duration::from_secs(5);
    o
}

fn request(text: &str) -> GenRequest {
    GenRequest {
        prompt: Prompt::new(text, vec![InputImage::new("red.png", png())]),
        params: GenParams::greedy(16),
        stream: 0,
        adapter: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_images_as_data_urls_and_reads_logprobs() {
    let server = start(|_, _| Reply::answer("It is red", -0.1)).await;
    let b = OpenAiBackend::connect(opts(&server.url)).await.unwrap();
    let mut req = request("What colour is it?");
    req.prompt.system = Some("Answer briefly.".into());
    let g = b.generate(req).await.unwrap();
    assert_eq!(g.text, "It is red");
    assert_eq!(g.tokens.len(), 3);
    assert_eq!(g.tokens[1].token, " is");
    assert_eq!(g.tokens[1].bytes, b" is");
    assert_eq!(g.tokens[0].top_logprobs.len(), 5);

    let body = &server.bodies()[0];
    assert_eq!(body["model"], "fake-vlm");
    assert_eq!(body["logprobs"], true);
    assert_eq!(body["top_logprobs"], 5);
    assert_eq!(body["max_tokens"], 16);
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "Answer briefly."}));
    let parts = &body["messages"][1]["content"];
    let url = parts[0]["image_url"]["url"].as_str().unwrap();
    let b64 = url.strip_prefix("data:image/png;base64,").expect("a PNG data URL");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(b64).unwrap(), png());
    assert_eq!(parts[1], json!({"type": "text", "text": "What colour is it?"}));
    // Server-side extras are only sent when asked for.
    assert!(body.get("top_k").is_none() && body.get("repetition_penalty").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_annotator_scores_and_flags_server_answers() {
    let server = start(|req, _| {
        if fake_openai::question(req).starts_with("Is") {
            Reply::answer("maybe red", (0.5f64).ln())
        } else {
            Reply::answer("red", (0.9f64).ln())
        }
    })
    .await;
    let b: Arc<dyn Backend> = Arc::new(OpenAiBackend::connect(opts(&server.url)).await.unwrap());
    let a =
        Annotator::new(b, RuleSet::new(RulesConfig::default()).unwrap(), AnnotatorOptions::new(GenParams::greedy(8)));
    let job = |q: &str| Job {
        prompt: Prompt::new(q, vec![InputImage::new("x.png", png())]),
        stream: 1,
        is_caption: false,
        answer_type: None,
    };
    let sure_a = a.annotate(job("What colour?")).await.unwrap();
    let sure = &sure_a.candidate;
    assert_eq!(sure.answer, "red");
    assert!((sure.confidence.unwrap() - 0.9).abs() < 1e-9);
    assert!(sure.flags.is_empty(), "{:?}", sure.flags);
    let content = &sure_a.logprobs.as_ref().unwrap()["content"];
    assert_eq!(content[0]["token"], "red");
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 5);

    let unsure = a.annotate(job("Is it red?")).await.unwrap().candidate;
    let names: Vec<&str> = unsure.flags.iter().map(|f| f.flag.as_str()).collect();
    assert_eq!(names, vec!["hedging", "not_yes_no"], "{:?}", unsure.flags);
    assert_eq!(unsure.flags[0].span, Some([0, 5]));
    assert!((unsure.confidence.unwrap() - 0.5).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_429_and_5xx_then_succeeds() {
    let server = start(|_, n| match n {
        0 => Reply::Status { status: 429, body: json!({"error": {"message": "slow down"}}), retry_after: Some(0.0) },
        1 => Reply::Status { status: 503, body: json!({"error": "busy"}), retry_after: None },
        2 => Reply::Status { status: 502, body: json!("bad gateway"), retry_after: None },
        _ => Reply::answer("red", -0.2),
    })
    .await;
    let b = OpenAiBackend::connect(opts(&server.url)).await.unwrap();
    let g = b.generate(request("q")).await.unwrap();
    assert_eq!(g.text, "red");
    assert_eq!(server.requests(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured() {
    let server = start(|_, n| match n {
        0 => Reply::Status { status: 429, body: json!({}), retry_after: Some(0.3) },
        _ => Reply::answer("red", -0.2),
    })
    .await;
    let b = OpenAiBackend::connect(opts(&server.url)).await.unwrap();
    let t = Instant::now();
    b.generate(request("q")).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(290), "waited only {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn gives_up_after_the_retries_with_the_reason() {
    let server =
        start(|_, _| Reply::Status { status: 500, body: json!({"error": {"message": "CUDA OOM"}}), retry_after: None })
            .await;
    let mut o = opts(&server.url);
    o.max_retries = 2;
    let b = OpenAiBackend::connect(o).await.unwrap();
    let e = b.generate(request("q")).await.unwrap_err();
    assert!(matches!(e, EngineError::Network(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("HTTP 500") && msg.contains("CUDA OOM") && msg.contains("3 attempts"), "{msg}");
    assert!(!e.is_item_error(), "a failing server stops the run");
    assert_eq!(server.requests(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_are_retried() {
    let server = start(|_, n| {
        if n == 0 {
            Reply::Delay(Duration::from_secs(3), Box::new(Reply::answer("late", -0.1)))
        } else {
            Reply::answer("on time", -0.1)
        }
    })
    .await;
    let mut o = opts(&server.url);
    o.timeout = Duration::from_millis(300);
    let b = OpenAiBackend::connect(o).await.unwrap();
    let t = Instant::now();
    let g = b.generate(request("q")).await.unwrap();
    assert_eq!(g.text, "on time");
    assert!(t.elapsed() < Duration::from_secs(2));

    let slow = start(|_, _| Reply::Delay(Duration::from_secs(3), Box::new(Reply::answer("late", -0.1)))).await;
    let mut o = opts(&slow.url);
    o.timeout = Duration::from_millis(200);
    o.max_retries = 1;
    let b = OpenAiBackend::connect(o).await.unwrap();
    let e = b.generate(request("q")).await.unwrap_err();
    assert!(e.to_string().contains("timed out") && e.to_string().contains("2 attempts"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connections_are_retried_then_reported() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut o = opts(&format!("http://127.0.0.1:{port}/v1"));
    o.max_retries = 2;
    let b = OpenAiBackend::connect(o).await.unwrap();
    let e = b.generate(request("q")).await.unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_logprobs_is_a_clear_error() {
    let server = start(|_, _| Reply::Answer { text: "red".into(), logprob: 0.0, with_logprobs: false }).await;
    let b = OpenAiBackend::connect(opts(&server.url)).await.unwrap();
    let e = b.generate(request("q")).await.unwrap_err();
    assert!(matches!(e, EngineError::NoLogprobs { .. }), "{e}");
    assert!(e.to_string().contains("--logprobs false"), "{e}");
    assert!(!e.is_item_error());
    // Refusing the parameter outright is the same error.
    let strict = start(|_, _| Reply::Status {
        status: 400,
        body: json!({"error": {"message": "logprobs is not supported"}}),
        retry_after: None,
    })
    .await;
    let b = OpenAiBackend::connect(opts(&strict.url)).await.unwrap();
    assert!(matches!(b.generate(request("q")).await.unwrap_err(), EngineError::NoLogprobs { .. }));
    // Asked not to, the backend works without them (and gives no confidence).
    let mut o = opts(&server.url);
    o.logprobs = false;
    let b = OpenAiBackend::connect(o).await.unwrap();
    let g = b.generate(request("q")).await.unwrap();
    assert_eq!(g.text, "red");
    assert!(g.tokens.is_empty());
    assert!(server.bodies().last().unwrap().get("logprobs").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_vision_is_a_clear_error() {
    let server = start(|_, _| Reply::Status {
        status: 400,
        body: json!({"object": "error", "message": "Qwen2.5-7B-Instruct is not a multimodal model", "code": 400}),
        retry_after: None,
    })
    .await;
    let b = OpenAiBackend::connect(opts(&server.url)).await.unwrap();
    let e = b.generate(request("q")).await.unwrap_err();
    assert!(matches!(e, EngineError::NoVision { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("does not accept images") && msg.contains("not a multimodal model"), "{msg}");
    assert!(!e.is_item_error(), "every item would fail the same way");
    assert_eq!(server.requests(), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_client_errors_name_the_fix() {
    let server =
        start(|_, _| Reply::Status { status: 401, body: json!({"error": {"message": "bad key"}}), retry_after: None })
            .await;
    let b = OpenAiBackend::connect(opts(&server.url)).await.unwrap();
    let e = b.generate(request("q")).await.unwrap_err();
    assert!(e.to_string().contains("OPENAI_API_KEY"), "{e}");
    assert!(!e.is_item_error());
    let too_long = start(|_, _| Reply::Status {
        status: 400,
        body: json!({"error": {"message": "maximum context length exceeded"}}),
        retry_after: None,
    })
    .await;
    let b = OpenAiBackend::connect(opts(&too_long.url)).await.unwrap();
    let e = b.generate(request("q")).await.unwrap_err();
    assert!(e.is_item_error(), "one item's problem: {e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_is_bounded() {
    let server = start(|_, _| Reply::Delay(Duration::from_millis(40), Box::new(Reply::answer("red", -0.1)))).await;
    let mut o = opts(&server.url);
    o.concurrency = 4;
    let b = Arc::new(OpenAiBackend::connect(o).await.unwrap());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let b = b.clone();
        set.spawn(async move { b.generate(request("q")).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(server.requests(), 40);
    assert_eq!(server.max_in_flight(), 4, "callers beyond the limit wait");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_model_name_comes_from_the_server_when_not_given() {
    let server = start(|_, _| Reply::answer("red", -0.1)).await;
    let mut o = opts(&server.url);
    o.model = String::new();
    let b = OpenAiBackend::connect(o).await.unwrap();
    assert_eq!(b.info().model, "fake-vlm");
    // The server root works as well as the /v1 base.
    let root = server.url.trim_end_matches("/v1").to_string();
    let b = OpenAiBackend::connect(opts(&root)).await.unwrap();
    assert_eq!(b.generate(request("q")).await.unwrap().text, "red");
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_settings_and_self_consistency() {
    let server = start(|req, _| {
        // Samples (temperature > 0) disagree once in three.
        if req["temperature"].as_f64().unwrap() > 0.0 {
            let seed = req["seed"].as_u64().unwrap_or(0);
            Reply::answer(if seed % 3 == 0 { "blue" } else { "red" }, -0.3)
        } else {
            Reply::answer("red", -0.1)
        }
    })
    .await;
    let b: Arc<dyn Backend> = Arc::new(OpenAiBackend::connect(opts(&server.url)).await.unwrap());
    let mut o = AnnotatorOptions::new(GenParams::greedy(8));
    o.samples = 6;
    let a = Annotator::new(b, RuleSet::new(RulesConfig::default()).unwrap(), o);
    let r = a
        .annotate(Job {
            prompt: Prompt::new("What colour?", vec![InputImage::new("x.png", png())]),
            stream: 7,
            is_caption: false,
            answer_type: None,
        })
        .await
        .unwrap();
    let r = r.candidate;
    let d = r.detail.unwrap();
    assert_eq!(d.samples.len(), 6);
    assert_eq!(d.source, "agreement");
    let agree = d.samples.iter().filter(|s| *s == "red").count() as f64 / 6.0;
    assert_eq!(r.confidence, Some(agree));
    let bodies = server.bodies();
    let sampled: Vec<_> = bodies.iter().filter(|b| b["temperature"].as_f64().unwrap() > 0.0).collect();
    assert_eq!(sampled.len(), 6);
    assert!(sampled.iter().all(|b| b["temperature"] == 0.7));
    let seeds: std::collections::HashSet<u64> = sampled.iter().map(|b| b["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds.len(), 6, "each sample draws its own numbers");
}
