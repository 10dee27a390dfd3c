//! A valid component, but not a policy: it exports a world of its own.

wit_bindgen::generate!({
    inline: "package test:other@1.0.0; world other { export run: func() -> u32; }",
});

struct Other;

impl Guest for Other {
    fn run() -> u32 {
        42
    }
}

export!(Other);
