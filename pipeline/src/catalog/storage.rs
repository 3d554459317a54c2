//! Where the lake's bytes live: a local directory or an object store (S3 and
//! S3-likes, Azure Blob and ADLS Gen2), reached with object_store's standard
//! environment variables plus `--storage-option KEY=VALUE` (the keys delta-rs takes).
//!
//! Three jobs: the options every store client of a run is built with, a probe that
//! turns "the store is not there / will not let us in / cannot commit atomically"
//! into one line at start, and telling a passing outage (retry) from a real error.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Mutex, OnceLock};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

use crate::error::{Error, Result};

/// How long object_store itself retries one request before Sluice's own, logged
/// retry takes over: short, so an unreachable store at start is reported in seconds
/// and an outage mid-run shows in the log and `/metrics`.
const DEFAULT_REQUEST_RETRIES: [(&str, &str); 2] = [("max_retries", "2"), ("retry_timeout", "5s")];

/// Storage options: the `--storage-option` pairs, over Sluice's defaults. The
/// environment variables are read by the store clients themselves.
#[derive(Debug, Clone, Default)]
pub struct StorageOptions(HashMap<String, String>);

impl StorageOptions {
    pub fn new(pairs: &[(String, String)]) -> Self {
        let mut options: HashMap<String, String> =
            DEFAULT_REQUEST_RETRIES.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (key, value) in pairs {
            if is_secret(key) {
                remember_secret(value);
            }
            options.insert(key.clone(), value.clone());
        }
        for (key, value) in std::env::vars() {
            if is_secret(&key) {
                remember_secret(&value);
            }
        }
        StorageOptions(options)
    }

    pub fn map(&self) -> &HashMap<String, String> {
        &self.0
    }
}

/// Option and variable names whose values are credentials.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    let secretive = ["SECRET", "TOKEN", "PASSWORD", "ACCOUNT_KEY", "ACCESS_KEY", "SAS", "SIGNATURE", "CREDENTIAL"];
    !key.ends_with("ACCESS_KEY_ID") && secretive.iter().any(|s| key.contains(s))
}

fn secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(Mutex::default)
}

fn remember_secret(value: &str) {
    // Values this short are flags, not credentials, and would mangle messages.
    if value.len() >= 6 {
        if let Ok(mut known) = secrets().lock() {
            if !known.iter().any(|k| k == value) {
                known.push(value.to_string());
            }
        }
    }
}

/// Writes `body` at `path` unless an object is there already: `None` when this
/// wrote it, else what is there (another writer's, or ours from an attempt whose
/// answer was lost). Needs the store's conditional put, which [`probe`] checks.
pub async fn create_or_get(store: &dyn ObjectStore, path: &Path, body: Vec<u8>) -> object_store::Result<Option<bytes::Bytes>> {
    let create = PutOptions { mode: PutMode::Create, ..Default::default() };
    match store.put_opts(path, PutPayload::from(body), create).await {
        Ok(_) => Ok(None),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(Some(store.get(path).await?.bytes().await?)),
        Err(e) => Err(e),
    }
}

/// `text` with every credential Sluice was given replaced by `***`, and URL query
/// strings (SAS signatures) cut: for every message that may quote a store's answer.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    if let Ok(known) = secrets().lock() {
        for secret in known.iter() {
            out = out.replace(secret.as_str(), "***");
        }
    }
    // URL query strings may carry SAS signatures: cut them.
    let mut from = 0;
    while let Some(at) = out[from..].find("://").map(|i| from + i) {
        let end = out[at..].find(|c: char| c.is_whitespace() || c == '"' || c == '\'').map_or(out.len(), |e| at + e);
        match out[at..end].find('?') {
            Some(q) => {
                out.replace_range(at + q..end, "?***");
                from = at + q + 4;
            }
            None => from = end,
        }
    }
    out
}

