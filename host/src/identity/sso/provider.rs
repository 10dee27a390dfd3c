//! The OpenID provider, through `openidconnect`: discovery (with its JWKS, fetched
//! again when a token names a key it does not hold), the device authorization grant
//! (RFC 8628), and the ID token's checks. The claims a login needs are read from the
//! verified token by [`claims_of`].

use std::sync::Arc;
use std::time::Duration;

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, ClientId, ClientSecret, DeviceAuthorizationUrl,
    DeviceCodeErrorResponseType, IssuerUrl, Nonce, ProviderMetadata, RequestTokenError, Scope,
    TokenResponse,
};
use serde::{Deserialize, Serialize};

use super::SsoError;
use crate::config::OidcConfig;
use crate::text::error_chain as chain;

#[derive(Clone, Debug, Deserialize, Serialize)]
pub(super) struct DeviceEndpoint {
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}
impl AdditionalProviderMetadata for DeviceEndpoint {}

pub(super) type Metadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// What the provider said when a device login started.
#[derive(Debug)]
pub(super) struct DeviceStart {
    pub details: CoreDeviceAuthorizationResponse,
    pub metadata: Arc<Metadata>,
}

/// The provider, its discovery document cached.
pub(super) struct Provider {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: Option<ClientSecret>,
    scopes: Vec<String>,
    http: openidconnect::reqwest::Client,
    metadata: tokio::sync::Mutex<Option<Arc<Metadata>>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer.as_str())
            .finish_non_exhaustive()
    }
}

/// Bound on one HTTP exchange with the provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

impl Provider {
    pub(super) fn new(config: &OidcConfig) -> Result<Provider, String> {
        let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| e.to_string())?;
        let mut http = openidconnect::reqwest::Client::builder()
            // Following redirects would let a provider's answer send the proxy anywhere.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read the issuer CA file {}: {e}", path.display()))?;
            let certs = openidconnect::reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Provider {
            issuer,
            client_id: ClientId::new(config.client_id.clone()),
            client_secret: config.client_secret.clone().map(ClientSecret::new),
            scopes: config.scopes.clone(),
            http,
            metadata: tokio::sync::Mutex::new(None),
        })
    }

    /// The discovery document (with the provider's keys), fetched once, or again when
    /// `refresh`.
    async fn metadata(&self, refresh: bool) -> Result<Arc<Metadata>, SsoError> {
        let mut cached = self.metadata.lock().await;
        if let Some(m) = cached.as_ref().filter(|_| !refresh) {
            return Ok(Arc::clone(m));
        }
        let m = Metadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| {
                SsoError::Unavailable(format!(
                    "discovery at {} failed: {}",
                    self.issuer.as_str(),
                    chain(&e)
                ))
            })?;
        let m = Arc::new(m);
        *cached = Some(Arc::clone(&m));
        Ok(m)
    }

    /// Fetches the discovery document now, so that a configuration mistake shows at
    /// start rather than at the first login.
    pub(super) async fn check(&self) -> Result<(), SsoError> {
        let m = self.metadata(false).await?;
        if m.additional_metadata()
            .device_authorization_endpoint
            .is_none()
        {
            return Err(SsoError::Unavailable(format!(
                "{} has no device_authorization_endpoint: enable the device authorization \
                 grant at the provider",
                self.issuer.as_str()
            )));
        }
        Ok(())
    }

    pub(super) fn client(&self, m: &Metadata) -> Result<DeviceClient, SsoError> {
        let device = m
            .additional_metadata()
            .device_authorization_endpoint
            .clone()
            .ok_or_else(|| {
                SsoError::Unavailable(format!(
                    "{} does not offer the device authorization grant",
                    self.issuer.as_str()
                ))
            })?;
        Ok(CoreClient::from_provider_metadata(
            m.clone(),
            self.client_id.clone(),
            self.client_secret.clone(),
        )
        .set_device_authorization_url(device)
        .set_auth_type(AuthType::RequestBody))
    }

    /// Starts a device login: the provider's code and where the user approves it.
    pub(super) async fn start(&self) -> Result<DeviceStart, SsoError> {
        let metadata = self.metadata(false).await?;
        let client = self.client(&metadata)?;
        let mut request = client.exchange_device_code();
        for s in self.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(s.clone()));
        }
        let details: CoreDeviceAuthorizationResponse =
            request.request_async(&self.http).await.map_err(|e| {
                SsoError::Unavailable(format!(
                    "the device authorization request failed: {}",
                    chain(&e)
                ))
            })?;
        Ok(DeviceStart { details, metadata })
    }

    /// Polls the token endpoint until the user approved or refused, or the code
    /// expired, then checks the ID token and returns its claims.
    pub(super) async fn finish(&self, start: &DeviceStart) -> Result<serde_json::Value, SsoError> {
        let client = self.client(&start.metadata)?;
        let token = poll(&client, &start.details, &self.http, tokio::time::sleep).await?;
        let id_token = token.id_token().ok_or_else(|| SsoError::Rejected {
            user: "the identity provider returned no ID token".into(),
            log: "the token response has no id_token (is `openid` among the scopes?)".into(),
        })?;
        let no_nonce = |_: Option<&Nonce>| Ok(());
        let verified = id_token.claims(&client.id_token_verifier(), no_nonce);
        if let Err(openidconnect::ClaimsVerificationError::SignatureVerification(
            openidconnect::SignatureVerificationError::NoMatchingKey,
        )) = verified
        {
            // The provider may have rotated its keys since they were fetched.
            let fresh = self.metadata(true).await?;
            let client = self.client(&fresh)?;
            id_token
                .claims(&client.id_token_verifier(), no_nonce)
                .map_err(|e| token_error(&e))?;
        } else {
            verified.map_err(|e| token_error(&e))?;
        }
        // The signature, issuer, audience and expiry hold: read the payload's claims.
        payload_of(&id_token.to_string())
    }
}

