//! The BigQuery upload endpoint's resumable protocol, for load jobs whose data is not on GCS:
//! `POST /upload/bigquery/v2/projects/P/jobs?uploadType=resumable` with the job as JSON returns a
//! session URL; the file then goes up in chunks (`PUT` with `Content-Range`), each answered with
//! 308 until the last, which returns the job.

use bytes::Bytes;
use reqwest::StatusCode;

/// Bytes per PUT: a multiple of 256 KiB, as the protocol requires for all chunks but the last.
const CHUNK: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("HTTP {0}: {1}")]
    Status(u16, String),
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("the upload endpoint returned no session URL (Location header)")]
    NoSession,
}

impl UploadError {
    pub fn status(&self) -> Option<i64> {
        match self {
            Self::Status(code, _) => Some(*code as i64),
            _ => None,
        }
    }
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response, UploadError> {
    let status = resp.status();
    if status.is_success() || status == StatusCode::PERMANENT_REDIRECT {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(body);
    Err(UploadError::Status(status.as_u16(), message))
}

/// Starts a load job `job` with `data` as its source; returns once the service has the job.
pub async fn resumable(
    http: &reqwest::Client,
    endpoint: &str,
    project: &str,
    token: &str,
    job: &serde_json::Value,
    data: Bytes,
) -> Result<(), UploadError> {
    let start =
        format!("{endpoint}/upload/bigquery/v2/projects/{project}/jobs?uploadType=resumable");
    let mut req = http
        .post(&start)
        .header("X-Upload-Content-Type", "application/octet-stream")
        .header("X-Upload-Content-Length", data.len())
        .json(job);
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let resp = check(req.send().await?).await?;
    let session = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(UploadError::NoSession)?
        .to_string();
    let total = data.len();
    let mut offset = 0;
    loop {
        let end = (offset + CHUNK).min(total);
        let range = if total == 0 {
            "bytes */0".to_string()
        } else {
            format!("bytes {offset}-{}/{total}", end - 1)
        };
        let mut req = http
            .put(&session)
            .header(reqwest::header::CONTENT_RANGE, range)
            .body(data.slice(offset..end));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        let resp = check(req.send().await?).await?;
        if resp.status() != StatusCode::PERMANENT_REDIRECT {
            return Ok(());
        }
        // The service says how much it has: resume from there.
        offset = resp
            .headers()
            .get(reqwest::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.rsplit('-').next())
            .and_then(|n| n.parse::<usize>().ok())
            .map_or(end, |last| last + 1);
    }
}
