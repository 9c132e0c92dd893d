//! Mounting a cache under a path prefix, so that it can live inside another tiny_http server.

use std::borrow::Cow;

use tiny_http::Request;

use crate::http::cache::Cache;

/// A cache answering below `prefix` (`""` for the root, or e.g. `"/cache"`).
#[derive(Clone)]
pub struct Mount {
    prefix: String,
    cache: Cache,
}

impl Mount {
    /// `prefix` is normalised to start with `/` and not end with one; `"/"` means the root.
    pub fn new(prefix: &str, cache: Cache) -> Mount {
        let trimmed = prefix.trim_end_matches('/');
        let prefix = if trimmed.is_empty() || trimmed.starts_with('/') {
            trimmed.to_string()
        } else {
            format!("/{trimmed}")
        };
        Mount { prefix, cache }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The cache and the path inside it, if `url` is below the prefix.
    pub fn route<'u>(&self, url: &'u str) -> Option<(&Cache, Cow<'u, str>)> {
        let rest = url.strip_prefix(self.prefix.as_str())?;
        if rest.starts_with('/') {
            Some((&self.cache, Cow::Borrowed(rest)))
        } else if rest.is_empty() || rest.starts_with('?') {
            Some((&self.cache, Cow::Owned(format!("/{rest}"))))
        } else {
            None // "/cachex" is not below "/cache".
        }
    }

    /// Serves `request` if its path is below the prefix and returns `None`; otherwise gives
    /// the request back untouched, for the application's own routes.
    pub fn try_serve(&self, request: Request) -> Option<Request> {
        let Some((cache, path)) = self.route(request.url()) else {
            return Some(request);
        };
        let path = path.into_owned();
        cache.serve(request, &path, false);
        None
    }
}
