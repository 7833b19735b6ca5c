//! Which requests may be inside mistralrs at the same time.
//!
//! mistralrs 0.8.1 batches whatever is waiting when nothing runs (its `Fixed(n)` limit is
//! not applied then) and buckets sequences by prompt length only; for vision models that
//! breaks in family-specific ways, found with `tests/parity.rs`:
//! - Qwen2-VL / Qwen2.5-VL: two image prompts in one step fail (`get_rope_index` takes one
//!   sequence per step: "shape mismatch in index-select");
//! - Qwen3-VL: two image prompts of equal length but different image sizes in one step kill
//!   the engine thread (`Tensor::cat` of their pixel values); equal sizes batch correctly;
//! - Idefics3 and Qwen3-VL: batched answers are not always the single-request answers (the
//!   fixtures show a different token at step 6 and 7 respectively, where the reference's
//!   top-1/top-2 gap is 0.29 and over 0.05 nats: not rounding), and a batched sequence can
//!   be sampled once more after it finished.
//!
//! So the backend admits requests itself, one at a time by default. With a larger limit
//! (`--max-batch-size`, not for Qwen2/2.5-VL), requests share the engine only with requests
//! whose images have the same sizes (after [`super::pixels`]). A request keeps its place until its answer is
//! back. Waiting requests of another shape stop further same-shape admissions, so none
//! waits forever.

use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    shape: Vec<(u32, u32)>,
    inside: usize,
    /// Requests waiting because their shape differs from the one inside.
    blocked: usize,
}

pub struct Admission {
    limit: usize,
    state: Mutex<State>,
    changed: Notify,
}

/// A place inside the engine; given back on drop.
pub struct Place<'a> {
    gate: &'a Admission,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock().expect("admission lock");
        s.inside -= 1;
        drop(s);
        self.gate.changed.notify_waiters();
    }
}

impl Admission {
    /// `limit`: how many same-shape requests may share the engine (1: one at a time).
    pub fn new(limit: usize) -> Admission {
        Admission { limit: limit.max(1), state: Mutex::new(State::default()), changed: Notify::new() }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Waits for a place for a request whose images have sizes `shape`.
    pub async fn enter(&self, shape: Vec<(u32, u32)>) -> Place<'_> {
        let mut counted = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().expect("admission lock");
                let fits = s.inside == 0 || (s.shape == shape && s.inside < self.limit && (s.blocked == 0 || counted));
                if fits {
                    if counted {
                        s.blocked -= 1;
                    }
                    if s.inside == 0 {
                        s.shape = shape;
                    }
                    s.inside += 1;
                    return Place { gate: self };
                }
                if !counted && s.shape != shape {
                    s.blocked += 1;
                    counted = true;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn same_shapes_share_up_to_the_limit_and_others_wait() {
        let gate = Arc::new(Admission::new(3));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mixed = Arc::new(AtomicUsize::new(0));
        let shape_now = Arc::new(Mutex::new(Vec::new()));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..24u32 {
            let (gate, inside, most, mixed, shape_now) =
                (gate.clone(), inside.clone(), most.clone(), mixed.clone(), shape_now.clone());
            set.spawn(async move {
                let shape = vec![(i % 2, 1)];
                let _p = gate.enter(shape.clone()).await;
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                {
                    let mut s = shape_now.lock().unwrap();
                    if n > 1 && *s != shape {
                        mixed.fetch_add(1, Ordering::SeqCst);
                    }
                    *s = shape;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(mixed.load(Ordering::SeqCst), 0, "two shapes were inside at once");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn one_at_a_time() {
        let gate = Admission::new(1);
        let a = gate.enter(vec![]).await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), gate.enter(vec![])).await;
        assert!(waiting.is_err());
        drop(a);
        let _b = gate.enter(vec![(1, 1)]).await;
    }
}
