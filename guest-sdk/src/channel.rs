//! A request made on an allowed connection, as a policy's `check_channel` sees it: the
//! type is the wire crate's (the host uses the same one); here it is made from the
//! WIT bindings.

use crate::bindings;
pub use portcullis_wire::ChannelRequest;

impl From<bindings::ChannelRequest> for ChannelRequest {
    fn from(r: bindings::ChannelRequest) -> Self {
        use bindings::ChannelRequest as W;
        match r {
            W::Shell => ChannelRequest::Shell,
            W::Exec(command) => ChannelRequest::Exec { command },
            W::Subsystem(name) => ChannelRequest::Subsystem { name },
            W::DirectTcpip((host, port)) => ChannelRequest::DirectTcpip { host, port },
            W::TcpipForward((address, port)) => ChannelRequest::TcpipForward { address, port },
            W::AgentForwarding => ChannelRequest::AgentForwarding,
            W::X11Forwarding => ChannelRequest::X11Forwarding,
            W::Env((name, value)) => ChannelRequest::Env { name, value },
        }
    }
}
