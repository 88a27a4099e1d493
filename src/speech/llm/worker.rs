//! The intent scorer of live calls, run by the inference scheduler. A call's agent asks it
//! through the [`TurnScorer`] trait and waits for the answer at most a set time; the model runs
//! only as a live job on the scheduler's workers (never on the call's thread or an async
//! runtime's), and a model that is late, busy or failed to load leaves the turn to the rules.
//!
//! Loading is a background job, so starting the scorer costs the call nothing: it loads the
//! model, prepares the label sets of the script's choice slots (their prompt and calibration),
//! and then serves. A turn asked while it loads waits for it within the same time limit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::agent::script::SlotType;
use crate::agent::understand::{choice_labels, Label, Scored, ScorerError, TurnScorer};
use crate::agent::Script;
use crate::speech::scheduler::{CancelToken, Priority, Scheduler};

use super::{LanguageModel, LlmError, LlmScorer};

/// The loaded scorer, or why it could not load; `None` while loading.
type Loaded = Option<Result<Arc<LlmScorer>, String>>;

/// Where the background load leaves the scorer, and a signal for turns waiting for it.
#[derive(Default)]
struct Ready {
    scorer: Mutex<Loaded>,
    loaded: Condvar,
}

impl Ready {
    fn set(&self, loaded: Result<Arc<LlmScorer>, String>) {
        *self.scorer.lock().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
        self.loaded.notify_all();
    }

    /// The scorer once loaded, waiting at most until `deadline`.
    fn wait(&self, deadline: Instant) -> Result<Arc<LlmScorer>, ScorerError> {
        let mut scorer = self.scorer.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*scorer {
                Some(Ok(s)) => return Ok(Arc::clone(s)),
                Some(Err(e)) => return Err(ScorerError::Unavailable(e.clone())),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ScorerError::Unavailable(
                    "the language model is still loading".into(),
                ));
            }
            scorer = self
                .loaded
                .wait_timeout(scorer, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// A [`TurnScorer`] whose model runs on the inference scheduler. Cheap to share
/// (`Arc<dyn TurnScorer>`).
pub struct LiveScorer {
    ready: Arc<Ready>,
    scheduler: Arc<Scheduler>,
    timeout: Duration,
}

impl std::fmt::Debug for LiveScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveScorer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl LiveScorer {
    /// Queues the background job that loads the GGUF model at `model` and prepares the label
    /// sets of `script`'s choice slots. Each [`TurnScorer::rank`] waits at most `timeout` for
    /// its answer. Fails at once only when the model file is missing or the scheduler refuses
    /// the job.
    pub fn start(
        model: PathBuf,
        script: &Script,
        timeout: Duration,
        scheduler: Arc<Scheduler>,
    ) -> Result<LiveScorer, LlmError> {
        if !model.is_file() {
            return Err(LlmError::Io {
                path: model,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let label_sets: Vec<Vec<Label>> = script
            .slots
            .iter()
            .filter(|s| s.kind == SlotType::Choice)
            .map(choice_labels)
            .collect();
        let ready = Arc::new(Ready::default());
        let loading = Arc::clone(&ready);
        scheduler
            .submit(Priority::Background, &CancelToken::new(), move || {
                loading.set(load(&model, &label_sets).map_err(|e| e.to_string()))
            })
            .map_err(|e| LlmError::Invalid(format!("cannot load the scorer: {e}")))?;
        Ok(LiveScorer {
            ready,
            scheduler,
            timeout,
        })
    }
}

/// Loads the model and prepares the label sets.
fn load(model: &Path, label_sets: &[Vec<Label>]) -> Result<Arc<LlmScorer>, LlmError> {
    let started = Instant::now();
    let loaded = LanguageModel::load(model).and_then(|m| {
        let scorer = LlmScorer::new(Arc::new(m))?;
        for labels in label_sets {
            scorer.prepare(labels)?;
        }
        Ok(Arc::new(scorer))
    });
    match &loaded {
        Ok(_) => tracing::info!(
            label_sets = label_sets.len(),
            ready_ms = started.elapsed().as_millis() as u64,
            "intent scorer ready"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "the intent scorer could not start; the rules decide alone")
        }
    }
    loaded
}

impl TurnScorer for LiveScorer {
    fn rank(&self, utterance: &str, labels: &[Label]) -> Result<Vec<Scored>, ScorerError> {
        let deadline = Instant::now() + self.timeout;
        let scorer = self.ready.wait(deadline)?;
        if Scheduler::on_worker() {
            return scorer.rank(utterance, labels);
        }
        let (utterance, labels) = (utterance.to_string(), labels.to_vec());
        let ticket = self
            .scheduler
            .submit(Priority::Live, &CancelToken::new(), move || {
                scorer.rank(&utterance, &labels)
            })
            .map_err(|e| ScorerError::Unavailable(e.to_string()))?;
        let left = deadline.saturating_duration_since(Instant::now());
        ticket.wait_timeout(left).unwrap_or_else(|e| {
            // Not run yet: it never will be; running: its answer is dropped.
            ticket.cancel();
            tracing::warn!(reason = %e, "the intent scorer did not answer; the rules decide");
            Err(ScorerError::Unavailable(e.to_string()))
        })
    }
}
