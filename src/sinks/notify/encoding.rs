//! What a notification looks like on the wire: the webhook's default JSON body, its HMAC
//! signature, a reminder's subject.

use hmac::{KeyInit, Mac};
use serde_json::{json, Value};

use super::Notice;

impl Notice {
    pub(super) fn alarm(&self) -> Option<&serde_json::Map<String, Value>> {
        self.data.get("alarm").and_then(Value::as_object)
    }

    /// Settled: tells its receipt, if any.
    pub fn settled(&self) {
        if let Some(r) = &self.receipt {
            (r.0)();
        }
    }

    /// The key a receiver deduplicates by (the webhook's `Idempotency-Key` header): an alarm's
    /// id and transition (`Hot:pump-1:1700000000000/created`), with `/reminder/<ts>` for a
    /// reminder; otherwise the chain, node, device and message time. The same notification
    /// sent again (a retry, or a cluster's next owner delivering what the last did not
    /// confirm) has the same key.
    pub fn key(&self) -> String {
        let base = match self.alarm() {
            Some(a) => format!(
                "{}/{}",
                a.get("id").and_then(Value::as_str).unwrap_or_default(),
                a.get("transition")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            ),
            None => format!("{}/{}/{}/{}", self.chain, self.node, self.device, self.ts),
        };
        if self.reminder {
            format!("{base}/reminder/{}", self.ts)
        } else {
            base
        }
    }

    /// The webhook's default JSON body.
    pub fn payload(&self) -> Value {
        let mut v = json!({
            "channel": self.channel,
            "chain": &*self.chain,
            "node": &*self.node,
            "device": &*self.device,
            "ts": self.ts,
            "subject": self.subject,
            "body": self.body,
            "reminder": self.reminder,
        });
        if let Some((from, step)) = &self.escalation {
            v["escalation"] = json!({"from": from, "step": step});
        }
        match self.alarm() {
            Some(a) => v["alarm"] = Value::Object(a.clone()),
            None => v["msg"] = self.data.clone(),
        }
        v
    }
}

/// The HMAC-SHA256 signature header value for a body: `sha256=<hex>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The subject as sent: marked as a reminder or an escalation.
pub(super) fn reminder_subject(n: &Notice) -> String {
    match (&n.escalation, n.reminder) {
        (Some((from, step)), _) => format!("Escalated (step {step} of {from}): {}", n.subject),
        (None, true) => format!("Reminder: {}", n.subject),
        (None, false) => n.subject.clone(),
    }
}

pub(super) fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_default_payload_carries_the_alarm() {
        let n = Notice {
            channel: "ops".into(),
            chain: "c".into(),
            node: "n".into(),
            device: "pump-3".into(),
            ts: 5,
            subject: "s".into(),
            body: "b".into(),
            data: json!({"alarm": {"id": "A:pump-3:1", "status": "ACTIVE_UNACK", "transition": "created"}, "current": 13}),
            reminder: false,
            fallback_from: None,
            receipt: None,
            rearm: false,
            follow: false,
            escalation: None,
        };
        let p = n.payload();
        assert_eq!(p["alarm"]["id"], "A:pump-3:1");
        // The receiver's deduplication key: the alarm and its transition.
        assert_eq!(n.key(), "A:pump-3:1/created");
        let reminder = Notice {
            reminder: true,
            ..n.clone()
        };
        assert_eq!(reminder.key(), "A:pump-3:1/created/reminder/5");
        assert_eq!(p["device"], "pump-3");
        assert!(p.get("msg").is_none());
        let plain = Notice {
            data: json!({"current": 13}),
            ..n
        };
        assert_eq!(plain.payload()["msg"]["current"], 13);
        assert_eq!(plain.key(), "c/n/pump-3/5");
    }
}
