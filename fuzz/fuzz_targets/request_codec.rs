//! Fuzz target: the connection request as a policy module decodes it. What decodes
//! encodes to bytes that decode to the same request.
#![no_main]

use portcullis_wire::ConnectionRequest;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = ConnectionRequest::decode(data) {
        let bytes = request.encode();
        assert_eq!(ConnectionRequest::decode(&bytes), Ok(request));
    }
});
