//! The default mapping: `jdoe@example.com` may log in as `jdoe`, and only as `jdoe`.
//!
//! It decides every connection, so it belongs last in the policy directory (for
//! example `90-default-principal.wasm`): modules before it can block, audit or map
//! differently, and it allows what none of them matched.

use portcullis_policy::prelude::*;

#[policy]
fn decide(request: &ConnectionRequest) -> Decision {
    let login = request.identity.local_part();
    if login.is_empty() {
        return Decision::block("the identity has no email local part to log in as");
    }
    Decision::allow([login]).with_reason("default: email local part")
}
