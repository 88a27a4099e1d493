//! The intent scorer of live calls on its own thread. A call's agent asks it through the
//! [`TurnScorer`] trait and waits for the answer at most a set time; the model runs only on the
//! scorer's thread (never on the call's thread or an async runtime's), requests wait in a small
//! bounded queue, and a model that is late, busy or failed to load leaves the turn to the rules.
//!
//! The thread loads the model itself, so starting it costs the call nothing: it then prepares
//! the label sets of the script's choice slots (their prompt and calibration), and serves.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::script::SlotType;
use crate::agent::understand::{choice_labels, Label, Scored, ScorerError, TurnScorer};
use crate::agent::Script;

use super::{LanguageModel, LlmError, LlmScorer};

/// Requests that may wait for the scorer; more are refused at once (the rules decide).
const QUEUE: usize = 4;

type Answer = Result<Vec<Scored>, ScorerError>;

struct Request {
    utterance: String,
    labels: Vec<Label>,
    answer: mpsc::Sender<Answer>,
}

/// A [`TurnScorer`] whose model runs on a dedicated thread. Cheap to share (`Arc<dyn TurnScorer>`);
/// the thread ends when the last handle is dropped.
#[derive(Debug)]
pub struct ScorerThread {
    requests: SyncSender<Request>,
    timeout: Duration,
}

impl ScorerThread {
    /// Starts the thread, which loads the GGUF model at `model`, prepares the label sets of
    /// `script`'s choice slots, then answers requests. Each [`TurnScorer::rank`] waits at most
    /// `timeout` for its answer. Fails at once only when the model file is missing.
    pub fn spawn(
        model: PathBuf,
        script: &Script,
        timeout: Duration,
    ) -> Result<ScorerThread, LlmError> {
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
        let (requests, incoming) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("llm-scorer".into())
            .spawn(move || serve(model, label_sets, incoming))
            .map_err(|e| LlmError::Invalid(format!("cannot start the scorer thread: {e}")))?;
        Ok(ScorerThread { requests, timeout })
    }
}

/// The scorer thread: load, prepare, then answer until every handle is gone.
fn serve(model: PathBuf, label_sets: Vec<Vec<Label>>, incoming: Receiver<Request>) {
    let started = Instant::now();
    let scorer = LanguageModel::load(&model).and_then(|m| {
        let scorer = LlmScorer::new(Arc::new(m))?;
        for labels in &label_sets {
            scorer.prepare(labels)?;
        }
        Ok(scorer)
    });
    match &scorer {
        Ok(_) => tracing::info!(
            label_sets = label_sets.len(),
            ready_ms = started.elapsed().as_millis() as u64,
            "intent scorer ready"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "the intent scorer could not start; the rules decide alone")
        }
    }
    for request in incoming {
        let answer = match &scorer {
            Ok(s) => s.rank(&request.utterance, &request.labels),
            Err(e) => Err(ScorerError::Unavailable(e.to_string())),
        };
        // The call may have stopped waiting: nobody to tell.
        let _ = request.answer.send(answer);
    }
}

impl TurnScorer for ScorerThread {
    fn rank(&self, utterance: &str, labels: &[Label]) -> Result<Vec<Scored>, ScorerError> {
        let (answer, answered) = mpsc::channel();
        let request = Request {
            utterance: utterance.to_string(),
            labels: labels.to_vec(),
            answer,
        };
        match self.requests.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ScorerError::Unavailable("the scorer is busy".into()))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ScorerError::Unavailable("the scorer thread stopped".into()))
            }
        }
        answered.recv_timeout(self.timeout).unwrap_or_else(|e| {
            let why = match e {
                mpsc::RecvTimeoutError::Timeout => {
                    format!("no answer within {} ms", self.timeout.as_millis())
                }
                mpsc::RecvTimeoutError::Disconnected => "the scorer thread stopped".into(),
            };
            tracing::warn!(reason = %why, "the intent scorer did not answer; the rules decide");
            Err(ScorerError::Unavailable(why))
        })
    }
}
