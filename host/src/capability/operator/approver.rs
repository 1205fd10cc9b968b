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
    /// Yes or no.
    pub approved: bool,
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
    async fn ask(&self, _: &ApprovalRequest) -> Approval {
        Approval {
            approved: true,
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
        PROMPT_ACTIVE.store(true, std::sync::atomic::Ordering::SeqCst);
        let answer = tokio::task::spawn_blocking(move || {
            let mut err = std::io::stderr();
            let _ = write!(err, "\n?? {question} [y/N] ");
            let _ = err.flush();
            let mut line = String::new();
            match std::io::stdin().lock().read_line(&mut line) {
                Ok(_) => matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
                Err(_) => false,
            }
        })
        .await
        .unwrap_or(false);
        PROMPT_ACTIVE.store(false, std::sync::atomic::Ordering::SeqCst);
        Approval {
            approved: answer,
            by: format!("{} (tty)", operator_name()),
        }
    }
}

/// Answers from a script (test fixtures): `operator.confirm` answers in
/// order, step approvals by a flag; when the script runs out, the fallback
/// answers.
pub struct ScriptedApprover {
    confirms: Mutex<VecDeque<bool>>,
    approve_steps: Option<bool>,
    fallback: Box<dyn Approver>,
}

impl ScriptedApprover {
    /// A scripted approver.
    pub fn new(
        confirms: Vec<bool>,
        approve_steps: Option<bool>,
        fallback: Box<dyn Approver>,
    ) -> Self {
        ScriptedApprover {
            confirms: Mutex::new(confirms.into()),
            approve_steps,
            fallback,
        }
    }
}

#[async_trait]
impl Approver for ScriptedApprover {
    async fn ask(&self, request: &ApprovalRequest) -> Approval {
        let scripted = match request.kind {
            ApprovalKind::Step => self.approve_steps,
            ApprovalKind::Confirm => lock(&self.confirms).pop_front(),
        };
        match scripted {
            Some(approved) => Approval {
                approved,
                by: "fixture".into(),
            },
            None => self.fallback.ask(request).await,
        }
    }
}
