//! A policy module built against `portcullis:policy@0.1.0` (its WIT is kept in `wit/`),
//! which took the connection request as a record. A current host must refuse it and say
//! that it needs rebuilding.

wit_bindgen::generate!({ world: "policy", path: "wit" });

struct Old;

impl Guest for Old {
    fn configure(_format: ConfigFormat, _text: String) -> Result<(), String> {
        Ok(())
    }

    fn decide(request: ConnectionRequest) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            principals: vec![request.login],
            permissions: Permissions::empty(),
            reason: String::new(),
        }
    }

    fn check_channel(_request: ConnectionRequest, _channel: ChannelRequest) -> ChannelVerdict {
        ChannelVerdict::NoOpinion
    }
}

export!(Old);
