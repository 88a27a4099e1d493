//! Keeping an inference scheduler's workers busy, so that jobs queued meanwhile wait in its
//! queues and their order, cancellation or refusal can be seen.

use std::sync::{Arc, Barrier};

use callbox::speech::scheduler::{CancelToken, Priority, Scheduler, Ticket};

/// `workers` jobs holding as many workers until [`Busy::release`].
pub struct Busy {
    gate: Arc<Barrier>,
    jobs: Vec<Ticket<()>>,
}

/// Occupies `workers` workers of `scheduler` (all of them, for the queues to fill).
pub fn occupy(scheduler: &Scheduler, workers: usize) -> Busy {
    let started = Arc::new(Barrier::new(workers + 1));
    let gate = Arc::new(Barrier::new(workers + 1));
    let jobs = (0..workers)
        .map(|_| {
            let (s, g) = (Arc::clone(&started), Arc::clone(&gate));
            scheduler
                .submit(Priority::Live, &CancelToken::new(), move || {
                    s.wait();
                    g.wait();
                })
                .expect("the scheduler takes the job")
        })
        .collect();
    started.wait();
    Busy { gate, jobs }
}

impl Busy {
    /// Lets the held workers go on to the queued jobs.
    pub fn release(self) {
        self.gate.wait();
        for job in self.jobs {
            job.wait().expect("the holding job ends");
        }
    }
}
