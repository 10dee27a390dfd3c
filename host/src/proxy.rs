//! Running the proxy: open everything it needs (CA, host key, users, policies, logs),
//! finish what a previous run left behind, accept connections until shutdown, then
//! drain.

use std::future::Future;
use std::sync::Arc;

use crate::config::Config;
use crate::{Error, ca, identity, policy, recording, server};

/// The first wait after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the proxy until `shutdown` completes, then stops accepting and waits up to the
/// configured grace period for sessions to end.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    raise_open_file_limit();
    let ca = ca::Ca::open(&config.ca_dir)?;
    let host_key = ca::load_or_create_host_key(&config.host_key)?;
    let users = identity::UsersFile::load(&config.users_file)?;
    let policy = Arc::new(policy::PolicyEngine::with_signatures(
        &config.policy_dir,
        config.policy_limits,
        config.policy_signatures.clone(),
    )?);
    let reload = policy::watch(Arc::clone(&policy), config.reload_debounce)?;
    let session_log =
        recording::SessionLog::open(&config.session_log).map_err(|source| Error::Io {
            what: "cannot open the session log",
            path: config.session_log.display().to_string(),
            source,
        })?;
    match session_log.recover() {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            count = n,
            "sessions that ran when the proxy stopped were logged as interrupted"
        ),
        Err(e) => tracing::error!("cannot recover the running sessions' records: {e}"),
    }
    let recording_key = match &config.recording_key {
        Some(path) => Some(recording::cmdlog::SealingKey::read(path)?),
        None => None,
    };
    // Finish what a proxy that died mid-session left behind, before taking sessions.
    let recovered = recording::cmdlog::recover(&config.recording_dir)?;
    if !recovered.is_empty() {
        tracing::warn!(
            count = recovered.len(),
            "finalised interrupted command logs"
        );
    }
    // Object storage: refused credentials stop the proxy here, not at the first
    // session; the logs a previous run left on the disk are shipped first.
    let uploads = match &config.recording_store {
        Some(c) => {
            let uploads = recording::store::Uploads::start(c).await?;
            let resumed = uploads.resume_all(&config.recording_dir);
            if resumed > 0 {
                tracing::warn!(
                    count = resumed,
                    "uploading command logs a previous run left on the disk"
                );
            }
            Some(uploads)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Io {
            what: "cannot listen on",
            path: config.listen.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| Error::Io {
        what: "cannot listen on",
        path: config.listen.to_string(),
        source,
    })?;
    let user_count = users.key_count();
    let grace = config.shutdown_grace;
    let state = match &config.state {
        Some(c) => {
            let store = crate::state::Postgres::connect(c)
                .await
                .map_err(Error::State)?;
            match store.recover_own().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(count = n, replica = %store.replica, "this replica's sessions left running by its previous run marked interrupted")
                }
                Err(e) => tracing::error!("cannot recover this replica's running sessions: {e}"),
            }
            tracing::info!(replica = %store.replica, "shared state in PostgreSQL");
            Some(store)
        }
        None => None,
    };
    let sso = match (&config.oidc, &state) {
        (Some(oidc), None) => Some(Arc::new(
            identity::sso::Sso::new(oidc.clone()).map_err(Error::SignOn)?,
        )),
        // With a shared store, the logins are kept there.
        (Some(oidc), Some(state)) => {
            let logins = crate::state::PgLogins::open(Arc::clone(state))
                .await
                .map_err(Error::State)?;
            Some(Arc::new(
                identity::sso::Sso::with_store(oidc.clone(), Box::new(logins))
                    .map_err(Error::SignOn)?,
            ))
        }
        (None, _) => None,
    };
    let shared = server::Shared::new(
        config,
        ca,
        host_key,
        Box::new(users),
        Arc::clone(&policy),
        session_log,
        recording_key,
    );
    let shared = match sso {
        Some(sso) => shared.with_sso(sso),
        None => shared,
    };
    let shared = match &uploads {
        Some(u) => shared.with_uploads(Arc::clone(u)),
        None => shared,
    };
    let shared = Arc::new(match &state {
        Some(state) => {
            tokio::spawn(Arc::clone(state).writer());
            tokio::spawn(Arc::clone(state).heartbeats());
            shared.with_state(Arc::clone(state))
        }
        None => shared,
    });
    // A console on any replica may end a session this one holds.
    if let Some(state) = &shared.state {
        let to = Arc::clone(&shared);
        tokio::spawn(Arc::clone(state).listen_end_requests(move |id, why| {
            // Said before the session is told: it ends on its connection thread, which
            // may have closed the client's connection before this one writes a line.
            if let Some(watch) = to.live.get(id) {
                tracing::warn!(session = %id, %why, "ending a session at another replica's request");
                watch.request_end(why.to_string());
            }
        }));
    }
    let _logins_watch = match &shared.sso {
        Some(sso) => {
            // A provider that is down or misconfigured is worth knowing at start; the
            // proxy serves the users file meanwhile and asks the provider again later.
            let check = Arc::clone(sso);
            tokio::spawn(async move {
                match check.check_provider().await {
                    Ok(()) => {
                        tracing::info!(issuer = %check.config().issuer, "single sign-on ready")
                    }
                    Err(e) => tracing::error!("single sign-on: {e}"),
                }
            });
            match &shared.state {
                // Every replica hears of a change to the logins in the store.
                Some(state) => {
                    let to = Arc::clone(&shared);
                    tokio::spawn(Arc::clone(state).listen_logins(move || {
                        let shared = Arc::clone(&to);
                        // Reading the logins again waits for the database.
                        tokio::task::spawn_blocking(move || shared.refresh_logins());
                    }));
                    None
                }
                None => {
                    Some(crate::reload::watch_logins(Arc::clone(&shared)).map_err(Error::SignOn)?)
                }
            }
        }
        None => None,
    };
    let metrics = match shared.config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Io {
                    what: "cannot serve metrics on",
                    path: addr.to_string(),
                    source,
                })?;
            tracing::info!(listen = %addr, "serving metrics on /metrics");
            Some(tokio::spawn(server::metrics::serve(
                listener,
                Arc::clone(&shared.metrics),
                Arc::clone(&policy),
            )))
        }
        None => None,
    };
    let console = match shared.config.console.clone() {
        Some(c) => {
            // Bound here: a port in use stops the start.
            let listener = std::net::TcpListener::bind(c.listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| Error::Io {
                    what: "cannot serve the console on",
                    path: c.listen.to_string(),
                    source,
                })?;
            // A certificate that does not load stops the start too.
            if let Some((cert, key)) = &c.tls {
                crate::console::tls_config(cert, key).map_err(Error::Console)?;
            }
            let shared = Arc::clone(&shared);
            Some(tokio::spawn(async move {
                if let Err(e) = crate::console::serve(shared, c, listener).await {
                    tracing::error!("the console stopped: {e}");
                }
            }))
        }
        None => None,
    };
    let server_config = shared.server_config();
    // Transparent listeners accept on their own tasks and hand connections over here.
    let transparent =
        crate::transparent::bind(&shared.config.transparent_listen).map_err(|source| {
            Error::Io {
                what: "cannot listen for redirected connections on",
                path: "server.transparent_listen".into(),
                source,
            }
        })?;
    let own_addresses: Vec<std::net::SocketAddr> = std::iter::once(local)
        .chain(transparent.iter().map(|(a, _)| *a))
        .chain(shared.config.metrics_listen)
        .chain(shared.config.console.as_ref().map(|c| c.listen))
        .collect();
    let (redirected_tx, mut redirected) = tokio::sync::mpsc::channel(64);
    let mut transparent_tasks = tokio::task::JoinSet::new();
    for (addr, listener) in transparent {
        tracing::info!(listen = %addr, "accepting redirected connections (transparent mode)");
        transparent_tasks.spawn(accept_redirected(
            listener,
            redirected_tx.clone(),
            Arc::clone(&shared),
        ));
    }
    drop(redirected_tx);
    // Each connection lives on one of these threads (see threads.rs).
    let threads =
        crate::threads::ConnectionThreads::start(shared.config.threads).map_err(|source| {
            Error::Io {
                what: "cannot start the connection threads",
                path: "server.threads".into(),
                source,
            }
        })?;
    let _ = shared.metrics.threads.set(threads.counters());
    // Said once every listener (SSH, transparent, metrics, console) is bound: what
    // waits for this line can connect to any of them.
    tracing::info!(
        listen = %local,
        users = user_count,
        policies = ?policy.current().names(),
        threads = shared.config.threads,
        "portcullis is serving"
    );
    let mut sessions = tokio::task::JoinSet::new();
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|source| Error::Io {
            what: "cannot handle",
            path: "SIGHUP".into(),
            source,
        })?;
    tokio::pin!(shutdown);
    let mut accept_backoff = ACCEPT_BACKOFF_FIRST;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangups.recv() => crate::reload::on_hangup(&shared, &reload),
            accepted = listener.accept() => {
                let Some((socket, peer)) = accepted_or_back_off(accepted, &mut accept_backoff, &shared).await else {
                    continue;
                };
                shared.metrics.connection();
                crate::upstream::socket::tune_accepted(&socket);
                let balancers = &shared.config.proxy_protocol_from;
                if balancers.iter().any(|n| n.contains(peer.ip())) {
                    // Admitted once its header names the client.
                    let (shared, config) = (Arc::clone(&shared), Arc::clone(&server_config));
                    threads.spawn(&mut sessions, socket, move |socket| {
                        serve_balanced(shared, config, socket, peer)
                    });
                    continue;
                }
                // Admitted or refused before a byte is read.
                let Some(ticket) = admit(&shared, peer) else {
                    continue;
                };
                let check_header = !balancers.is_empty();
                let handler =
                    server::ConnHandler::new(Arc::clone(&shared), peer, None, server::Via::Username)
                        .with_ticket(ticket);
                let config = Arc::clone(&server_config);
                threads.spawn(&mut sessions, socket, move |socket| async move {
                    // Only a trusted balancer may say where a connection comes from.
                    if check_header
                        && server::proxy_protocol::starts_with_header(&socket, std::time::Duration::from_secs(5)).await
                    {
                        tracing::warn!(%peer, "refused: a PROXY protocol header from an address not in server.proxy_protocol_from");
                        return;
                    }
                    handler
                        .serve(config, crate::upstream::socket::QuickAck::new(socket))
                        .await;
                });
            }
            Some(r) = redirected.recv() => {
                let crate::transparent::Redirected { stream, peer, destination } = r;
                shared.metrics.connection();
                if let Some(why) = crate::transparent::refusal(peer, destination, &own_addresses) {
                    tracing::warn!(%peer, %destination, "redirected connection refused: {why}");
                    continue;
                }
                let Some(ticket) = admit(&shared, peer) else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                threads.spawn(&mut sessions, stream, move |stream| async move {
                    let ip = destination.ip().to_string();
                    // The host certificate names the address, and the name it has in
                    // the reverse DNS when that name resolves back to it.
                    let name = crate::transparent::reverse_name(destination.ip()).await;
                    let config = match shared.inner_server_config(name.as_deref().unwrap_or(&ip), &ip) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!("cannot issue a host certificate for {ip}: {e}");
                            return;
                        }
                    };
                    let handler = server::ConnHandler::new(
                        Arc::clone(&shared),
                        peer,
                        Some((ip, destination.port())),
                        server::Via::Transparent,
                    )
                    .with_ticket(ticket);
                    handler
                        .serve(config, crate::upstream::socket::QuickAck::new(stream))
                        .await;
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    // Stop accepting at once: new connections are refused while sessions drain.
    drop(listener);
    transparent_tasks.shutdown().await;
    drop(redirected);
    tracing::info!(
        open = sessions.len(),
        "shutting down; draining sessions for up to {grace:?}"
    );
    let drained = tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = sessions.len(),
            "grace period over; closing remaining sessions"
        );
        sessions.shutdown().await;
    }
    if let Some(u) = &uploads {
        // What is not uploaded by then resumes at the next start, from its last part.
        let left = u.drain(grace).await;
        if left > 0 {
            tracing::warn!(
                pending = left,
                "command logs still uploading are kept on the disk; their uploads resume at the next start"
            );
        }
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if let Some(console) = console {
        console.abort();
    }
    Ok(())
}