/// Whether `error` is the store being unreachable or overloaded for a while, worth
/// waiting for, rather than a refusal or a bug: a connection that failed or timed
/// out, or a server error (5xx).
pub fn is_transient(error: &(dyn StdError + 'static)) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            if matches!(http.kind(), HttpErrorKind::Connect | HttpErrorKind::Request | HttpErrorKind::Timeout | HttpErrorKind::Interrupted) {
                return true;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | BrokenPipe) {
                return true;
            }
        }
        let text = e.to_string();
        if ["status code: 500", "status code: 502", "status code: 503", "status code: 504", "error sending request"]
            .iter()
            .any(|s| text.contains(s))
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// What is wrong with a store, in words an operator can act on.
fn diagnose(url: &Url, error: &object_store::Error) -> String {
    let text = full_text(error);
    let bucket = url.host_str().unwrap_or_default();
    let credentials = match url.scheme() {
        "s3" | "s3a" => "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        _ => "AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY",
    };
    if text.contains("loading credentials") {
        return format!(
            "no credentials found: set {credentials} (or AWS_PROFILE), pass --storage-option, or run where an instance role provides them"
        );
    }
    if text.contains("NoSuchBucket") || text.contains("ContainerNotFound") || text.contains("ResourceNotFound") {
        return format!("bucket or container `{bucket}` does not exist");
    }
    if matches!(error, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
        || ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthenticationFailed", "InvalidClientTokenId", "AccessDenied", "403 Forbidden"]
            .iter()
            .any(|s| text.contains(s))
    {
        return format!("access denied: check the credentials ({credentials} or --storage-option)");
    }
    if is_transient(error) {
        return "the store cannot be reached (is the endpoint right and the server up?)".into();
    }
    if matches!(error, object_store::Error::NotImplemented { .. }) {
        return "the store does not support conditional put (create-if-absent), which exactly-once commits need".into();
    }
    redact(&text)
}

/// An error with the messages of all its sources, for matching on a store's answer.
fn full_text(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

/// Checks that the store at `url` is there and lets us in (a listing); for a
/// writer also that it refuses to overwrite on a create-if-absent put, which Delta
/// commits rely on to never lose one. The probe object lives under `_sluice/`.
pub async fn probe(url: &Url, store: &dyn ObjectStore, write: bool) -> Result<()> {
    let fail = |problem: String| Error::Storage { url: url.to_string(), problem };
    use futures::StreamExt;
    let mut listing = store.list(Some(&Path::from("_sluice")));
    if let Some(Err(e)) = listing.next().await {
        return Err(fail(diagnose(url, &e)));
    }
    drop(listing);
    if !write {
        return Ok(());
    }
    let probe = Path::from(format!("_sluice/probe-{}-{}", std::process::id(), crate::time::now_micros()));
    let create = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    store.put_opts(&probe, PutPayload::from_static(b"1"), create.clone()).await.map_err(|e| fail(diagnose(url, &e)))?;
    let again = store.put_opts(&probe, PutPayload::from_static(b"2"), create).await;
    let _ = store.delete(&probe).await;
    match again {
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(()),
        Err(e) => Err(fail(diagnose(url, &e))),
        Ok(_) => Err(fail(
            "the store does not support conditional put: a create-if-absent write overwrote an existing object, \
             so two commits could silently replace each other"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_messages() {
        let options = StorageOptions::new(&[
            ("aws_secret_access_key".into(), "wJalrXUtnFEMI-very-secret".into()),
            ("aws_access_key_id".into(), "AKIDEXAMPLE".into()),
        ]);
        assert_eq!(options.map()["max_retries"], "2");
        let message = "PUT http://h/b/k?sv=2021&sig=abc%2Fdef&se=1 failed: key wJalrXUtnFEMI-very-secret rejected for AKIDEXAMPLE";
        let redacted = redact(message);
        assert!(!redacted.contains("wJalrXUtnFEMI"), "{redacted}");
        assert!(!redacted.contains("abc%2Fdef"), "{redacted}");
        assert!(redacted.contains("AKIDEXAMPLE"), "an access key id is a name, not a secret: {redacted}");
    }

    #[test]
    fn only_outages_are_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(is_transient(&io));
        let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no");
        assert!(!is_transient(&denied));
    }
}
