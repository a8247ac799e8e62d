//! The label that keeps kube-proxy's DaemonSet off a migrated node: `sluice migrate apply` asks
//! the agent to set `sluice.io/kube-proxy=replaced` on its Node (with the agent's own API
//! credentials, which the CLI on the node may not have), `rollback` to remove it. The DaemonSet's
//! nodeAffinity that honours it is in docs/design/migration.md.

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::KubeSource;

pub const LABEL: &str = "sluice.io/kube-proxy";
pub const REPLACED: &str = "replaced";

/// The JSON merge patch that sets the label (`replaced`) or removes it.
pub fn patch(replaced: bool) -> serde_json::Value {
    serde_json::json!({"metadata": {"labels": {LABEL: if replaced { Some(REPLACED) } else { None }}}})
}

impl KubeSource {
    /// Set or remove the label on `node` (a merge patch: other labels are untouched, and a
    /// repeat is a no-op).
    pub async fn label_node(&self, node: &str, replaced: bool) -> Result<(), kube::Error> {
        label(self.client.clone(), node, replaced).await
    }
}

async fn label(client: kube::Client, node: &str, replaced: bool) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client);
    api.patch(node, &PatchParams::default(), &Patch::Merge(patch(replaced))).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    /// kube's real client against a mock apiserver that records the request and answers as an
    /// apiserver does (the patched Node, or 403 for a role without `patch` on nodes).
    async fn call(replaced: bool, status: u16) -> (Result<(), kube::Error>, String, String, String, serde_json::Value) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a request");
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let ctype = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let body = req.into_body().collect_bytes().await.expect("body");
            let body: serde_json::Value = serde_json::from_slice(&body).expect("json body");
            let answer = if status == 200 {
                serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {LABEL: REPLACED}}})
            } else {
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                    "message": "nodes \"node-1\" is forbidden: User \"system:serviceaccount:kube-system:sluice\" cannot patch resource \"nodes\""})
            };
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                    .expect("resp"),
            );
            (method, path, ctype, body)
        });
        let res = label(kube::Client::new(svc, "default"), "node-1", replaced).await;
        let (method, path, ctype, body) = server.await.expect("server");
        (res, method, path, ctype, body)
    }

    #[tokio::test]
    async fn the_label_is_merge_patched_onto_the_node_and_removed_with_null() {
        let (res, method, path, ctype, body) = call(true, 200).await;
        res.expect("patched");
        assert_eq!((method.as_str(), path.as_str()), ("PATCH", "/api/v1/nodes/node-1"));
        assert_eq!(ctype, "application/merge-patch+json");
        assert_eq!(body, serde_json::json!({"metadata": {"labels": {"sluice.io/kube-proxy": "replaced"}}}));
        let (_, _, _, _, body) = call(false, 200).await;
        assert_eq!(body, serde_json::json!({"metadata": {"labels": {"sluice.io/kube-proxy": null}}}));
    }

    #[tokio::test]
    async fn a_forbidden_patch_is_an_error_naming_the_permission() {
        let (res, ..) = call(true, 403).await;
        let e = res.expect_err("forbidden").to_string();
        assert!(e.contains("cannot patch resource \"nodes\""), "{e}");
    }
}
