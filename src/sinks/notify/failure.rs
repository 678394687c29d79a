//! A failed delivery attempt: what went wrong, whether another attempt could help, and how long
//! the far side asked to wait.

/// A failed delivery attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong.
    pub text: String,
    /// Trying again cannot help (a 4xx from a webhook, a 5xx SMTP reply).
    pub permanent: bool,
    /// How long the far side asked to wait before the next attempt (`Retry-After`).
    pub retry_after: Option<std::time::Duration>,
}

impl Failure {
    pub(crate) fn permanent(text: String) -> Self {
        Failure {
            text,
            permanent: true,
            retry_after: None,
        }
    }

    pub(crate) fn transient(text: String) -> Self {
        Failure {
            text,
            permanent: false,
            retry_after: None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
