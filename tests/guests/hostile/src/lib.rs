//! Misbehaves according to the user's email local part; no-match for anyone else:
//! `loop@`: runs forever; `alloc@`: allocates 1 GiB; `trap@`: panics (a trap);
//! `files@`: reads /etc/passwd (a WASI call it is not granted); `badlogin@`: allows
//! with a malformed principal; `nologin@`: allows with no principal;
//! `escape@`: blocks with terminal escape sequences in its reason; `bigreason@`: blocks
//! with a 1 MiB reason; `manylogins@`: allows with 20,000 principals; `biglog@`: logs a
//! 1 MiB message; `toomany@`: allows with 300 valid principals.

use portcullis_policy::prelude::*;

#[policy]
fn decide(request: &ConnectionRequest) -> Decision {
    match request.identity.local_part() {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "alloc" => {
            let v = vec![1u8; 1 << 30];
            Decision::allow([format!("u{}", std::hint::black_box(v).len())])
        }
        "trap" => panic!("deliberate trap"),
        "files" => match std::fs::read_to_string("/etc/passwd") {
            Ok(text) => Decision::allow([text.lines().next().unwrap_or("root").to_string()]),
            Err(e) => Decision::block(format!("no file access: {e}")),
        },
        "badlogin" => Decision::allow(["root,admin"]),
        "nologin" => Decision::allow(Vec::<String>::new()),
        "escape" => Decision::block("\x1b[2J\x1b[31mgotcha\x07"),
        "bigreason" => Decision::block("x".repeat(1 << 20)),
        "manylogins" => Decision::allow((0..20_000).map(|i| format!("u{i}"))),
        "biglog" => {
            portcullis_policy::log::info(&"y".repeat(1 << 20));
            Decision::allow(["biglog"])
        }
        "toomany" => Decision::allow((0..300).map(|i| format!("u{i}"))),
        _ => Decision::no_match(),
    }
}
