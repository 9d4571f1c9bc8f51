use serde_json::{Value, json};

use super::*;

const ZONE_CP: &str = "system:serviceaccount:causeway-system:causeway-zone-cp";

fn recorded() -> Value {
    let path = format!(
        "{}/testdata/admission-create-meshtimeout.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("JSON")
}

/// The answer to `review`, as the API server would read it.
fn ask(review: &Value) -> Value {
    let body = serde_json::to_vec(review).expect("serializes");
    answer(&body, ZONE_CP).expect("an answer")["response"].clone()
}

/// The recorded review, changed.
fn with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut r = recorded();
    edit(&mut r["request"]);
    r
}

#[test]
fn a_valid_policy_from_kubectl_is_allowed() {
    let review = recorded();
    let body = serde_json::to_vec(&review).expect("serializes");
    let answered = answer(&body, ZONE_CP).expect("an answer");
    assert_eq!(answered["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answered["kind"], "AdmissionReview");
    assert_eq!(
        answered["response"],
        json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
    );
}

#[test]
fn an_invalid_policy_is_refused_with_the_apis_field_errors() {
    let review = with(|req| {
        req["object"]["spec"]["to"][0]["default"]["connectionTimeout"] = json!("soon");
        req["object"]["metadata"]["labels"]["causeway.io/mesh"] = json!("Payments");
    });
    let response = ask(&review);
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 422);
    assert_eq!(response["status"]["reason"], "Invalid");
    let message = response["status"]["message"].as_str().expect("a message");
    for expected in [
        "metadata.labels.causeway.io/mesh: ",
        "spec.to[0].default.connectionTimeout: invalid duration \"soon\"",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} not in:\n{message}"
        );
    }
    // What Causeway lacks is refused with the API's reason.
    let gateway = with(|req| {
        req["object"]["spec"]["targetRef"] = json!({"kind": "MeshGateway", "name": "edge"})
    });
    let message = ask(&gateway)["status"]["message"]
        .as_str()
        .expect("a message")
        .to_owned();
    assert!(message.starts_with("spec.targetRef"), "{message}");
    assert!(
        message.contains("Causeway has no gateways yet"),
        "{message}"
    );
}

#[test]
fn what_global_synced_in_is_read_only_to_users_but_not_to_the_control_plane() {
    let synced = |req: &mut Value| {
        req["object"]["metadata"]["labels"]["causeway.io/origin"] = json!("global");
    };
    // Creating one as if it came from global, changing one, deleting one.
    let create = with(synced);
    let update = with(|req| {
        synced(req);
        req["operation"] = json!("UPDATE");
        req["oldObject"] = req["object"].clone();
        req["object"]["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("causeway.io/origin");
    });
    let delete = with(|req| {
        synced(req);
        req["operation"] = json!("DELETE");
        req["oldObject"] = req["object"].take();
    });
    for review in [&create, &update, &delete] {
        let response = ask(review);
        assert_eq!(response["allowed"], false, "{review}");
        assert_eq!(response["status"]["code"], 403);
        let message = response["status"]["message"].as_str().expect("a message");
        assert!(
            message.contains("synced from the global control plane"),
            "{message}"
        );
        assert!(message.contains("\"backend-timeouts\""), "{message}");
    }
    for mut review in [create, update, delete] {
        review["request"]["userInfo"]["username"] = json!(ZONE_CP);
        assert_eq!(ask(&review)["allowed"], true);
    }
    // A zone's own policy may be deleted by its users.
    let own = with(|req| {
        req["operation"] = json!("DELETE");
        req["oldObject"] = req["object"].take();
    });
    assert_eq!(ask(&own)["allowed"], true);
}

#[test]
fn only_policies_are_written_by_users() {
    for (kind, owner) in [
        ("Dataplane", "zone control plane"),
        ("ZoneIngress", "zone control plane"),
        ("VirtualIp", "allocates it"),
        ("Mesh", "global control plane"),
        ("Drill", "global control plane"),
    ] {
        let review = with(|req| {
            req["object"]["kind"] = json!(kind);
            req["object"]["spec"] = json!({});
        });
        let response = ask(&review);
        assert_eq!(response["allowed"], false, "{kind}");
        assert_eq!(response["status"]["code"], 403, "{kind}");
        let message = response["status"]["message"].as_str().expect("a message");
        assert!(message.contains(owner), "{kind}: {message}");
    }
}

#[test]
fn a_review_that_is_not_one_gets_no_answer() {
    assert!(matches!(
        answer(b"{", ZONE_CP),
        Err(BadReview::Malformed(_))
    ));
    assert!(matches!(
        answer(
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
            ZONE_CP
        ),
        Err(BadReview::Malformed(_))
    ));
    // Not UTF-8, in a field the webhook does not read: still not JSON.
    let mut body = serde_json::to_vec(&recorded()).expect("serializes");
    let at = body
        .windows(8)
        .position(|w| w == b"v1alpha1")
        .expect("a version string");
    body[at + 4] = 0x8f;
    assert!(matches!(
        answer(&body, ZONE_CP),
        Err(BadReview::Malformed(_))
    ));
    let mut old = recorded();
    old["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let body = serde_json::to_vec(&old).expect("serializes");
    assert_eq!(
        answer(&body, ZONE_CP),
        Err(BadReview::Version("admission.k8s.io/v1beta1".into()))
    );
}
