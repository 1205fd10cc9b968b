//! Kubernetes: the fake API server (`drhost_tests::fake_kube`) held to the
//! real `kubectl`, and drhost's live backend (`LiveK8s`, kube-rs) against
//! that fake: every operation, its error mapping and retries, asserting on
//! the results and on the fake's store and request log; and `drhost exec
//! k8s` / `drhost doctor` end to end.

#[path = "kubernetes/cli.rs"]
mod cli;
#[path = "kubernetes/kubectl.rs"]
mod kubectl;
#[path = "kubernetes/live.rs"]
mod live;
