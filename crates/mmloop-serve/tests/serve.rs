//! `mmloop serve` over HTTP with the tiny Qwen2-VL checkpoint of the fixtures: served greedy
//! answers and log-probabilities equal the engine's (what `mmloop infer` stores), streaming
//! sends the same text, adapters are models, bad requests are OpenAI errors, and the
//! metrics count what was served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use futures::StreamExt;
use mmloop_engine::embedded::{EmbeddedBackend, EmbeddedOptions};
use mmloop_engine::{Backend, GenOverrides, GenParams, GenRequest, InputImage, Prompt, RuleSet, RulesConfig};
use mmloop_serve::{ServeConfig, Server};
use serde_json::{Value, json};

const QUESTION: &str = "What color is the main object? Answer briefly.";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vlm")
}

struct Running {
    url: String,
    backend: Option<Arc<EmbeddedBackend>>,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(config: impl FnOnce(&mut ServeConfig)) -> Running {
    let mut o = EmbeddedOptions::new(fixtures().join("qwen2_vl").display().to_string());
    o.adapters = vec![("lora".into(), fixtures().join("qwen2_vl/adapters/lora"))];
    o.max_batch = 4;
    let backend = Arc::new(EmbeddedBackend::load(o).await.expect("the fixture loads"));
    start_with(Some(backend), config).await
}

/// A server on a free port: with a model, or (`None`) a gateway to upstream arms only.
async fn start_with(backend: Option<Arc<EmbeddedBackend>>, config: impl FnOnce(&mut ServeConfig)) -> Running {
    let mut c = ServeConfig::new("tiny-qwen2-vl");
    config(&mut c);
    let server = Server::new(backend.clone(), RuleSet::new(RulesConfig::default()).unwrap(), c);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mmloop_serve::serve(server, listener, async move {
        let _ = rx.await;
    }));
    Running { url, backend, http: reqwest::Client::new(), _stop: tx }
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

fn data_url(name: &str) -> String {
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(image_bytes(name)))
}

fn question(image: &str) -> Value {
    json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image)}},
        {"type": "text", "text": QUESTION},
    ]}])
}

