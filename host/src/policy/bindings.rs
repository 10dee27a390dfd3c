//! The `portcullis:policy` world, as wasmtime host bindings. Nothing else lives here:
//! the rest of the host converts to and from its own types at the engine's boundary.

wasmtime::component::bindgen!({
    world: "policy",
    path: "../wit",
});
