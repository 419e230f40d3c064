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

/// A place in an object store: the store (rooted at the bucket, or at `/` for local folders),
/// the path of the place in it, and its absolute URL (`s3://b/p`, `gs://b/p`, `file:///abs`),
/// without a trailing slash. Parsed once; every lake path and URL is derived from it.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub root: Path,
    pub url: Url,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)
    }
}

impl Location {
    /// A local path (created if missing), `file://`, `s3://` or `gs://` URL.
    pub fn parse(location: &str) -> Result<Self, StorageError> {
        let invalid = |message: String| StorageError::Invalid {
            location: location.to_string(),
            message,
        };
        let store_err = |source| StorageError::Store {
            location: location.to_string(),
            source,
        };
        if !location.contains("://") || location.starts_with("file://") {
            let local = location.strip_prefix("file://").unwrap_or(location);
            let abs = std::path::absolute(local).map_err(|e| invalid(e.to_string()))?;
            std::fs::create_dir_all(&abs)
                .map_err(|e| invalid(format!("cannot create folder: {e}")))?;
            let abs = abs.canonicalize().unwrap_or(abs);
            let root = Path::from_absolute_path(&abs).map_err(|e| invalid(e.to_string()))?;
            let url = Url::from_directory_path(&abs)
                .map_err(|()| invalid("not an absolute path".into()))?;
            let store = LocalFileSystem::new().with_automatic_cleanup(true);
            return Ok(Self {
                store: Arc::new(store),
                root,
                url: trim_slash(url),
            });
        }
        let url = Url::parse(location).map_err(|e| invalid(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => {
                let mut builder = AmazonS3Builder::from_env().with_url(location);
                if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL_S3")
                    .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                {
                    builder = builder
                        .with_endpoint(&endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                Arc::new(builder.build().map_err(store_err)?)
            }
            // Credentials from GOOGLE_SERVICE_ACCOUNT / GOOGLE_APPLICATION_CREDENTIALS or the
            // metadata server, as object_store reads them.
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
        let root =
            Path::parse(url.path().trim_start_matches('/')).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            store,
            root,
            url: trim_slash(url),
        })
    }

    /// A path under this place (`relative` split on `/`).
    pub fn path(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|s| !s.is_empty())
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    /// The URL of a path under this place.
    pub fn url_of(&self, relative: &str) -> String {
        let relative = relative.trim_matches('/');
        if relative.is_empty() {
            return self.url.to_string();
        }
        format!("{}/{relative}", self.url)
    }

    /// `path` relative to this place.
    pub fn relative(&self, path: &Path) -> String {
        let full = path.as_ref();
        full.strip_prefix(self.root.as_ref())
            .unwrap_or(full)
            .trim_start_matches('/')
            .to_string()
    }

    /// Whether this is a local folder.
    pub fn is_local(&self) -> bool {
        self.url.scheme() == "file"
    }
}

fn trim_slash(url: Url) -> Url {
    let text = url.as_str().trim_end_matches('/').to_string();
    Url::parse(&text).unwrap_or(url)
}

/// Opens the store holding `location` (a local path or URL) and the path of `location` in it.
pub fn parse(location: &str) -> Result<(Arc<dyn ObjectStore>, Path), StorageError> {
    let l = Location::parse(location)?;
    Ok((l.store, l.root))
}
