//! Requests made on an allowed connection, as policies see them.

/// A request made on an allowed connection: what the user wants to run or forward.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case", tag = "kind"))]
pub enum ChannelRequest {
    /// An interactive shell.
    Shell,
    /// A command (`ssh host COMMAND`; also how `scp -O` and rsync run).
    Exec {
        /// The command line as the client sent it.
        command: String,
    },
    /// A subsystem such as `sftp` (which `scp` uses by default).
    Subsystem {
        /// The subsystem's name.
        name: String,
    },
    /// Local port forwarding (`ssh -L`): a connection from the target's side to
    /// `host:port`.
    DirectTcpip {
        /// The host to connect to, as the client named it.
        host: String,
        /// The port to connect to.
        port: u16,
    },
    /// Remote port forwarding (`ssh -R`): the target listens on `address:port`.
    TcpipForward {
        /// The address to listen on, as the client named it.
        address: String,
        /// The port (0: the target picks one).
        port: u16,
    },
    /// Agent forwarding (`ssh -A`).
    AgentForwarding,
    /// X11 forwarding (`ssh -X`, `ssh -Y`).
    X11Forwarding,
    /// An environment variable the client sends (`SendEnv`, `SetEnv`). Without an
    /// opinion from any module it goes on to the target, whose `AcceptEnv` applies.
    Env {
        /// The variable's name, e.g. `LANG`.
        name: String,
        /// Its value.
        value: String,
    },
}
