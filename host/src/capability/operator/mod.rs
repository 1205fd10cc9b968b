//! The `operator` capability: approvals (`confirm`, and the runner's
//! approval of mutating steps, which take the same path) and notifications.
//!
//! Who answers is an injected [`Approver`]: an interactive prompt on a TTY,
//! `--yes`, a refusal when nobody can answer (never a hang), or a script from
//! a test fixture. Every answer is audited with who gave it.

pub mod approver;
pub mod mock;
pub mod webhook;

pub use approver::{
    Approval, ApprovalRequest, Approver, AutoApprove, RefuseApprover, ScriptedApprover, TtyApprover,
};

use async_trait::async_trait;

use crate::bindings::CapError;
use crate::bindings::operator::Host;
use crate::instance::PluginCtx;
use crate::policy::Op;

/// Notification channels behind `operator.notify`.
#[async_trait]
pub trait NotifyBackend: Send + Sync {
    /// Posts `message` to `channel`.
    async fn notify(&self, channel: &str, message: &str) -> Result<(), CapError>;
    /// Whether a failed delivery to `channel` fails the plugin's call. When
    /// not, the failure is still audited as the call's outcome, and the
    /// plugin gets `ok` (a status page being down must not stop a
    /// recovery). Default: every failure is returned.
    fn must_deliver(&self, _channel: &str) -> bool {
        true
    }
}

#[async_trait]
impl NotifyBackend for super::Unavailable {
    async fn notify(&self, _: &str, _: &str) -> Result<(), CapError> {
        Err(self.err("notify"))
    }
}

impl Host for PluginCtx {
    async fn confirm(&mut self, question: String) -> wasmtime::Result<Result<bool, CapError>> {
        let Some(gate) = self.gate_handle() else {
            return Ok(Err(crate::instance::no_capabilities()));
        };
        let step = self.step_id().to_owned();
        let ask = async {
            let answer = gate
                .approve(ApprovalRequest {
                    step: step.clone(),
                    kind: approver::ApprovalKind::Confirm,
                    question: question.clone(),
                })
                .await;
            answer.map(|a| a.approved)
        };
        self.call(
            Op::OperatorConfirm {
                question: &question,
            },
            ask,
            None,
        )
        .await
    }

    async fn ask(&mut self, question: String) -> wasmtime::Result<Result<String, CapError>> {
        let Some(gate) = self.gate_handle() else {
            return Ok(Err(crate::instance::no_capabilities()));
        };
        let step = self.step_id().to_owned();
        let ask = async {
            let answer = gate
                .approve(ApprovalRequest {
                    step: step.clone(),
                    kind: approver::ApprovalKind::Text,
                    question: question.clone(),
                })
                .await?;
            match answer.text {
                Some(text) if answer.approved => Ok(text),
                _ => Err(CapError::Denied(format!(
                    "nobody answered the question ({}); run interactively or script an answer",
                    answer.by
                ))),
            }
        };
        self.call(
            Op::OperatorAsk {
                question: &question,
            },
            ask,
            None,
        )
        .await
    }

    async fn notify(
        &mut self,
        channel: String,
        message: String,
    ) -> wasmtime::Result<Result<(), CapError>> {
        let b = self.caps().notify.clone();
        let op = Op::OperatorNotify {
            channel: &channel,
            message: &message,
        };
        let dry = async { Ok(()) };
        let result = self
            .call(op, b.notify(&channel, &message), Some(Box::pin(dry)))
            .await?;
        Ok(match result {
            // Best-effort channel: the audit already holds the failure.
            Err(CapError::Unavailable(e) | CapError::Failed(e) | CapError::TimedOut(e))
                if !b.must_deliver(&channel) =>
            {
                tracing::warn!(
                    channel,
                    "notification not delivered (best-effort channel): {e}"
                );
                Ok(())
            }
            other => other,
        })
    }
}