impl Running {
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.url)).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The data lines of a streamed answer.
    async fn stream(&self, body: &Value) -> Vec<String> {
        let r = self.http.post(format!("{}/v1/chat/completions", self.url)).json(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let text = r.text().await.unwrap();
        text.lines().filter_map(|l| l.strip_prefix("data: ")).map(String::from).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_answers_are_the_engines_whole_and_streamed() {
    let s = start(|_| {}).await;
    // The base model, greedy, against transformers' reference for the same image and question.
    let body = json!({"model": "tiny-qwen2-vl", "messages": question("img0.png"), "max_tokens": 8,
                      "temperature": 0, "repetition_penalty": 1.0, "logprobs": true, "top_logprobs": 3});
    let (status, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("qwen2_vl/reference.json")).unwrap()).unwrap();
    let case = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prompt"] == QUESTION && c["image"].as_str().is_some_and(|i| i.ends_with("img0.png")))
        .unwrap();
    let choice = &r["choices"][0];
    assert_eq!(choice["message"]["content"], case["text"]);
    let engine: Vec<f64> =
        choice["logprobs"]["content"].as_array().unwrap().iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
    let steps = case["steps"].as_array().unwrap();
    assert_eq!(engine.len(), steps.len());
    for (got, want) in engine.iter().zip(steps) {
        assert!((got - want["logprob"].as_f64().unwrap()).abs() < 1e-4, "|Δ ln p| {got} vs {want}");
    }
    assert!(
        choice["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["top_logprobs"].as_array().unwrap().len() == 3)
    );
    let conf = choice["mmloop"]["confidence"].as_f64().expect("a confidence");
    assert!((0.0..=1.0).contains(&conf));
    assert!(choice["mmloop"]["flags"].is_array());
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(r["usage"]["prompt_tokens"].as_u64(), case["num_input_tokens"].as_u64());
    assert_eq!(r["usage"]["completion_tokens"].as_u64(), Some(8));
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], "tiny-qwen2-vl");
    let want_text = case["text"].as_str().unwrap().to_string();
    let want_finish = "length";

    // Streamed: the same text in pieces, the end, the usage, [DONE].
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let lines = s.stream(&sb).await;
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = lines[..lines.len() - 1].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|c| c["delta"]["content"].as_str()).map(String::from))
        .collect();
    assert_eq!(text, want_text);
    let streamed_lp: Vec<f64> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|c| c["logprobs"]["content"].as_array().cloned()))
        .flatten()
        .map(|t| t["logprob"].as_f64().unwrap())
        .collect();
    assert_eq!(streamed_lp, engine);
    let end = chunks.iter().find(|c| c["choices"].get(0).is_some_and(|c| !c["finish_reason"].is_null())).unwrap();
    assert_eq!(end["choices"][0]["finish_reason"], want_finish);
    assert_eq!(end["choices"][0]["mmloop"]["confidence"].as_f64(), Some(conf));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"], r["usage"]);

    // Several choices, sampled with a seed: reproducible.
    let sampled = json!({"messages": question("img1.png"), "max_tokens": 6, "temperature": 1.0, "n": 3, "seed": 11});
    let (_, a) = s.post("/v1/chat/completions", &sampled).await;
    let (_, b) = s.post("/v1/chat/completions", &sampled).await;
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    let texts = |v: &Value| {
        v["choices"].as_array().unwrap().iter().map(|c| c["message"]["content"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(texts(&a), texts(&b));

    // Concurrent requests share the engine and get their own answers.
    let bodies: Vec<Value> = ["img0.png", "img1.png", "img2.png", "img0.png"]
        .iter()
        .map(|i| json!({"messages": question(i), "max_tokens": 8, "temperature": 0}))
        .collect();
    let together = futures::future::join_all(bodies.iter().map(|b| s.post("/v1/chat/completions", b))).await;
    for (b, (status, r)) in bodies.iter().zip(&together) {
        assert_eq!(*status, 200);
        let (_, alone) = s.post("/v1/chat/completions", b).await;
        assert_eq!(r["choices"][0]["message"]["content"], alone["choices"][0]["message"]["content"]);
    }

    // The adapter is a model of its own, with the base as parent.
    let (_, models) = s.get("/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny-qwen2-vl", "lora"]);
    assert_eq!(models["data"][1]["parent"], "tiny-qwen2-vl");
    // An adapter's answer is what the engine (and so `mmloop infer --adapters`) gives.
    let (status, la) = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "lora", "messages": question("img0.png"), "max_tokens": 12, "temperature": 0, "logprobs": true}),
        )
        .await;
    assert_eq!(status, 200, "{la}");
    let params = GenParams::resolve(
        &s.backend.as_ref().unwrap().defaults(),
        &GenOverrides { max_new_tokens: Some(12), temperature: Some(0.0), ..Default::default() },
    )
    .unwrap();
    let want = s
        .backend
        .as_ref()
        .unwrap()
        .generate(GenRequest {
            prompt: Prompt::new(QUESTION, vec![InputImage::new("img0.png", image_bytes("img0.png"))]),
            params,
            stream: 0,
            adapter: Some("lora".into()),
        })
        .await
        .unwrap();
    assert_eq!(la["choices"][0]["message"]["content"], want.text.as_str());
    let served: Vec<f64> = la["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["logprob"].as_f64().unwrap())
        .collect();
    assert_eq!(served, want.tokens.iter().filter(|t| !t.special).map(|t| t.logprob).collect::<Vec<_>>());
    assert_ne!(
        la["choices"][0]["message"]["content"], r["choices"][0]["message"]["content"],
        "the adapter changes the answer"
    );

    // The metrics counted it all, under vLLM's names.
    let (status, m) = s.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "vllm:num_requests_running{model_name=\"tiny-qwen2-vl\"} 0",
        "vllm:num_requests_waiting{model_name=\"tiny-qwen2-vl\"} 0",
        "vllm:prompt_tokens_total{",
        "vllm:generation_tokens_total{",
        "vllm:request_success_total{model_name=\"tiny-qwen2-vl\",finished_reason=\"length\"}",
        "vllm:time_to_first_token_seconds_bucket{",
        "vllm:e2e_request_latency_seconds_count{model_name=\"tiny-qwen2-vl\"} 17",
        "vllm:request_queue_time_seconds_sum{",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_stops_its_request() {
    let s = start(|_| {}).await;
    let body = json!({"messages": question("img0.png"), "max_tokens": 20000, "min_tokens": 20000, "stream": true,
                      "temperature": 1.0, "seed": 3});
    let mut r = s.http.post(format!("{}/v1/chat/completions", s.url)).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Read the first piece, then hang up.
    let first = r.chunk().await.unwrap().expect("a first chunk");
    assert!(String::from_utf8_lossy(&first).contains("assistant"));
    drop(r);
    let t0 = std::time::Instant::now();
    loop {
        let (_, m) = s.get("/metrics").await;
        if m.contains("finished_reason=\"abort\"} 1")
            && m.contains("vllm:num_requests_running{model_name=\"tiny-qwen2-vl\"} 0")
        {
            break;
        }
        assert!(t0.elapsed().as_secs() < 30, "the request was not stopped:\n{m}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let generated: u64 = {
        let (_, m) = s.get("/metrics").await;
        m.lines()
            .find(|l| l.starts_with("vllm:generation_tokens_total{"))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(generated < 20000, "stopped early: {generated} tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_openai_errors_and_the_server_keeps_serving() {
    let media = tempfile::tempdir().unwrap();
    std::fs::write(media.path().join("a.png"), image_bytes("img0.png")).unwrap();
    let root = media.path().to_path_buf();
    let s = start(|c| {
        c.api_key = Some("sk-test".into());
        c.limit_mm_per_prompt = 2;
        c.max_body_bytes = 256 << 10;
        c.allowed_local_media_path = Some(root.clone());
        c.runtime_lora_updating = true;
        c.allowed_media_domains = vec!["images.example".into()];
    })
    .await;
    // The key guards /v1 only.
    let (status, e) = s.post("/v1/chat/completions", &json!({"messages": question("img0.png")})).await;
    assert_eq!(status, 401);
    assert_eq!(e["error"]["type"], "AuthenticationError");
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.get("/metrics").await.0, 200);
    let authed = Running {
        url: s.url.clone(),
        backend: s.backend.clone(),
        http: reqwest::Client::builder()
            .default_headers(
                [(reqwest::header::AUTHORIZATION, "Bearer sk-test".parse().unwrap())].into_iter().collect(),
            )
            .build()
            .unwrap(),
        _stop: tokio::sync::oneshot::channel().0,
    };
    let image = |url: &str| json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}]);
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"model": "gpt-9", "messages": question("img0.png")}), 404, "does not exist"),
        (json!({"messages": image("data:image/png;base64,@@@")}), 400, "invalid base64"),
        (json!({"messages": image("data:image/png;base64,aGVsbG8=")}), 400, "not an image"),
        (json!({"messages": image(&format!("file://{}/a.png", "/etc"))}), 400, "allowed local media path"),
        (json!({"messages": image("file:///etc/passwd")}), 400, "allowed local media path"),
        (json!({"messages": image("ftp://x/y.png")}), 400, "unsupported image URL"),
        (json!({"messages": image("http://127.0.0.1:9/y.png")}), 400, "allowed media domain"),
        (json!({"messages": question("img0.png"), "max_tokens": 40000}), 400, "maximum context length is 32768"),
        (json!({"messages": question("img0.png"), "max_tokens": 4, "min_tokens": 5}), 400, "min_tokens"),
        (
            json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url("img0.png")}},
            {"type": "image_url", "image_url": {"url": data_url("img1.png")}},
            {"type": "image_url", "image_url": {"url": data_url("img2.png")}}]}]}),
            400,
            "at most 2",
        ),
        (json!({"messages": question("img0.png"), "n": 0}), 400, "n must be"),
        (json!({"messages": question("img0.png"), "logprobs": true, "top_logprobs": 21}), 400, "top_logprobs"),
        (json!({"messages": question("img0.png"), "temperature": -1}), 400, "temperature"),
        (json!({"messages": []}), 400, "messages"),
        (json!({"messages": question("img0.png"), "frequency_penalty": 0.5}), 400, "not supported"),
        (json!({"messages": "hi"}), 400, "invalid request body"),
    ];
    for (body, want, says) in cases {
        let (status, e) = authed.post("/v1/chat/completions", &body).await;
        assert_eq!(status, want, "{body:.200} -> {e}");
        let msg = e["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{msg:?} should say {says:?}");
        assert_eq!(e["error"]["code"].as_u64(), Some(want as u64));
    }
    // Too large a body: 413, as an OpenAI error too.
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(300 << 10)}]});
    let (status, e) = authed.post("/v1/chat/completions", &big).await;
    assert_eq!((status, e["error"]["code"].as_u64()), (413, Some(413)), "{e}");
    // A file under the allowed path is read; the server is still serving.
    let (status, ok) = authed
        .post(
            "/v1/chat/completions",
            &json!({"messages": image(&format!("file://{}/a.png", root.display())), "max_tokens": 3}),
        )
        .await;
    assert_eq!(status, 200, "{ok}");

    // Adapters load and unload at runtime (vLLM's endpoints and answers).
    let dora = fixtures().join("qwen2_vl/adapters/dora");
    let (status, t) = authed.post("/v1/load_lora_adapter", &json!({"lora_name": "dora", "lora_path": dora})).await;
    assert_eq!(status, 200, "{t}");
    let (status, _) = authed.post("/v1/load_lora_adapter", &json!({"lora_name": "dora", "lora_path": dora})).await;
    assert_eq!(status, 400, "twice");
    let (status, _) =
        authed.post("/v1/load_lora_adapter", &json!({"lora_name": "x", "lora_path": "/nonexistent"})).await;
    assert_eq!(status, 400);
    let (status, r) = authed
        .post("/v1/chat/completions", &json!({"model": "dora", "messages": question("img0.png"), "max_tokens": 3}))
        .await;
    assert_eq!(status, 200, "{r}");
    // Not while a request is answering with it.
    let body = json!({"model": "dora", "messages": question("img0.png"), "max_tokens": 20000, "min_tokens": 20000,
                      "stream": true});
    let mut busy = authed.http.post(format!("{}/v1/chat/completions", s.url)).json(&body).send().await.unwrap();
    assert_eq!(busy.status().as_u16(), 200);
    busy.chunk().await.unwrap().expect("a first chunk");
    let (status, e) = authed.post("/v1/unload_lora_adapter", &json!({"lora_name": "dora"})).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("in use"), "{e}");
    drop(busy);
    let t0 = std::time::Instant::now();
    while authed.post("/v1/unload_lora_adapter", &json!({"lora_name": "dora"})).await.0 != 200 {
        assert!(t0.elapsed().as_secs() < 30, "the adapter stayed in use after its client left");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(authed.post("/v1/unload_lora_adapter", &json!({"lora_name": "dora"})).await.0, 404);
    let (status, _) =
        authed.post("/v1/chat/completions", &json!({"model": "dora", "messages": question("img0.png")})).await;
    assert_eq!(status, 404);
}

