//! One delivery attempt, per transport: SMTP (lettre), HTTP POST (reqwest, optionally signed),
//! the log. A failure says whether another attempt could help.

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::chat;
use super::encoding::{one_line, reminder_subject, signature};
use super::failure::Failure;
use super::Notice;
use crate::config::check::SmtpTls;
use crate::config::settings::ChannelSettings;
use crate::config::settings::Delivery;
use crate::config::settings::SlackSettings;

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
    /// A chat or incident service (Slack, Teams, PagerDuty, Telegram).
    Chat {
        /// Which, and how it is reached.
        chat: Chat,
        /// The dashboard's public address, for links.
        base_url: Option<reqwest::Url>,
    },
    /// The engine's log.
    Log,
}

/// The chat and incident services.
pub enum Chat {
    /// A Slack bot.
    SlackBot(chat::slack::Bot),
    /// A Slack incoming webhook.
    SlackWebhook(reqwest::Client, reqwest::Url),
    /// A Teams workflow.
    Teams(reqwest::Client, reqwest::Url),
    /// PagerDuty Events v2.
    PagerDuty {
        /// The client.
        client: reqwest::Client,
        /// The API's base.
        api: reqwest::Url,
        /// The integration key.
        routing_key: String,
        /// The alarms it triggered an incident for and has not resolved.
        incidents: chat::Threads,
    },
    /// A Telegram bot.
    Telegram(chat::telegram::Bot),
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
            Delivery::Slack(_)
            | Delivery::Teams(_)
            | Delivery::PagerDuty(_)
            | Delivery::Telegram(_) => {
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .build()
                    .map_err(|e| format!("channel `{name}`: {e}"))?;
                let chat = match &ch.delivery {
                    Delivery::Slack(SlackSettings::Bot {
                        api,
                        token,
                        channel,
                    }) => Chat::SlackBot(chat::slack::Bot {
                        client,
                        api: api.clone(),
                        token: token.0.clone(),
                        channel: channel.clone(),
                        threads: Default::default(),
                    }),
                    Delivery::Slack(SlackSettings::Webhook(url)) => {
                        Chat::SlackWebhook(client, url.0.clone())
                    }
                    Delivery::Teams(url) => Chat::Teams(client, url.0.clone()),
                    Delivery::PagerDuty(p) => Chat::PagerDuty {
                        client,
                        api: p.api.clone(),
                        routing_key: p.routing_key.0.clone(),
                        incidents: Default::default(),
                    },
                    Delivery::Telegram(t) => Chat::Telegram(chat::telegram::Bot {
                        client,
                        api: t.api.clone(),
                        token: t.token.0.clone(),
                        chat_id: t.chat_id.clone(),
                        threads: Default::default(),
                    }),
                    _ => unreachable!("matched above"),
                };
                Ok(Transport::Chat {
                    chat,
                    base_url: ch.base_url.clone(),
                })
            }
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
            Transport::Chat { chat, .. } => {
                let host =
                    |u: &reqwest::Url| format!("{}://{}", u.scheme(), u.host_str().unwrap_or("?"));
                match chat {
                    Chat::SlackBot(b) => format!("Slack bot to {} via {}", b.channel, host(&b.api)),
                    Chat::SlackWebhook(_, u) => format!("Slack webhook to {}", host(u)),
                    Chat::Teams(_, u) => format!("Teams workflow at {}", host(u)),
                    Chat::PagerDuty { api, .. } => format!("PagerDuty events to {}", host(api)),
                    Chat::Telegram(b) => {
                        format!("Telegram chat {} via {}", b.chat_id, host(&b.api))
                    }
                }
            }
            Transport::Log => "the log".into(),
        }
    }

    /// Takes up what the channel remembered (a bot's messages per alarm) and mirrors its
    /// changes into `memory`.
    pub fn remember(
        &self,
        name: &str,
        remembered: &super::memory::ChannelMemory,
        memory: &std::sync::Arc<super::memory::Memory>,
    ) {
        let threads = match self {
            Transport::Chat {
                chat: Chat::SlackBot(b),
                ..
            } => &b.threads,
            Transport::Chat {
                chat: Chat::Telegram(b),
                ..
            } => &b.threads,
            Transport::Chat {
                chat: Chat::PagerDuty { incidents, .. },
                ..
            } => incidents,
            _ => return,
        };
        threads.remember(name, remembered, memory.clone());
    }

    /// Whether it has posted something for the alarm of `n` that a later transition updates.
    pub fn knows(&self, n: &Notice) -> bool {
        let Some(id) = n.alarm().and_then(|a| a.get("id")).and_then(|v| v.as_str()) else {
            return false;
        };
        match self {
            Transport::Chat { chat, .. } => match chat {
                Chat::SlackBot(b) => b.threads.get(id).is_some(),
                Chat::Telegram(b) => b.threads.get(id).is_some(),
                Chat::PagerDuty { incidents, .. } => incidents
                    .get(id)
                    .is_some_and(|last| !last.as_str().unwrap_or("").starts_with("resolve")),
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether its messages follow an alarm's life (a bot that edits its message, an incident
    /// that is resolved) rather than each being a message of its own.
    pub fn follows_alarms(&self) -> bool {
        matches!(
            self,
            Transport::Chat {
                chat: Chat::SlackBot(_) | Chat::Telegram(_) | Chat::PagerDuty { .. },
                ..
            }
        )
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
                    retry_after: None,
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
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(chat::refused("", resp).await)
                }
            }
            Transport::Chat { chat, base_url } => {
                let card = chat::Card::of(n, base_url.as_ref());
                match chat {
                    Chat::SlackBot(b) => b.deliver(&card).await,
                    Chat::SlackWebhook(c, u) => chat::slack::post_webhook(c, u, &card).await,
                    Chat::Teams(c, u) => chat::teams::post(c, u, &card).await,
                    Chat::PagerDuty {
                        client,
                        api,
                        routing_key,
                        incidents,
                    } => {
                        let action = chat::pagerduty::action(&card);
                        // What the incident was last told: the action and the severity (a
                        // severity change triggers again, to update it).
                        let told = card
                            .alarm
                            .as_ref()
                            .map(|a| format!("{action}:{}", a.severity.as_str()));
                        if let Some(a) = &card.alarm {
                            let last = incidents.get(&a.id);
                            // The same again (the channel followed the alarm, then the chain
                            // notified the same transition; a reminder), or an update of an
                            // incident it never opened: nothing to tell PagerDuty.
                            if last.as_ref().and_then(|l| l.as_str()) == told.as_deref()
                                || (last.is_none() && action != "trigger")
                            {
                                return Ok(());
                            }
                        }
                        chat::pagerduty::send(client, api, routing_key, &card, &n.key(), n.ts)
                            .await?;
                        if let (Some(a), Some(t)) = (&card.alarm, told) {
                            incidents.put(&a.id, serde_json::Value::from(t));
                        }
                        Ok(())
                    }
                    Chat::Telegram(b) => b.deliver(&card).await,
                }
            }
            Transport::Log => {
                tracing::warn!(channel = %n.channel, device = %n.device, chain = %n.chain, "{}: {}", reminder_subject(n), n.body);
                Ok(())
            }
        }
    }
}

fn chain_text(e: &dyn std::error::Error) -> String {
    crate::sinks::with_causes(e.to_string(), e.source())
}