/// A place for a connection from `peer` under the admission limits, or none (counted
/// and logged; the caller closes the connection).
fn admit(shared: &server::Shared, peer: std::net::SocketAddr) -> Option<server::admission::Ticket> {
    match shared.admission.admit(peer.ip()) {
        Ok(ticket) => Some(ticket),
        Err(why) => {
            shared.metrics.not_admitted(why);
            tracing::debug!(%peer, ?why, "connection refused by the admission limits");
            None
        }
    }
}

/// Serves a connection from a trusted load balancer: its PROXY protocol header names
/// the client, whose address the decisions, the logs and the per-source limits see.
async fn serve_balanced(
    shared: Arc<server::Shared>,
    config: Arc<russh::server::Config>,
    mut socket: tokio::net::TcpStream,
    balancer: std::net::SocketAddr,
) {
    let header = server::proxy_protocol::read_header(&mut socket);
    let client = match tokio::time::timeout(shared.config.auth_timeout, header).await {
        Ok(Ok(Some(client))) => client,
        // The balancer's own check (v2 LOCAL, v1 UNKNOWN): served as coming from it.
        Ok(Ok(None)) => balancer,
        Ok(Err(e)) => {
            tracing::warn!(%balancer, "connection from a balancer refused: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(%balancer, "connection from a balancer refused: no PROXY protocol header in time");
            return;
        }
    };
    let Some(ticket) = admit(&shared, client) else {
        return;
    };
    server::ConnHandler::new(Arc::clone(&shared), client, None, server::Via::Username)
        .with_ticket(ticket)
        .serve(config, crate::upstream::socket::QuickAck::new(socket))
        .await;
}

/// An accepted connection, or, after a failed accept (out of file descriptors, EMFILE,
/// and the like), none once the listener has waited: retrying at once would spin a core,
/// so each failure in a row waits twice as long, up to a second.
async fn accepted_or_back_off(
    accepted: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
    backoff: &mut std::time::Duration,
    shared: &server::Shared,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match accepted {
        Ok(a) => {
            *backoff = ACCEPT_BACKOFF_FIRST;
            Some(a)
        }
        Err(e) => {
            shared.metrics.accept_error();
            tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
            tokio::time::sleep(*backoff).await;
            *backoff = (*backoff * 2).min(ACCEPT_BACKOFF_MAX);
            None
        }
    }
}

/// Accepts on a transparent listener and hands each connection, with its original
/// destination, to the accept loop.
async fn accept_redirected(
    listener: tokio::net::TcpListener,
    to: tokio::sync::mpsc::Sender<crate::transparent::Redirected>,
    shared: Arc<server::Shared>,
) {
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    loop {
        let accepted = listener.accept().await;
        let Some((stream, peer)) = accepted_or_back_off(accepted, &mut backoff, &shared).await
        else {
            continue;
        };
        let destination = match crate::transparent::destination(&stream) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%peer, "cannot tell where a redirected connection was going: {e}");
                continue;
            }
        };
        crate::upstream::socket::tune_accepted(&stream);
        let redirected = crate::transparent::Redirected {
            stream,
            peer,
            destination,
        };
        if to.send(redirected).await.is_err() {
            return;
        }
    }
}

/// Each session holds two sockets (client and target) and, when audited, a log file;
/// the usual soft limit of 1,024 open files would cap the proxy near 500 sessions. Raise
/// the soft limit to the hard limit (as Go's runtime does for every server); a failure only
/// warns (the proxy still serves, with fewer sessions).
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
}