/// Keeps what the server logs, for the test to read.
#[derive(Default)]
struct MemoryLog {
    exposures: std::sync::Mutex<Vec<mmloop_serve::ExposureRecord>>,
    outcomes: std::sync::Mutex<Vec<(String, String)>>,
    /// How long a write takes (a slow disk).
    delay: std::time::Duration,
}

impl MemoryLog {
    /// The exposures once `n` have been written (they are written after the answer is sent).
    async fn wait(&self, n: usize) -> Vec<mmloop_serve::ExposureRecord> {
        for _ in 0..500 {
            let xs = self.exposures.lock().unwrap().clone();
            if xs.len() >= n {
                return xs;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{n} exposures were not written in 5 s");
    }
}

#[async_trait::async_trait]
impl mmloop_serve::ExperimentLog for MemoryLog {
    async fn exposure(&self, x: mmloop_serve::ExposureRecord) -> Result<(), String> {
        tokio::time::sleep(self.delay).await;
        self.exposures.lock().unwrap().push(x);
        Ok(())
    }
    async fn outcome(&self, id: &str, outcome: &str, _: Option<f64>) -> Result<(), (u16, String)> {
        if !self.exposures.lock().unwrap().iter().any(|x| x.request_id == id) {
            return Err((404, format!("no experiment request {id:?}")));
        }
        self.outcomes.lock().unwrap().push((id.to_string(), outcome.to_string()));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_splits_users_stickily_and_records_exposures_and_outcomes() {
    let log = Arc::new(MemoryLog::default());
    let l = log.clone();
    let s = start(move |c| {
        c.ab = Some(mmloop_serve::AbConfig {
            name: "exp1".into(),
            seed: "exp1".into(),
            arms: vec![
                mmloop_serve::Arm { name: "base".into(), target: mmloop_serve::ArmTarget::Local(None) },
                mmloop_serve::Arm { name: "tuned".into(), target: mmloop_serve::ArmTarget::Local(Some("lora".into())) },
            ],
            weights: vec![0.5, 0.5],
            log: l,
        });
        c.runtime_lora_updating = true;
    })
    .await;
    // An arm's adapter stays loaded while the experiment runs.
    let (status, e) = s.post("/v1/unload_lora_adapter", &json!({"lora_name": "lora"})).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("answers an arm"), "{e}");
    let (_, models) = s.get("/v1/models").await;
    assert!(models.contains("\"exp1\""), "{models}");
    let mut arms = std::collections::BTreeMap::new();
    for u in 0..12 {
        let user = format!("user-{u}");
        let body = json!({"model": "exp1", "messages": question("img0.png"), "max_tokens": 3, "temperature": 0,
                          "user": user});
        let (status, r) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{r}");
        let arm = r["choices"][0]["mmloop"]["experiment"]["arm"].as_str().unwrap().to_string();
        let want = mmloop_metrics::ab::assign("exp1", &user, &[0.5, 0.5]).unwrap();
        assert_eq!(arm, ["base", "tuned"][want], "the GrowthBook bucket of {user}");
        // The same user again: the same arm, and (greedy) the same answer.
        let (_, again) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(again["choices"][0]["mmloop"]["experiment"]["arm"], arm.as_str());
        arms.entry(arm).or_insert_with(Vec::new).push(r["id"].as_str().unwrap().to_string());
    }
    assert_eq!(arms.len(), 2, "both arms answered: {arms:?}");
    let xs = log.wait(24).await;
    assert_eq!(xs.len(), 24);
    assert!(
        xs.iter().all(|x| x.experiment == "exp1" && x.user_id.is_some() && x.prompt_tokens > 0 && x.latency_ms > 0.0)
    );
    // Each exposure names the arm its response said.
    for (arm, ids) in &arms {
        assert!(ids.iter().all(|id| xs.iter().any(|x| &x.request_id == id && &x.arm == arm)));
    }
    // Outcomes go to the log; an unknown id is a 404.
    let id = log.exposures.lock().unwrap()[0].request_id.clone();
    let (status, r) = s.post("/v1/feedback", &json!({"id": id, "outcome": "accept"})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(log.outcomes.lock().unwrap().len(), 1);
    let (status, _) = s.post("/v1/feedback", &json!({"id": "chatcmpl-nope", "outcome": "accept"})).await;
    assert_eq!(status, 404);
    // The arms stay addressable on their own, outside the experiment.
    let (status, _) = s
        .post("/v1/chat/completions", &json!({"model": "lora", "messages": question("img0.png"), "max_tokens": 2}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(log.exposures.lock().unwrap().len(), 24);
}

/// A gateway (no model of its own) whose two arms are another server's base model and
/// adapter: answers, logprobs and confidence are the upstream's, the client gets only the
/// logprobs and usage it asked for, exposures carry the gateway's ids, and an unreachable
/// arm is a 502 while the other keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_proxies_arms_to_upstream_servers_and_scores_their_answers() {
    let upstream = start(|_| {}).await;
    let chat_url = format!("{}/v1/chat/completions", upstream.url);
    let up = |model: &str| mmloop_serve::Upstream { chat_url: chat_url.clone(), model: model.into(), api_key: None };
    let log = Arc::new(MemoryLog::default());
    let l = log.clone();
    let arms = vec![
        mmloop_serve::Arm { name: "base".into(), target: mmloop_serve::ArmTarget::Upstream(up("tiny-qwen2-vl")) },
        mmloop_serve::Arm { name: "tuned".into(), target: mmloop_serve::ArmTarget::Upstream(up("lora")) },
    ];
    let g = start_with(None, move |c| {
        c.ab = Some(mmloop_serve::AbConfig {
            name: "exp".into(),
            seed: "exp".into(),
            arms,
            weights: vec![0.5, 0.5],
            log: l,
        });
    })
    .await;
    let (_, models) = g.get("/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["exp"], "a gateway lists its experiment only");
    let (status, e) =
        g.post("/v1/chat/completions", &json!({"model": "tiny-qwen2-vl", "messages": question("img0.png")})).await;
    assert_eq!(status, 404, "{e}");

    let mut seen = std::collections::BTreeSet::new();
    for u in 0..8 {
        let user = format!("user-{u}");
        let arm = mmloop_metrics::ab::assign("exp", &user, &[0.5, 0.5]).unwrap();
        let body = json!({"model": "exp", "messages": question("img1.png"), "max_tokens": 6, "temperature": 0,
                          "user": user});
        let (status, r) = g.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{r}");
        let choice = &r["choices"][0];
        assert_eq!(choice["mmloop"]["experiment"]["arm"], ["base", "tuned"][arm]);
        assert!(choice["logprobs"].is_null(), "not asked for: {choice}");
        assert_eq!(r["model"], "exp");
        // The same request straight to the arm's server: same answer, same confidence.
        let mut direct = body.clone();
        direct["model"] = json!(["tiny-qwen2-vl", "lora"][arm]);
        let (_, d) = upstream.post("/v1/chat/completions", &direct).await;
        assert_eq!(choice["message"]["content"], d["choices"][0]["message"]["content"]);
        let (cg, cd) = (
            choice["mmloop"]["confidence"].as_f64().unwrap(),
            d["choices"][0]["mmloop"]["confidence"].as_f64().unwrap(),
        );
        assert!((cg - cd).abs() < 1e-9, "confidence from the returned logprobs {cg} vs the server's own {cd}");
        assert_eq!(r["usage"], d["usage"]);
        seen.insert(arm);
        let x = log.wait(u + 1).await.last().cloned().unwrap();
        assert_eq!(x.request_id, r["id"].as_str().unwrap(), "the exposure carries the gateway's id");
        assert_eq!((x.prompt_tokens, x.completion_tokens), (d["usage"]["prompt_tokens"].as_u64().unwrap(), 6));
    }
    assert_eq!(seen.len(), 2, "both arms answered");
    let id = log.exposures.lock().unwrap()[0].request_id.clone();
    let (status, r) = g.post("/v1/feedback", &json!({"id": id, "outcome": "thumbs_up"})).await;
    assert_eq!(status, 200, "{r}");

    // Logprobs cut to what was asked; streamed: same text, the extension on the last chunk,
    // usage only when asked for, [DONE] last.
    let body = json!({"model": "exp", "messages": question("img0.png"), "max_tokens": 5, "temperature": 0,
                      "user": "user-0", "logprobs": true, "top_logprobs": 1});
    let (_, whole) = g.post("/v1/chat/completions", &body).await;
    let lp = whole["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lp.len(), 5);
    assert!(lp.iter().all(|t| t["top_logprobs"].as_array().unwrap().len() == 1));
    let before = log.wait(9).await.len();
    for (k, include_usage) in [false, true].into_iter().enumerate() {
        let mut b = body.clone();
        b["stream"] = json!(true);
        if include_usage {
            b["stream_options"] = json!({"include_usage": true});
        }
        let lines = g.stream(&b).await;
        assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = lines[..lines.len() - 1].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        let text: String =
            chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
        assert_eq!(text, whole["choices"][0]["message"]["content"].as_str().unwrap());
        let ext = chunks.iter().find_map(|c| c["choices"][0].get("mmloop")).expect("the mmloop field");
        assert_eq!(ext["confidence"], whole["choices"][0]["mmloop"]["confidence"]);
        assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"] && c["model"] == "exp"));
        let usage: Vec<&Value> = chunks.iter().filter_map(|c| c.get("usage").filter(|u| !u.is_null())).collect();
        assert_eq!(usage.len(), usize::from(include_usage), "usage only when asked for");
        let streamed_lp: usize =
            chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array()).map(Vec::len).sum();
        assert_eq!(streamed_lp, 5);
        let x = log.wait(before + k + 1).await.last().cloned().unwrap();
        assert_eq!(x.request_id, chunks[0]["id"].as_str().unwrap());
        assert_eq!(x.completion_tokens, 5);
    }
    assert_eq!(log.exposures.lock().unwrap().len(), before + 2);

    // The upstream's own errors pass through; an arm nobody answers is a 502.
    let (status, e) = g
        .post(
            "/v1/chat/completions",
            &json!({"model": "exp", "messages": question("img0.png"),
                                                             "user": "user-0", "n": 99}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("n must be"), "{e}");
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/v1/chat/completions", closed.local_addr().unwrap());
    drop(closed);
    let l = Arc::new(MemoryLog::default());
    let g2 = start_with(None, move |c| {
        c.ab = Some(mmloop_serve::AbConfig {
            name: "exp".into(),
            seed: "exp".into(),
            arms: vec![
                mmloop_serve::Arm {
                    name: "gone".into(),
                    target: mmloop_serve::ArmTarget::Upstream(mmloop_serve::Upstream {
                        chat_url: dead,
                        model: "m".into(),
                        api_key: None,
                    }),
                },
                mmloop_serve::Arm { name: "here".into(), target: mmloop_serve::ArmTarget::Upstream(up("lora")) },
            ],
            weights: vec![0.5, 0.5],
            log: l,
        });
    })
    .await;
    let mut statuses = std::collections::BTreeSet::new();
    for u in 0..8 {
        let (status, e) = g2
            .post(
                "/v1/chat/completions",
                &json!({"model": "exp", "messages": question("img0.png"), "max_tokens": 2,
                                                  "user": format!("user-{u}")}),
            )
            .await;
        if status == 502 {
            assert_eq!(e["error"]["type"], "BadGatewayError", "{e}");
        }
        statuses.insert(status);
    }
    assert_eq!(statuses.into_iter().collect::<Vec<_>>(), [200, 502]);
}

/// Exposures are written after the answer is sent; feedback on an answer whose exposure is
/// still being written waits for it instead of failing with a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_right_after_an_answer_finds_it_on_a_slow_log() {
    let log = Arc::new(MemoryLog { delay: std::time::Duration::from_millis(300), ..Default::default() });
    let l = log.clone();
    let s = start(move |c| {
        c.ab = Some(mmloop_serve::AbConfig {
            name: "exp2".into(),
            seed: "exp2".into(),
            arms: vec![
                mmloop_serve::Arm { name: "a".into(), target: mmloop_serve::ArmTarget::Local(None) },
                mmloop_serve::Arm { name: "b".into(), target: mmloop_serve::ArmTarget::Local(Some("lora".into())) },
            ],
            weights: vec![0.5, 0.5],
            log: l,
        });
    })
    .await;
    let body = json!({"model": "exp2", "messages": question("img0.png"), "max_tokens": 2, "user": "u1"});
    let (status, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{r}");
    assert!(log.exposures.lock().unwrap().is_empty(), "the answer did not wait for the slow write");
    let (status, f) = s.post("/v1/feedback", &json!({"id": r["id"], "outcome": "reject"})).await;
    assert_eq!(status, 200, "{f}");
    assert_eq!(
        log.outcomes.lock().unwrap().as_slice(),
        [(r["id"].as_str().unwrap().to_string(), "reject".to_string())]
    );
}

/// An upstream that misbehaves on purpose, one way per model name (the happy path is the real
/// `mmloop serve` of the test above): what the gateway must not pass off as an answer.
async fn odd_upstream() -> String {
    use axum::response::IntoResponse;
    async fn chat(axum::Json(b): axum::Json<Value>) -> axum::response::Response {
        let sse = |body: &'static str| ([("content-type", "text/event-stream")], body).into_response();
        match b["model"].as_str().unwrap_or_default() {
            "not-a-completion" => axum::Json(json!([1, 2])).into_response(),
            "error-with-200" => axum::Json(json!({"error": {"message": "overloaded"}})).into_response(),
            "bad-key" => (axum::http::StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"message": "bad key"}})))
                .into_response(),
            "bad-request" => (
                axum::http::StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"message": "max_tokens is too large", "type": "BadRequestError"}})),
            )
                .into_response(),
            // CRLF line ends, a keep-alive comment, usage on the last choice chunk, and no blank
            // line after [DONE].
            "crlf" => sse(concat!(
                ": ping\r\n\r\n",
                "data: {\"id\":\"u1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n",
                "data: {\"id\":\"u1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"red\"},\"logprobs\":{\"content\":[{\"token\":\"red\",\"logprob\":-0.1,\"top_logprobs\":[{\"token\":\"red\",\"logprob\":-0.1},{\"token\":\"blue\",\"logprob\":-2.5}]}]},\"finish_reason\":null}]}\r\n\r\n",
                "data: {\"id\":\"u1\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,\"total_tokens\":8}}\r\n\r\n",
                "data: [DONE]"
            )),
            // The answer stops mid-way.
            "broken" => sse(
                "data: {\"id\":\"u2\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"re\"},\"logprobs\":{\"content\":[{\"token\":\"re\",\"logprob\":-0.2}]},\"finish_reason\":null}]}\n\n",
            ),
            // One token, then a pause the client does not wait out.
            "slow" => {
                let first = "data: {\"id\":\"u3\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"re\"},\"logprobs\":{\"content\":[{\"token\":\"re\",\"logprob\":-0.2}]},\"finish_reason\":null}]}\n\n";
                let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(first.to_string())]).chain(
                    futures::stream::once(async {
                        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
                        Ok(": still here\n\n".to_string())
                    }),
                );
                ([("content-type", "text/event-stream")], axum::body::Body::from_stream(body)).into_response()
            }
            // A whole answer where a stream was asked for.
            _ => axum::Json(json!({"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}]}))
                .into_response(),
        }
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/chat/completions", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn gateway_to(chat_url: &str, model: &str, log: Arc<MemoryLog>) -> Running {
    let up = mmloop_serve::Upstream { chat_url: chat_url.into(), model: model.into(), api_key: None };
    start_with(None, move |c| {
        c.ab = Some(mmloop_serve::AbConfig {
            name: "exp".into(),
            seed: "exp".into(),
            arms: vec![mmloop_serve::Arm { name: "only".into(), target: mmloop_serve::ArmTarget::Upstream(up) }],
            weights: vec![1.0],
            log,
        });
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_tells_upstream_faults_from_the_clients_and_relays_odd_streams() {
    let url = odd_upstream().await;
    let ask = json!({"model": "exp", "messages": [{"role": "user", "content": "What colour?"}], "user": "u"});
    for (model, want) in [("not-a-completion", 502), ("error-with-200", 502), ("bad-key", 502), ("bad-request", 400)] {
        let log = Arc::new(MemoryLog::default());
        let g = gateway_to(&url, model, log.clone()).await;
        let (status, e) = g.post("/v1/chat/completions", &ask).await;
        assert_eq!(status, want, "{model}: {e}");
        let message = e["error"]["message"].as_str().unwrap();
        if want == 502 {
            assert_eq!(e["error"]["type"], "BadGatewayError", "{e}");
            assert!(message.contains("\"only\""), "names the arm: {message}");
        } else {
            assert_eq!(message, "max_tokens is too large", "the upstream's words");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(log.exposures.lock().unwrap().is_empty(), "{model}: no answer, no exposure");
    }
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    // A whole answer to a streamed request is not relayed as a stream.
    let log = Arc::new(MemoryLog::default());
    let g = gateway_to(&url, "whole-for-stream", log.clone()).await;
    assert_eq!(g.post("/v1/chat/completions", &streamed).await.0, 502);

    // CRLF, a keep-alive, usage on the last choice chunk, no blank line at the end.
    let log = Arc::new(MemoryLog::default());
    let g = gateway_to(&url, "crlf", log.clone()).await;
    let r = g.http.post(format!("{}/v1/chat/completions", g.url)).json(&streamed).send().await.unwrap();
    let text = r.text().await.unwrap();
    assert!(text.contains(": keep-alive"), "{text}");
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "red");
    let ext = chunks.iter().find_map(|c| c["choices"][0].get("mmloop")).expect("scored");
    assert!((ext["confidence"].as_f64().unwrap() - (-0.1f64).exp()).abs() < 1e-9, "{ext}");
    assert!(chunks.iter().all(|c| c["choices"][0]["logprobs"].is_null()), "not asked for");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "not asked for");
    let x = log.wait(1).await.remove(0);
    assert_eq!((x.prompt_tokens, x.completion_tokens), (7, 1), "usage read from a choice chunk");

    // Broken off: the client is told, and the exposure is kept with what was sent.
    let log = Arc::new(MemoryLog::default());
    let g = gateway_to(&url, "broken", log.clone()).await;
    let lines = g.stream(&streamed).await;
    assert_eq!(lines.last().map(String::as_str), Some("[DONE]"));
    let err: Value = serde_json::from_str(&lines[lines.len() - 2]).unwrap();
    assert_eq!(err["error"]["type"], "BadGatewayError", "{err}");
    assert_eq!(log.wait(1).await[0].completion_tokens, 1);

    // A client that goes away mid-answer: the exposure is kept all the same.
    let log = Arc::new(MemoryLog::default());
    let g = gateway_to(&url, "slow", log.clone()).await;
    let mut r = g.http.post(format!("{}/v1/chat/completions", g.url)).json(&streamed).send().await.unwrap();
    assert!(r.chunk().await.unwrap().is_some());
    drop(r);
    let x = log.wait(1).await.remove(0);
    assert_eq!(x.completion_tokens, 1, "what was sent before the client left");
}
