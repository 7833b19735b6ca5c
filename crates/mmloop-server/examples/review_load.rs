//! Load generator for the review server: N simulated reviewers, each looping
//! `POST /api/items/next` → `POST /api/items/{id}/decision` (accept) for a bounded time, on a
//! server this machine runs. Reports p50/p90/p99/max latency of both calls and saves per
//! second. It only ever talks to the URL given, and stops by itself.
//!
//! ```sh
//! cargo run --release -p mmloop-server --example review_load -- \
//!     --url http://127.0.0.1:8080 --token ADMIN_API_TOKEN --reviewers 32 --seconds 30
//! ```
//!
//! With an admin token it creates token-only reviewer accounts `bench-rNN` (or reuses them)
//! and an API token for each; `tools/bench/review_bench.sh` sets everything up.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Args {
    url: String,
    token: String,
    reviewers: usize,
    seconds: u64,
    warmup: u64,
    query: String,
    /// Time a reviewer spends looking at an item before deciding (0: a closed loop at full speed).
    think_ms: u64,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        token: String::new(),
        reviewers: 32,
        seconds: 30,
        warmup: 3,
        query: String::new(),
        think_ms: 0,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--url" => a.url = v().trim_end_matches('/').to_string(),
            "--token" => a.token = v(),
            "--reviewers" => a.reviewers = v().parse().expect("--reviewers N"),
            "--seconds" => a.seconds = v().parse().expect("--seconds N"),
            "--warmup" => a.warmup = v().parse().expect("--warmup N"),
            "--query" => a.query = v(),
            "--think-ms" => a.think_ms = v().parse().expect("--think-ms N"),
            "--json" => a.json = true,
            other => panic!("unknown argument {other}; see the doc comment of review_load.rs"),
        }
    }
    assert!(!a.token.is_empty(), "--token ADMIN_API_TOKEN is required");
    for url in a.url.split(',') {
        assert!(
            url.starts_with("http://127.") || url.starts_with("http://localhost") || url.starts_with("http://[::1]"),
            "this load generator only targets servers on this machine"
        );
    }
    a
}

async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = c.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    match rb.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

#[derive(Default)]
struct Samples {
    next_us: Vec<u64>,
    save_us: Vec<u64>,
    conflicts: u64,
    errors: u64,
    empty: bool,
}