/// A browser sign-in in progress (authorization code with PKCE): what the callback
/// must match.
#[derive(Debug)]
pub struct PendingSignIn {
    pub state: String,
    nonce: Nonce,
    verifier: openidconnect::PkceCodeVerifier,
}

impl Provider {
    /// Where to send a browser to sign in, returning to `redirect`, and what its
    /// return must match.
    pub(super) async fn sign_in_url(
        &self,
        redirect: &str,
    ) -> Result<(String, PendingSignIn), SsoError> {
        use openidconnect::core::CoreAuthenticationFlow;
        use openidconnect::{CsrfToken, PkceCodeChallenge};
        let client = self.code_client(redirect, false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in self.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok((
            url.to_string(),
            PendingSignIn {
                state: state.secret().clone(),
                nonce,
                verifier,
            },
        ))
    }

    /// Exchanges the code the browser came back with, checks the ID token (signature,
    /// issuer, audience, expiry, nonce) and returns its claims.
    pub(super) async fn finish_sign_in(
        &self,
        redirect: &str,
        code: &str,
        pending: PendingSignIn,
    ) -> Result<serde_json::Value, SsoError> {
        use openidconnect::AuthorizationCode;
        let client = self.code_client(redirect, false).await?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| SsoError::Unavailable(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| SsoError::Rejected {
                user: "the identity provider refused the sign-in".into(),
                log: format!("the code exchange failed: {}", chain(&e)),
            })?;
        let id_token = token.id_token().ok_or_else(|| SsoError::Rejected {
            user: "the identity provider returned no ID token".into(),
            log: "the token response has no id_token".into(),
        })?;
        let verified = id_token.claims(&client.id_token_verifier(), &pending.nonce);
        if let Err(openidconnect::ClaimsVerificationError::SignatureVerification(
            openidconnect::SignatureVerificationError::NoMatchingKey,
        )) = verified
        {
            // The provider may have rotated its keys since they were fetched.
            let client = self.code_client(redirect, true).await?;
            id_token
                .claims(&client.id_token_verifier(), &pending.nonce)
                .map_err(|e| token_error(&e))?;
        } else {
            verified.map_err(|e| token_error(&e))?;
        }
        payload_of(&id_token.to_string())
    }

    /// A client of the authorization code grant returning to `redirect`, from the
    /// discovery document (fetched again when `refresh`).
    async fn code_client(&self, redirect: &str, refresh: bool) -> Result<CodeClient, SsoError> {
        let metadata = self.metadata(refresh).await?;
        let redirect = openidconnect::RedirectUrl::new(redirect.to_string())
            .map_err(|e| SsoError::Unavailable(format!("bad redirect URL {redirect}: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            (*metadata).clone(),
            self.client_id.clone(),
            self.client_secret.clone(),
        )
        .set_redirect_uri(redirect)
        .set_auth_type(AuthType::RequestBody))
    }
}

type CodeClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

type DeviceClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// Asks the token endpoint for the device code's tokens at the provider's interval (5 s
/// when it gives none), 5 s slower after each `slow_down`, until it answers with
/// tokens, `access_denied` or `expired_token`, or the code's lifetime is over.
pub(super) async fn poll<'c, C, S, SF>(
    client: &'c DeviceClient,
    details: &'c CoreDeviceAuthorizationResponse,
    http: &'c C,
    sleep: S,
) -> Result<openidconnect::core::CoreTokenResponse, SsoError>
where
    C: openidconnect::AsyncHttpClient<'c>,
    S: Fn(Duration) -> SF + 'c,
    SF: std::future::Future<Output = ()>,
{
    client
        .exchange_device_access_token(details)
        .map_err(|e| SsoError::Unavailable(e.to_string()))?
        .request_async(http, sleep, None)
        .await
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => match r.error() {
                DeviceCodeErrorResponseType::AccessDenied => SsoError::Denied,
                DeviceCodeErrorResponseType::ExpiredToken => SsoError::Expired,
                other => SsoError::Rejected {
                    user: "the identity provider refused the login".into(),
                    log: format!(
                        "token endpoint answered {}{}",
                        other.as_ref(),
                        r.error_description()
                            .map(|d| format!(": {d}"))
                            .unwrap_or_default()
                    ),
                },
            },
            other => SsoError::Unavailable(format!("the token request failed: {}", chain(&other))),
        })
}

