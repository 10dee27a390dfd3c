//! Testing a policy natively: `cargo test` runs its logic on the build machine, with no
//! wasm and no host.
//!
//! ```
//! use portcullis_policy::prelude::*;
//! use portcullis_policy::testing::{self, ConnectionRequest};
//!
//! #[derive(Deserialize)]
//! struct Sre {
//!     group: String,
//! }
//!
//! impl Policy for Sre {
//!     fn decide(&self, request: &ConnectionRequest) -> Decision {
//!         if request.identity.in_group(&self.group) {
//!             Decision::allow(["root"])
//!         } else {
//!             Decision::no_match()
//!         }
//!     }
//! }
//!
//! let policy: Sre = testing::config("group = \"sre\"");
//! let request = ConnectionRequest::builder()
//!     .user("jdoe@example.com")
//!     .group("sre")
//!     .target("10.0.0.5:22")
//!     .login("root")
//!     .at("2026-11-23T09:30:00Z")
//!     .build();
//! let decision = policy.decide(&request);
//! assert_eq!(decision.verdict, Verdict::Allow);
//! assert_eq!(decision.principals, ["root"]);
//! ```
//!
//! A `#[policy]` function is an ordinary function too: call it with the request (and
//! its configuration).

pub use portcullis_wire::{ConnectionRequest, RequestBuilder};

use serde::de::DeserializeOwned;

/// The policy's configuration from TOML text, read exactly as the host's
/// `NAME.toml` is (unknown keys refused where the type says so).
///
/// # Panics
/// With the error the operator would see, if the text does not fit the type.
#[allow(
    clippy::panic,
    reason = "a test helper: the panic is the test's failure"
)]
pub fn config<P: DeserializeOwned>(toml: &str) -> P {
    match try_config(toml) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// As [`config`], returning the error (to test that a bad configuration is refused).
pub fn try_config<P: DeserializeOwned>(toml: &str) -> Result<P, String> {
    crate::config::parse(crate::ConfigFormat::Toml, toml)
}
