//! The russh server `Handler`: one per client connection (and one per inner
//! connection of a ProxyJump). Callbacks stay thin: they hand the work to the stages
//! (`decide`, `target_login`, `crate::channels`) and to per-channel tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use russh::keys::ssh_key::PublicKey;
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId};

use super::Shared;
use super::decide::{self, Asked};
use super::error::SessionError;
use super::session::{self as decided, Connection, Via};
use super::username_form::parse_user;
use super::watchdogs::{Credential, Watch};
use crate::identity::Identity;
use crate::policy::ChannelRequest;
use crate::sync::lock;

/// How long a channel request waits for the target's answer before it is refused.
const REPLY_WAIT: Duration = Duration::from_secs(60);

/// How long a connection the proxy disconnects has to close before it is cut.
pub(super) const DISCONNECT_GRACE: Duration = Duration::from_secs(5);

/// Where a connection stands.
#[derive(Debug)]
pub(super) enum Stage {
    /// Not authenticated yet.
    Connecting,
    /// Authenticated and not decided: an outer ProxyJump connection stays here (it
    /// only carries direct-tcpip channels).
    Authenticated {
        identity: Identity,
        /// What let the user in: a listed key, or a single sign-on login.
        credential: Credential,
        /// The users file in force when the key was identified (see
        /// `watchdogs::Recheck`).
        users_generation: u64,
    },
    /// Refused before a decision (a user name that names no valid target).
    Refused(SessionError),
    /// Decided: allowed, or refused with the reason.
    Decided(decided::Session),
}

/// One client connection.
pub(crate) struct ConnHandler {
    pub(super) shared: Arc<Shared>,
    pub(super) conn: Connection,
    /// The target of an inner ProxyJump connection.
    pub(super) forced_target: Option<(String, u16)>,
    /// The SSH user name, once the client authenticated.
    pub(super) user: String,
    pub(super) stage: Stage,
    /// What the connection's watchdogs read (see [`ConnHandler::serve`]).
    pub(super) watch: Arc<Watch>,
    /// The connection's place under the admission limits (none for the inner connection
    /// of a ProxyJump, which runs inside an admitted one).
    pub(super) ticket: Option<super::admission::Ticket>,
    /// When the connection was accepted: authentication is due `auth_timeout` later.
    pub(super) accepted: tokio::time::Instant,
    /// The session channels open on this connection.
    pub(super) session_channels: HashMap<ChannelId, SessionChannel>,
    /// The channels open on this connection (see `opens::MAX_CHANNELS`).
    pub(super) open_channels: Arc<std::sync::atomic::AtomicUsize>,
    /// Single sign-on in progress (see `sign_on`).
    pub(super) sign_on: super::sign_on::SignOn,
}

/// What the handler keeps of an open session channel until it closes.
#[derive(Debug)]
pub(super) struct SessionChannel {
    /// The target's answers to its requests, in order.
    replies: tokio::sync::mpsc::UnboundedReceiver<bool>,
    /// Its place among the connection's channels, given back when it closes.
    _place: super::opens::ChannelPlace,
}

impl ConnHandler {
    /// A connection that came `via` a way in; `forced_target` is the target when the
    /// way in names it (ProxyJump's channel, a redirected connection's destination).
    pub(crate) fn new(
        shared: Arc<Shared>,
        peer: std::net::SocketAddr,
        forced_target: Option<(String, u16)>,
        via: Via,
    ) -> Self {
        ConnHandler {
            shared,
            conn: Connection::new(peer, via),
            forced_target,
            user: String::new(),
            stage: Stage::Connecting,
            watch: Arc::default(),
            ticket: None,
            accepted: tokio::time::Instant::now(),
            session_channels: HashMap::new(),
            open_channels: Arc::default(),
            sign_on: Default::default(),
        }
    }

    /// Gives the connection its admission ticket (see `server::admission`).
    pub(crate) fn with_ticket(mut self, ticket: super::admission::Ticket) -> Self {
        self.ticket = Some(ticket);
        self
    }

    /// The allowed session, if this connection has one.
    fn allowed(&self) -> Option<&decided::Session> {
        match &self.stage {
            Stage::Decided(s) if s.refusal.is_none() => Some(s),
            _ => None,
        }
    }

