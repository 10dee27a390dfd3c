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

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::testing::ConnectionRequest;

    #[test]
    fn the_local_part_is_the_only_login() {
        let request = ConnectionRequest::builder()
            .user("jdoe@example.com")
            .login("root")
            .build();
        let d = decide(&request);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.principals, ["jdoe"]);
    }
}
