//! Object store access for every path Weir touches: a local folder, `file://`, `s3://` (endpoint,
//! region and credentials from the standard AWS environment), `gs://` (Google credentials).

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("\"{location}\": {message}")]
    Invalid { location: String, message: String },
    #[error("\"{location}\": {source}")]
    Store {
        location: String,
        source: object_store::Error,
    },
}

/// Opens the store holding `location` (a local path or URL) and the path of `location` in it.
pub fn parse(location: &str) -> Result<(Arc<dyn ObjectStore>, Path), StorageError> {
    let invalid = |message: String| StorageError::Invalid {
        location: location.to_string(),
        message,
    };
    if !location.contains("://") || location.starts_with("file://") {
        let local = location.strip_prefix("file://").unwrap_or(location);
        let abs = std::path::absolute(local).map_err(|e| invalid(e.to_string()))?;
        std::fs::create_dir_all(&abs).map_err(|e| invalid(format!("cannot create folder: {e}")))?;
        let store = LocalFileSystem::new_with_prefix(&abs)
            .map_err(|source| StorageError::Store {
                location: location.to_string(),
                source,
            })?
            .with_automatic_cleanup(true);
        return Ok((Arc::new(store), Path::default()));
    }
    let url = Url::parse(location).map_err(|e| invalid(e.to_string()))?;
    let store_err = |source| StorageError::Store {
        location: location.to_string(),
        source,
    };
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env().with_url(location);
            if let Ok(endpoint) =
                std::env::var("AWS_ENDPOINT_URL_S3").or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            {
                builder = builder
                    .with_endpoint(&endpoint)
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            Arc::new(builder.build().map_err(store_err)?)
        }
        // Credentials from GOOGLE_SERVICE_ACCOUNT / GOOGLE_APPLICATION_CREDENTIALS or the metadata
        // server, as object_store reads them.
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(location)
                .build()
                .map_err(store_err)?,
        ),
        other => {
            return Err(invalid(format!(
                "unsupported scheme \"{other}\"; use a local path, file://, s3:// or gs://"
            )));
        }
    };
    let path =
        Path::parse(url.path().trim_start_matches('/')).map_err(|e| invalid(e.to_string()))?;
    Ok((store, path))
}
