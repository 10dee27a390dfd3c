//! Misbehaves according to the user's email local part; no-match for anyone else:
//! `loop@`: runs forever; `alloc@`: allocates 1 GiB; `trap@`: panics (a trap);
//! `files@`: reads /etc/passwd (a WASI call it is not granted); `badlogin@`: allows
//! with a malformed principal; `nologin@`: allows with no principal;
//! `escape@`: blocks with terminal escape sequences in its reason.

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
        _ => Decision::no_match(),
    }
}
