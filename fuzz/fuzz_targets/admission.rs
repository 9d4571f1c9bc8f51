//! The Kubernetes zone's validating webhook on any body: an AdmissionReview the API
//! server (or anything that reaches the webhook's port) sends. It must answer or refuse
//! the body, never panic; an answer echoes the request's uid; and a write it allows from
//! a user is a resource the API accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;

const CONTROL_PLANE: &str = "system:serviceaccount:causeway-system:causeway-zone-cp";

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = causeway_k8s::admission::answer(data, CONTROL_PLANE) else {
        return;
    };
    let review: serde_json::Value = serde_json::from_slice(data).expect("it was answered, so it parsed");
    let request = &review["request"];
    assert_eq!(answer["response"]["uid"], request["uid"], "the uid is echoed");
    let allowed = answer["response"]["allowed"].as_bool().expect("allowed is a bool");
    let user = request["userInfo"]["username"].as_str().unwrap_or_default();
    let op = request["operation"].as_str().unwrap_or_default();
    if allowed && user != CONTROL_PLANE && matches!(op, "CREATE" | "UPDATE") {
        let object = &request["object"];
        if object.is_object() && object["kind"].is_string() {
            let r = causeway_k8s::object::resource_of(object).expect("an allowed object converts");
            assert!(causeway_api::validate(&r).is_ok(), "an allowed object is valid");
        }
    }
});