impl Samples {
    /// Counts a failed call; each reviewer prints its first one (status 0: no HTTP answer).
    fn error(&mut self, status: u16, reply: &Value) {
        if self.errors == 0 {
            eprintln!("error: status {status}: {reply}");
        }
        self.errors += 1;
    }
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

/// The admin password `review_serve` set: `MMLOOP_ADMIN_PASSWORD`, or its default.
fn admin_password() -> String {
    std::env::var("MMLOOP_ADMIN_PASSWORD").unwrap_or_else(|_| "bench admin password".into())
}

#[tokio::main]
async fn main() {
    let mut a = args();
    // Several servers of one project (`--url A,B,C`): reviewer i talks to server i mod n.
    let urls: Vec<String> = a.url.split(',').map(|u| u.trim_end_matches('/').to_string()).collect();
    a.url = urls[0].clone();
    let admin = reqwest::Client::new();
    // Reviewer accounts and their tokens.
    let mut tokens = Vec::new();
    for i in 0..a.reviewers {
        let name = format!("bench-r{i:02}");
        let (s, b) = call(
            &admin,
            reqwest::Method::POST,
            &format!("{}/api/users", a.url),
            &a.token,
            Some(json!({"name": name, "role": "reviewer"})),
        )
        .await;
        assert!(s == 201 || s == 409, "creating {name}: {s} {b}");
        let (s, b) = call(
            &admin,
            reqwest::Method::POST,
            &format!("{}/api/tokens", a.url),
            &a.token,
            // Minting a token asks for the caller's password again (review_serve's admin).
            Some(json!({"name": "load", "user": name, "password": admin_password()})),
        )
        .await;
        assert_eq!(s, 201, "token for {name}: {b}");
        tokens.push(b["token"].as_str().unwrap().to_string());
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(a.warmup);
    let deadline = measure_from + Duration::from_secs(a.seconds);
    // Items each reviewer holds between being handed one and deciding it: an item handed to a
    // second reviewer meanwhile is counted (the servers must make that impossible).
    let held = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<i64, usize>::new()));
    let leased_twice = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, t) in tokens.into_iter().enumerate() {
        let url = urls[i % urls.len()].clone();
        let (held, leased_twice) = (held.clone(), leased_twice.clone());
        let query = a.query.clone();
        let think = Duration::from_millis(a.think_ms);
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::builder().pool_max_idle_per_host(2).build().unwrap();
            let mut s = Samples::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let (st, item) = call(
                    &c,
                    reqwest::Method::POST,
                    &format!("{url}/api/items/next{query}"),
                    &t,
                    Some(serde_json::json!({})),
                )
                .await;
                let t1 = Instant::now();
                match st {
                    200 => {}
                    204 => {
                        s.empty = true;
                        break;
                    }
                    _ => {
                        s.error(st, &item);
                        continue;
                    }
                }
                if t0 >= measure_from {
                    s.next_us.push((t1 - t0).as_micros() as u64);
                }
                if !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
                let id = item["item"]["id"].as_i64().unwrap();
                if held.lock().unwrap().insert(id, i).is_some() {
                    leased_twice.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let body = json!({
                    "action": "accept",
                    "base": item["item"]["label"]["id"],
                    "candidate_id": item["candidates"][0]["id"],
                    "lead_time_ms": 1500,
                });
                let t2 = Instant::now();
                let (st, reply) =
                    call(&c, reqwest::Method::POST, &format!("{url}/api/items/{id}/decision"), &t, Some(body)).await;
                let t3 = Instant::now();
                held.lock().unwrap().remove(&id);
                match st {
                    200 if t2 >= measure_from && t3 <= deadline => s.save_us.push((t3 - t2).as_micros() as u64),
                    200 => {}
                    409 => s.conflicts += 1,
                    _ => s.error(st, &reply),
                }
            }
            s
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        let s = t.await.unwrap();
        all.next_us.extend(s.next_us);
        all.save_us.extend(s.save_us);
        all.conflicts += s.conflicts;
        all.errors += s.errors;
        all.empty |= s.empty;
    }
    let secs = a.seconds as f64;
    let saves = all.save_us.len();
    let nexts = all.next_us.len();
    let report = json!({
        "reviewers": a.reviewers,
        "servers": urls.len(),
        "leased_twice": leased_twice.load(std::sync::atomic::Ordering::Relaxed),
        "seconds": a.seconds,
        "query": a.query,
        "think_ms": a.think_ms,
        "next_item_ms": {"count": nexts, "p50": pct(&mut all.next_us, 0.5), "p90": pct(&mut all.next_us, 0.9),
                         "p99": pct(&mut all.next_us, 0.99), "max": pct(&mut all.next_us, 1.0)},
        "save_ms": {"count": saves, "p50": pct(&mut all.save_us, 0.5), "p90": pct(&mut all.save_us, 0.9),
                    "p99": pct(&mut all.save_us, 0.99), "max": pct(&mut all.save_us, 1.0)},
        "saves_per_s": saves as f64 / secs,
        "conflicts": all.conflicts,
        "errors": all.errors,
        "queue_ran_dry": all.empty,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    } else {
        let n = &report["next_item_ms"];
        let s = &report["save_ms"];
        println!(
            "{} reviewers, {} s (after {} s warm-up){}",
            a.reviewers,
            a.seconds,
            a.warmup,
            if a.query.is_empty() { String::new() } else { format!(", filter {}", a.query) }
        );
        println!(
            "next-item: {} calls  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            n["count"],
            n["p50"].as_f64().unwrap_or(f64::NAN),
            n["p90"].as_f64().unwrap_or(f64::NAN),
            n["p99"].as_f64().unwrap_or(f64::NAN),
            n["max"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "save:      {} calls  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            s["count"],
            s["p50"].as_f64().unwrap_or(f64::NAN),
            s["p90"].as_f64().unwrap_or(f64::NAN),
            s["p99"].as_f64().unwrap_or(f64::NAN),
            s["max"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "saves/s:   {:.0}   conflicts {}   errors {}   servers {}   items handed to two reviewers {}",
            report["saves_per_s"].as_f64().unwrap(),
            all.conflicts,
            all.errors,
            urls.len(),
            report["leased_twice"]
        );
    }
}