fn token_error(e: &openidconnect::ClaimsVerificationError) -> SsoError {
    use openidconnect::{ClaimsVerificationError as C, SignatureVerificationError as S};
    let log = match e {
        C::SignatureVerification(S::NoMatchingKey) => {
            "the ID token is signed by a key not in the provider's JWKS".to_string()
        }
        C::InvalidAudience(why) => format!("the ID token is for another audience: {why}"),
        C::InvalidIssuer(why) => format!("the ID token is from another issuer: {why}"),
        C::Expired(why) => format!("the ID token has expired: {why}"),
        other => format!("the ID token does not verify: {}", chain(other)),
    };
    SsoError::Rejected {
        user: "the identity provider's answer did not verify".into(),
        log,
    }
}

/// The JSON payload of a compact JWT (already verified).
fn payload_of(jwt: &str) -> Result<serde_json::Value, SsoError> {
    use base64::Engine;
    let bad = |why: String| SsoError::Rejected {
        user: "the identity provider's answer did not verify".into(),
        log: format!("the ID token's payload cannot be read: {why}"),
    };
    let part = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| bad("not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

/// The identity a verified ID token's claims give, checked against the configuration:
/// the email (verified where the provider says), in an allowed domain; the groups; how
/// the user authenticated.
pub(super) fn claims_of(
    config: &OidcConfig,
    claims: &serde_json::Value,
) -> Result<super::Claims, SsoError> {
    use crate::text::sanitize;
    let rejected = |user: String| SsoError::Rejected {
        log: user.clone(),
        user,
    };
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let email = text(&config.email_claim).ok_or_else(|| {
        rejected(format!(
            "the identity provider gave no `{}` claim (check the scopes and the claim name)",
            config.email_claim
        ))
    })?;
    let email = sanitize(email.trim(), 254).to_ascii_lowercase();
    let Some((_, domain)) = email
        .rsplit_once('@')
        .filter(|(l, d)| !l.is_empty() && !d.is_empty())
    else {
        return Err(rejected(format!(
            "`{}` is not an email address: {email:?}",
            config.email_claim
        )));
    };
    if claims.get("email_verified").and_then(|v| v.as_bool()) == Some(false)
        && config.email_claim == "email"
    {
        return Err(rejected(format!(
            "the identity provider has not verified the email {email}"
        )));
    }
    if !config.allowed_domains.is_empty() && !config.allowed_domains.iter().any(|d| d == domain) {
        return Err(rejected(format!(
            "the email {email} is not in an allowed domain ({})",
            config.allowed_domains.join(", ")
        )));
    }
    let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
        match v {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.as_str())
                .map(|s| sanitize(s, 256))
                .filter(|s| !s.is_empty())
                .take(256)
                .collect(),
            Some(serde_json::Value::String(s)) => {
                s.split_whitespace().map(|s| sanitize(s, 256)).collect()
            }
            _ => Vec::new(),
        }
    };
    Ok(super::Claims {
        email,
        groups: strings(claims.get(&config.groups_claim)),
        issuer: text("iss").map(|s| sanitize(&s, 512)).unwrap_or_default(),
        subject: text("sub").map(|s| sanitize(&s, 256)).unwrap_or_default(),
        // A comma would split one value in two on the wire to policies.
        amr: strings(claims.get("amr"))
            .into_iter()
            .filter(|a| !a.contains(','))
            .collect(),
        acr: text("acr").map(|s| sanitize(&s, 256)),
    })
}
