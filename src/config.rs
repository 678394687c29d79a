//! The engine config (`rulechain.yaml`). With no config file, every command uses
//! [`Config::default`], the embedded default: topics `device/{device}/{kind}` and
//! `site/{site}/device/{device}/{kind}`, rules in `./rules`, no notification channels checked.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::rules::model::Kind;
use crate::rules::yaml::Sp;

/// The engine config file.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rulechain engine config")]
pub struct Config {
    /// The directory of the rule chains (default `./rules`), relative to the config file.
    #[serde(default)]
    pub rules: Option<Sp<String>>,
    /// The devices file (optional), relative to the config file.
    #[serde(default)]
    pub devices: Option<Sp<String>>,
    /// How MQTT topics map to messages. Default: `device/{device}/{kind}` and
    /// `site/{site}/device/{device}/{kind}`.
    #[serde(default)]
    pub topics: Option<Vec<TopicSpec>>,
    /// The command topic pattern for RPC (`site/{site}/device/{device}/command`). Default: the
    /// source topic with its last level replaced by `command`.
    #[serde(default)]
    pub command_topic: Option<Sp<String>>,
    /// Notification channels, by name, for `notify` nodes.
    #[serde(default)]
    pub channels: BTreeMap<String, Sp<ChannelSpec>>,
}

/// One topic pattern: literal levels and `{name}` captures. `{device}` is required; `{kind}`
/// takes the message kind from the topic; other captures land in `meta`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The pattern, e.g. `site/{site}/device/{device}/telemetry`.
    pub pattern: Sp<String>,
    /// The kind of matching messages, when the pattern has no `{kind}` capture.
    #[serde(default)]
    pub kind: Option<Kind>,
}

/// A notification channel: exactly one of `email`, `webhook`, `log`, and optional templates.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Send by email (SMTP).
    #[serde(default)]
    pub email: Option<EmailSpec>,
    /// POST JSON to a URL.
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    /// Write to the log.
    #[serde(default)]
    pub log: Option<serde_json::Value>,
    /// Subject template (`${}` holes over `msg`, `attr`, `meta`; an alarm is `msg.alarm`).
    #[serde(default)]
    pub subject: Option<Sp<String>>,
    /// Body template.
    #[serde(default)]
    pub body: Option<Sp<String>>,
}

/// SMTP delivery.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// The SMTP server, e.g. `smtp://mail.example.com:587`.
    pub smtp: String,
    /// The sender address.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// SMTP user name.
    #[serde(default)]
    pub username: Option<String>,
    /// SMTP password (use `${ENV_VAR}`).
    #[serde(default)]
    pub password: Option<String>,
}

/// HTTP webhook delivery.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// The URL to POST to.
    pub url: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Shared secret for the HMAC-SHA256 signature header.
    #[serde(default)]
    pub secret: Option<String>,
}

impl Config {
    /// The topic patterns in force: the configured ones, or the embedded default's.
    pub fn topic_patterns(&self) -> Vec<(String, Option<Kind>)> {
        match &self.topics {
            Some(t) => t
                .iter()
                .map(|t| (t.pattern.value.clone(), t.kind))
                .collect(),
            None => vec![
                ("device/{device}/{kind}".into(), None),
                ("site/{site}/device/{device}/{kind}".into(), None),
            ],
        }
    }
}
