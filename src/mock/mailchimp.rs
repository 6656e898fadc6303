//! Mailchimp's asynchronous batches: submitted, pending until a status request reports them
//! finished, then their per-operation results.

use std::collections::HashMap;

use serde_json::{json, Value};

/// One submitted batch.
#[derive(Debug)]
struct Job {
    total: usize,
    errored: usize,
    results: Vec<Value>,
    asked: u32,
}

/// The batches of one `/3.0/batches` route.
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    jobs: HashMap<String, Job>,
    pending: usize,
}

impl Jobs {
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// Takes a pending place for a batch on its way in; false when `max` are taken. The
    /// place is taken before the batch is decided, so concurrent submissions cannot pass
    /// the cap together.
    pub(crate) fn reserve(&mut self, max: usize) -> bool {
        if self.pending >= max {
            return false;
        }
        self.pending += 1;
        true
    }

    /// Gives back a place taken by a batch that was then refused (429, 503).
    pub(crate) fn release(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// Records a batch, its place already reserved, whose operations were applied with
    /// these `results` (one `{"status_code", "operation_id", "response"}` each); returns
    /// the 200 answer.
    pub(crate) fn submit(&mut self, id: String, results: Vec<Value>) -> Value {
        let errored = results
            .iter()
            .filter(|r| r["status_code"].as_u64().is_some_and(|s| s >= 400))
            .count();
        let total = results.len();
        self.jobs.insert(
            id.clone(),
            Job {
                total,
                errored,
                results,
                asked: 0,
            },
        );
        json!({"id": id, "status": "pending", "total_operations": total,
               "finished_operations": 0, "errored_operations": 0, "response_body_url": ""})
    }

    /// `GET {route}/{id}`: the first request for a batch sees it `started`, every later one
    /// `finished`, with its counts and `results_url`; `None` for an unknown id.
    pub(crate) fn status(&mut self, id: &str, results_url: String) -> Option<Value> {
        let job = self.jobs.get_mut(id)?;
        job.asked += 1;
        if job.asked == 1 {
            return Some(
                json!({"id": id, "status": "started", "total_operations": job.total,
                               "finished_operations": 0, "errored_operations": 0,
                               "response_body_url": ""}),
            );
        }
        if job.asked == 2 {
            self.pending -= 1;
        }
        Some(
            json!({"id": id, "status": "finished", "total_operations": job.total,
                    "finished_operations": job.total, "errored_operations": job.errored,
                    "response_body_url": results_url}),
        )
    }

    /// The results of a finished batch.
    pub(crate) fn results(&self, id: &str) -> Option<Value> {
        let job = self.jobs.get(id).filter(|j| j.asked >= 2)?;
        Some(Value::Array(job.results.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_pending_until_reported_finished() {
        let mut jobs = Jobs::default();
        assert!(jobs.reserve(1));
        assert!(!jobs.reserve(1));
        let results = vec![
            json!({"status_code": 200, "operation_id": "a", "response": "{}"}),
            json!({"status_code": 400, "operation_id": "b", "response": "{}"}),
        ];
        assert_eq!(jobs.submit("b1".into(), results)["status"], "pending");
        assert_eq!(jobs.pending(), 1);
        assert_eq!(jobs.status("b1", "u".into()).unwrap()["status"], "started");
        assert!(jobs.results("b1").is_none());
        let finished = jobs.status("b1", "u".into()).unwrap();
        assert_eq!(
            (&finished["status"], &finished["errored_operations"]),
            (&json!("finished"), &json!(1))
        );
        assert_eq!(jobs.pending(), 0);
        jobs.status("b1", "u".into());
        assert_eq!(jobs.pending(), 0);
        assert_eq!(jobs.results("b1").unwrap().as_array().unwrap().len(), 2);
        assert!(jobs.status("nope", "u".into()).is_none());
    }
}
