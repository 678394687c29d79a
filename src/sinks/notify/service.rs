//! One delivery attempt, per transport: SMTP (lettre), HTTP POST (reqwest, optionally signed),
//! the log. A failure says whether another attempt could help.

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::encoding::{one_line, reminder_subject, signature};
use super::{ChannelSettings, Delivery, Notice};
use crate::config::check::SmtpTls;

/// How a channel delivers.
pub enum Transport {
    /// SMTP.
    Email {
        /// The mailer.
        mailer: AsyncSmtpTransport<Tokio1Executor>,
        /// Sender.
        from: Mailbox,
        /// Recipients.
        to: Vec<Mailbox>,
    },
    /// HTTP POST.
    Webhook {
        /// The client.
        client: reqwest::Client,
        /// The URL.
        url: reqwest::Url,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The HMAC key.
        secret: Option<Vec<u8>>,
        /// The signature header.
        signature_header: String,
        /// Post the rendered body instead of the default JSON.
        templated: bool,
    },
    /// The engine's log.
    Log,
}

impl Transport {
    /// Builds a channel's transport from its settings (the CA file, if any, is read now).
    pub fn build(name: &str, ch: &ChannelSettings) -> Result<Self, String> {
        let timeout = ch.policy.timeout;
        match &ch.delivery {
            Delivery::Email(e) => {
                use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
                let params = || -> Result<TlsParameters, String> {
                    let mut b = TlsParameters::builder(e.host.clone());
                    if let Some(path) = &e.ca {
                        let pem = std::fs::read(path).map_err(|err| {
                            format!(
                                "channel `{name}`: cannot read the CA file {}: {err}",
                                path.display()
                            )
                        })?;
                        let cert = Certificate::from_pem(&pem).map_err(|err| {
                            format!(
                                "channel `{name}`: the CA file {} is not a PEM certificate: {err}",
                                path.display()
                            )
                        })?;
                        b = b.add_root_certificate(cert);
                    }
                    b.build_rustls()
                        .map_err(|err| format!("channel `{name}`: TLS setup: {err}"))
                };
                let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.host);
                // STARTTLS is required, never opportunistic: a server that does not offer it
                // fails the delivery rather than receiving the mail in clear text.
                let builder = match e.tls {
                    SmtpTls::None => builder,
                    SmtpTls::StartTls => builder.tls(Tls::Required(params()?)),
                    SmtpTls::Tls => builder.tls(Tls::Wrapper(params()?)),
                };
                let mut builder = builder.port(e.port).timeout(Some(timeout));
                if let Some(u) = &e.username {
                    builder = builder.credentials(Credentials::new(
                        u.clone(),
                        e.password.clone().unwrap_or_default(),
                    ));
                }
                Ok(Transport::Email {
                    mailer: builder.build(),
                    from: e.from.clone(),
                    to: e.to.clone(),
                })
            }
            Delivery::Webhook(w) => {
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .build()
                    .map_err(|e| format!("channel `{name}`: {e}"))?;
                Ok(Transport::Webhook {
                    client,
                    url: w.url.clone(),
                    headers: w.headers.clone(),
                    secret: w.secret.clone(),
                    signature_header: w.signature_header.clone(),
                    templated: w.templated,
                })
            }
            Delivery::Log => Ok(Transport::Log),
        }
    }

    /// What it is, for messages: never a password, a token or a webhook's path (which often
    /// holds a secret).
    pub fn describe(&self) -> String {
        match self {
            Transport::Email { to, .. } => format!(
                "email to {}",
                to.iter()
                    .map(|m| m.email.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Transport::Webhook { url, .. } => format!(
                "webhook to {}://{}",
                url.scheme(),
                url.host_str().unwrap_or("?")
            ),
            Transport::Log => "the log".into(),
        }
    }

    /// One delivery attempt.
    pub async fn deliver(&self, n: &Notice) -> Result<(), Failure> {
        match self {
            Transport::Email { mailer, from, to } => {
                let mut b = lettre::Message::builder()
                    .from(from.clone())
                    .subject(one_line(&reminder_subject(n)))
                    .header(ContentType::TEXT_PLAIN);
                for t in to {
                    b = b.to(t.clone());
                }
                let m = b
                    .body(n.body.clone())
                    .map_err(|e| Failure::permanent(format!("cannot build the email: {e}")))?;
                mailer.send(m).await.map(|_| ()).map_err(|e| Failure {
                    text: crate::sinks::redact_urls(&format!("SMTP: {}", chain_text(&e))),
                    // A 5xx reply (unknown recipient, refused sender) will not change.
                    permanent: e.is_permanent(),
                })
            }
            Transport::Webhook {
                client,
                url,
                headers,
                secret,
                signature_header,
                templated,
            } => {
                let body = if *templated {
                    n.body.clone().into_bytes()
                } else {
                    n.payload().to_string().into_bytes()
                };
                let mut req = client
                    .post(url.clone())
                    .header("content-type", "application/json")
                    .header("idempotency-key", n.key());
                for (k, v) in headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                if let Some(s) = secret {
                    req = req.header(signature_header.as_str(), signature(s, &body));
                }
                let resp = req
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| Failure::transient(crate::sinks::http_error_text(&e)))?;
                let status = resp.status();
                if status.is_success() {
                    Ok(())
                } else {
                    let text: String = resp
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    let code = status.as_u16();
                    Err(Failure {
                        text: crate::sinks::redact_urls(&format!("HTTP {status}: {}", text.trim())),
                        // The receiver refuses this request (400, 401, 404…): sending it again
                        // changes nothing. 408 and 429 ask to come back later.
                        permanent: !crate::retry::retryable_status(code),
                    })
                }
            }
            Transport::Log => {
                tracing::warn!(channel = %n.channel, device = %n.device, chain = %n.chain, "{}: {}", reminder_subject(n), n.body);
                Ok(())
            }
        }
    }
}

/// A failed delivery attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong.
    pub text: String,
    /// Trying again cannot help (a 4xx from a webhook, a 5xx SMTP reply).
    pub permanent: bool,
}

impl Failure {
    pub(super) fn permanent(text: String) -> Self {
        Failure {
            text,
            permanent: true,
        }
    }

    pub(super) fn transient(text: String) -> Self {
        Failure {
            text,
            permanent: false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn chain_text(e: &dyn std::error::Error) -> String {
    crate::sinks::with_causes(e.to_string(), e.source())
}
