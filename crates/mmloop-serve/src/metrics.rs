//! Prometheus metrics under vLLM's names and buckets (label `model_name`), so dashboards
//! built for vLLM read an mmloop server unchanged.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// vLLM's buckets for time to first token.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];
/// vLLM's request latency buckets (end-to-end and queue time).
const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];

struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Histogram {
        Histogram { buckets, counts: vec![0; buckets.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.buckets.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.buckets.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{label},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{label}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{label}}} {}", self.count);
    }
}

struct Histograms {
    ttft: Histogram,
    e2e: Histogram,
    queue: Histogram,
}

/// The server's counters.
pub struct Metrics {
    label: String,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    finished_stop: AtomicU64,
    finished_length: AtomicU64,
    finished_abort: AtomicU64,
    /// Requests whose images are being fetched and prepared (waiting, to a dashboard).
    preparing: AtomicUsize,
    histograms: Mutex<Histograms>,
}

/// One finished sequence, as the metrics count it.
pub struct Finished {
    pub prompt_tokens: usize,
    pub generation_tokens: usize,
    pub finish_reason: String,
    pub queued: Duration,
    /// From arrival to the first token.
    pub ttft: Duration,
    pub e2e: Duration,
}

impl Metrics {
    pub fn new(model_name: &str) -> Metrics {
        let escaped = model_name.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        Metrics {
            label: format!("model_name=\"{escaped}\""),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            finished_stop: AtomicU64::new(0),
            finished_length: AtomicU64::new(0),
            finished_abort: AtomicU64::new(0),
            preparing: AtomicUsize::new(0),
            histograms: Mutex::new(Histograms {
                ttft: Histogram::new(TTFT_BUCKETS),
                e2e: Histogram::new(LATENCY_BUCKETS),
                queue: Histogram::new(LATENCY_BUCKETS),
            }),
        }
    }

    pub fn preparing(&self) -> usize {
        self.preparing.load(Ordering::SeqCst)
    }

    /// Counts a request as waiting while it is prepared; the guard stops counting it.
    pub fn preparing_guard(&self) -> PreparingGuard<'_> {
        self.preparing.fetch_add(1, Ordering::SeqCst);
        PreparingGuard(self)
    }

    pub fn finished(&self, f: &Finished) {
        self.prompt_tokens.fetch_add(f.prompt_tokens as u64, Ordering::Relaxed);
        self.generation_tokens.fetch_add(f.generation_tokens as u64, Ordering::Relaxed);
        match f.finish_reason.as_str() {
            "stop" => &self.finished_stop,
            "length" => &self.finished_length,
            _ => &self.finished_abort,
        }
        .fetch_add(1, Ordering::Relaxed);
        let mut h = self.histograms.lock().expect("metrics");
        h.ttft.observe(f.ttft.as_secs_f64());
        h.e2e.observe(f.e2e.as_secs_f64());
        h.queue.observe(f.queued.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self, running: usize, waiting: usize) -> String {
        let l = &self.label;
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{l}}} {v}");
        };
        gauge("vllm:num_requests_running", "Number of requests in model execution batches.", running);
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{l}}} {v}");
        };
        counter(
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            self.generation_tokens.load(Ordering::Relaxed),
        );
        let name = "vllm:request_success_total";
        let _ = writeln!(out, "# HELP {name} Count of successfully processed requests.\n# TYPE {name} counter");
        for (reason, c) in
            [("stop", &self.finished_stop), ("length", &self.finished_length), ("abort", &self.finished_abort)]
        {
            let _ = writeln!(out, "{name}{{{l},finished_reason=\"{reason}\"}} {}", c.load(Ordering::Relaxed));
        }
        let h = self.histograms.lock().expect("metrics");
        h.ttft.render(&mut out, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", l);
        h.e2e.render(&mut out, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", l);
        h.queue.render(
            &mut out,
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            l,
        );
        out
    }
}

pub struct PreparingGuard<'a>(&'a Metrics);

impl Drop for PreparingGuard<'_> {
    fn drop(&mut self) {
        self.0.preparing.fetch_sub(1, Ordering::SeqCst);
    }
}
