//! Who answers approvals: the [`Approver`] seam and its implementations.

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::Serialize;

use crate::fixture::lock;

/// Set while a terminal prompt waits for the operator, so progress output
/// does not overwrite it.
pub static PROMPT_ACTIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What is being approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalKind {
    /// A mutating step is about to run.
    Step,
    /// The plugin called `operator.confirm`.
    Confirm,
    /// `drhost run --resume` found a mutating step interrupted with calls
    /// of unknown effect: re-run it?
    Resume,
    /// The plugin called `operator.ask`: the answer is a line of text.
    Text,
}

/// A question for the operator.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRequest {
    /// The step asking.
    pub step: String,
    /// Step approval or in-step confirmation.
    pub kind: ApprovalKind,
    /// The question, as the operator sees it.
    pub question: String,
}

/// The operator's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    /// Yes or no. For a [`ApprovalKind::Text`] question: whether anybody
    /// answered.
    pub approved: bool,
    /// The answer to a [`ApprovalKind::Text`] question.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Who answered: "alice (tty)", "alice (--yes)", "fixture", ...
    pub by: String,
}

/// Answers approval requests. Implementations must not hang when nobody can
/// answer: they refuse.
#[async_trait]
pub trait Approver: Send + Sync {
    /// Asks; returns the answer and who gave it.
    async fn ask(&self, request: &ApprovalRequest) -> Approval;
}

/// The local user's name, for the audit trail.
pub fn operator_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown-user".into())
}

/// Approves everything (`--yes`), recording that it was automatic.
pub struct AutoApprove;

#[async_trait]
impl Approver for AutoApprove {
    async fn ask(&self, request: &ApprovalRequest) -> Approval {
        Approval {
            approved: true,
            // `--yes` says yes; it has nothing to say to a text question.
            text: (request.kind == ApprovalKind::Text).then(String::new),
            by: format!("{} (--yes)", operator_name()),
        }
    }
}

/// Refuses everything: no TTY and no `--yes`, so nobody can answer.
pub struct RefuseApprover;

#[async_trait]
impl Approver for RefuseApprover {
    async fn ask(&self, _: &ApprovalRequest) -> Approval {
        Approval {
            approved: false,
            text: None,
            by: "nobody (no terminal to ask and no --yes; refused)".into(),
        }
    }
}

/// Asks on the terminal (stderr for the question, stdin for the answer).
pub struct TtyApprover;

impl TtyApprover {
    /// A TTY approver if stdin and stderr are terminals.
    pub fn if_terminal() -> Option<TtyApprover> {
        (std::io::stdin().is_terminal() && std::io::stderr().is_terminal()).then_some(TtyApprover)
    }
}

#[async_trait]
impl Approver for TtyApprover {
    async fn ask(&self, request: &ApprovalRequest) -> Approval {
        let question = request.question.clone();
        let text_question = request.kind == ApprovalKind::Text;
        PROMPT_ACTIVE.store(true, std::sync::atomic::Ordering::SeqCst);
        let line = tokio::task::spawn_blocking(move || {
            let mut err = std::io::stderr();
            if text_question {
                let _ = write!(err, "\n?? {question}\n> ");
            } else {
                let _ = write!(err, "\n?? {question} [y/N] ");
            }
            let _ = err.flush();
            let mut line = String::new();
            match std::io::stdin().lock().read_line(&mut line) {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(line.trim().to_owned()),
            }
        })
        .await
        .unwrap_or(None);
        PROMPT_ACTIVE.store(false, std::sync::atomic::Ordering::SeqCst);
        let by = format!("{} (tty)", operator_name());
        if text_question {
            return Approval {
                approved: line.is_some(),
                text: line,
                by,
            };
        }
        let yes = line.is_some_and(|l| matches!(l.to_ascii_lowercase().as_str(), "y" | "yes"));
        Approval {
            approved: yes,
            text: None,
            by,
        }
    }
}

/// Answers from a script (test fixtures): `operator.confirm` answers in
/// order, step approvals by a flag; when the script runs out, the fallback
/// answers.
pub struct ScriptedApprover {
    confirms: Mutex<VecDeque<bool>>,
    answers: Mutex<VecDeque<String>>,
    approve_steps: Option<bool>,
    think_time: std::time::Duration,
    fallback: Box<dyn Approver>,
}

impl ScriptedApprover {
    /// Scripted answers to `confirm` and `ask` take `think_time` (simulated
    /// in drills: see [`crate::sim`]).
    pub fn with_think_time(mut self, think_time: std::time::Duration) -> Self {
        self.think_time = think_time;
        self
    }

    /// A scripted approver: `confirms` answer `operator.confirm`, `answers`
    /// answer `operator.ask`, in order.
    pub fn new(
        confirms: Vec<bool>,
        answers: Vec<String>,
        approve_steps: Option<bool>,
        fallback: Box<dyn Approver>,
    ) -> Self {
        ScriptedApprover {
            confirms: Mutex::new(confirms.into()),
            answers: Mutex::new(answers.into()),
            approve_steps,
            think_time: std::time::Duration::ZERO,
            fallback,
        }
    }
}

#[async_trait]
impl Approver for ScriptedApprover {
    async fn ask(&self, request: &ApprovalRequest) -> Approval {
        let scripted = match request.kind {
            ApprovalKind::Step | ApprovalKind::Resume => self.approve_steps.map(|a| (a, None)),
            ApprovalKind::Confirm => lock(&self.confirms).pop_front().map(|a| (a, None)),
            ApprovalKind::Text => lock(&self.answers).pop_front().map(|t| (true, Some(t))),
        };
        match scripted {
            Some((approved, text)) => {
                if !matches!(request.kind, ApprovalKind::Step | ApprovalKind::Resume) {
                    crate::sim::sleep(self.think_time).await;
                }
                Approval {
                    approved,
                    text,
                    by: "fixture".into(),
                }
            }
            None => self.fallback.ask(request).await,
        }
    }
}