    /// Answers the client's request on `channel` with the target's answer.
    ///
    /// russh knows whether the client wanted a reply only while this handler runs for
    /// the request (its flag is the last request's), so the answer is given here and
    /// not from the bridge: the connection waits for the target meanwhile, which keeps
    /// every reply with its own request. When the proxy itself refuses (policy, target
    /// unreachable), it says why on the channel (message, exit status 1, close) and the
    /// request is answered yes, so that the client reads that before it exits; so is a
    /// channel whose bridge ended without an answer. A target that does not answer in
    /// time gets a no.
    async fn relay_reply(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        if self.next_reply(channel).await {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    /// The bridge's answer to the channel's next request (see [`Self::relay_reply`]).
    async fn next_reply(&mut self, channel: ChannelId) -> bool {
        match self.session_channels.get_mut(&channel) {
            Some(c) => match tokio::time::timeout(REPLY_WAIT, c.replies.recv()).await {
                Ok(answer) => answer.unwrap_or(true),
                Err(_) => false,
            },
            None => false,
        }
    }

    /// Who a key belongs to: the users file first, then a live single sign-on login.
    fn identify(&self, key: &PublicKey) -> Option<(Identity, Credential)> {
        if let Some(identity) = self.shared.identities.load().identify(key) {
            return Some((identity, Credential::Key(key.clone())));
        }
        let (identity, login) = self.shared.sso.as_ref()?.identify(key)?;
        Some((identity, Credential::Login(login)))
    }

    /// The user is who `identity` says: the connection moves on to the decision,
    /// unless the user holds too many connections already (told on the session
    /// channel, rather than as a failed authentication).
    pub(super) fn authenticated(
        &mut self,
        user: &str,
        identity: Identity,
        credential: Credential,
        users_generation: u64,
    ) {
        self.user = user.to_string();
        if let Some(ticket) = &mut self.ticket
            && let Err(why) = self.shared.admission.authenticated(ticket, &identity.email)
        {
            self.shared.metrics.not_admitted(why);
            tracing::warn!(peer = %self.conn.peer, user = %identity.email, "too many connections for this user");
            self.stage = Stage::Refused(SessionError::TooManyConnections {
                limit: self
                    .shared
                    .config
                    .admission
                    .max_connections_per_user
                    .unwrap_or(0),
            });
            return;
        }
        self.stage = Stage::Authenticated {
            identity,
            credential,
            users_generation,
        };
    }

    /// Decides the session once authentication succeeded.
    async fn decide(&mut self, client_version: String) {
        // A connection refused at authentication (too many connections, a failed
        // single sign-on) keeps its refusal.
        if !matches!(self.stage, Stage::Authenticated { .. }) {
            return;
        }
        let Stage::Authenticated {
            identity,
            credential,
            users_generation,
        } = std::mem::replace(&mut self.stage, Stage::Connecting)
        else {
            return;
        };
        let (login, target) = match &self.forced_target {
            Some(t) => (self.user.clone(), Some(t.clone())),
            None => match parse_user(&self.user) {
                Ok(u) => (u.login, u.target),
                Err(e) => {
                    self.stage = Stage::Refused(SessionError::BadUserName(e));
                    return;
                }
            },
        };
        let Some((host, port)) = target else {
            // An outer ProxyJump connection: it only carries direct-tcpip channels.
            self.stage = Stage::Authenticated {
                identity,
                credential,
                users_generation,
            };
            return;
        };
        let host = match super::target_name::canonical_host(&host) {
            Ok(host) => host,
            Err(e) => {
                tracing::info!(session_id = %self.conn.id, "refused: {e}");
                self.stage = Stage::Refused(e.into());
                return;
            }
        };
        let asked = Asked {
            login,
            host,
            port,
            client_version,
        };
        let mut session = decide::decide(
            &self.shared,
            &self.conn,
            identity,
            asked,
            &self.watch.traffic,
        )
        .await;
        super::session_record::start(
            &self.shared,
            &self.conn,
            &mut session,
            &self.watch,
            credential,
            users_generation,
        )
        .await;
        self.stage = Stage::Decided(session);
    }
}

// russh awaits these methods inside the future that handles one packet, which is as
// large as the largest of them and which the patched russh (third_party/README.md)
// allocates for every packet, data included: the heavy ones (deciding, single
// sign-on, forwarding, a ProxyJump's inner connection) are boxed so that it stays
// small (they were about 40 KiB, then held in each connection's task for its life).
impl russh::server::Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // With single sign-on, any key is worth proving: the login binds to it.
        if self.identify(offer.public_key).is_some() || self.signs_on() {
            return Ok(Auth::Accept);
        }
        let fp = offer
            .public_key
            .fingerprint(russh::keys::ssh_key::HashAlg::Sha256);
        let user = crate::text::escape(user);
        tracing::info!(peer = %self.conn.peer, %user, %fp, "unknown key offered; refused");
        self.shared.metrics.unknown_key();
        Ok(Auth::reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        // Taken before the lookup: a reload from here on is one the decision may miss.
        let users_generation = *self.shared.users_swapped.borrow();
        match self.identify(key.public_key) {
            Some((identity, credential)) => {
                self.authenticated(user, identity, credential, users_generation);
                Ok(Auth::Accept)
            }
            None if self.signs_on() => {
                self.shared.metrics.unknown_key();
                Ok(self.key_for_sign_on(key.public_key))
            }
            None => {
                let user = crate::text::escape(user);
                tracing::warn!(peer = %self.conn.peer, %user, "unknown key refused");
                self.shared.metrics.unknown_key();
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(Box::pin(self.sign_on(user, response)).await)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        // A failed single sign-on is accepted only to say why on the session channel.
        let refused_sign_on = matches!(self.stage, Stage::Refused(SessionError::SignOn(_)));
        self.watch
            .authenticated
            .store(!refused_sign_on, Ordering::Relaxed);
        let version = String::from_utf8_lossy(session.remote_sshid()).into_owned();
        Box::pin(self.decide(version)).await;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let handle = session.handle();
        let id = channel.id();
        let Some(place) = self.channel_place() else {
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        };
        reply.accept().await;
        let (replies, replies_rx) = tokio::sync::mpsc::unbounded_channel();
        self.session_channels.insert(
            id,
            SessionChannel {
                replies: replies_rx,
                _place: place,
            },
        );
        let refused = match &self.stage {
            Stage::Decided(s) => match &s.refusal {
                None => {
                    self.start_session_channel(s, channel, handle, replies);
                    return Ok(());
                }
                Some(why) => {
                    s.live.closed_because(why);
                    why.user_message()
                }
            },
            Stage::Refused(why) => why.user_message(),
            Stage::Connecting | Stage::Authenticated { .. } => {
                SessionError::NoTarget.user_message()
            }
        };
        tokio::spawn(async move { crate::channels::refuse(&handle, id, &refused).await });
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.session_channels.remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    /// Agent forwarding, if the decision permits it and the policies consent (the
    /// bridge asks them and the target); russh replies with the answer.
    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.next_reply(channel).await)
    }

    /// X11 forwarding, if the decision permits it and the policies consent (the bridge
    /// asks them and the target).
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.relay_reply(channel, session).await
    }

    /// `ssh -R`: a port on the target's side forwarded back to the client, if the
    /// decision permits port forwarding and the policies consent.
    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Ok(port16) = u16::try_from(*port) else {
            return Ok(false);
        };
        let request = ChannelRequest::TcpipForward {
            address: address.to_string(),
            port: port16,
        };
        let (Some(target), Some(s)) = (
            Box::pin(self.forwarding_target("tcpip-forward", request)).await,
            self.allowed(),
        ) else {
            return Ok(false);
        };
        *lock(&s.target.back.remote_forwards) = Some(session.handle());
        match target.tcpip_forward(address.to_string(), *port).await {
            Ok(bound) => {
                if *port == 0 {
                    *port = bound;
                }
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(session_id = %self.conn.id, %address, port, "the target refused the remote forward: {e}");
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let target = match self.allowed() {
            Some(s) => s.target.current().await,
            None => None,
        };
        Ok(match target {
            Some(t) => t
                .cancel_tcpip_forward(address.to_string(), port)
                .await
                .is_ok(),
            None => false,
        })
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(port) = u16::try_from(port_to_connect) else {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let Some(place) = self.channel_place() else {
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        };
        match &self.stage {
            // Port forwarding (`-L`) on a decided session: to the target's side.
            Stage::Decided(_) => {
                Box::pin(self.forward_local(channel, host_to_connect, port, reply, place)).await
            }
            // ProxyJump: the inner SSH connection is terminated here.
            Stage::Authenticated { .. } if self.forced_target.is_none() => {
                Box::pin(self.jump(channel, host_to_connect, port, reply, place)).await;
            }
            // The outer connection of a ProxyJump refused at authentication: a channel
            // refusal carries no text, a disconnection does (OpenSSH shows it).
            Stage::Refused(why) => {
                let message = format!("portcullis: {}", why.user_message());
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                session.disconnect(russh::Disconnect::ByApplication, &message, "en")?;
            }
            _ => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
            }
        }
        Ok(())
    }
}

impl Drop for ConnHandler {
    fn drop(&mut self) {
        if let Stage::Decided(session) = std::mem::replace(&mut self.stage, Stage::Connecting) {
            super::session_record::finish(
                Arc::clone(&self.shared),
                self.conn.clone(),
                session,
                Arc::clone(&self.watch),
            );
        }
    }
}
