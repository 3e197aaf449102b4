//! What can go wrong talking to the Hangar API.

use std::error::Error as _;
use std::path::PathBuf;

/// An error of the client. Each message is one line that says what failed and what to do,
/// so the CLI can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the API address (connection refused, no route, DNS failure).
    #[error("cannot reach the Hangar API at {url}: is `hangar server` running?")]
    Unreachable {
        /// The base URL of the API.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused the token (HTTP 401).
    #[error(
        "{message}: check the API token (--token, HANGAR_API_TOKEN, the config file or <data-dir>/admin-token)"
    )]
    Unauthorized {
        /// The server's `error` message.
        message: String,
    },
    /// The server answered with an error status and (usually) an `{"error": ...}` body.
    #[error("{message} (HTTP {status})")]
    Api {
        /// The HTTP status code.
        status: u16,
        /// The server's `error` message, or the body or status text when it sent none.
        message: String,
    },
    /// The request or the response failed after the connection was made.
    #[error("request to {url} failed ({cause}): check that the API URL points at a Hangar server")]
    Transport {
        /// The URL of the request.
        url: String,
        /// The innermost cause, for the message.
        cause: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered 2xx with a body this client does not understand.
    #[error(
        "unexpected response from {url}: {source}; is the server a Hangar of the same version?"
    )]
    Decode {
        /// The URL of the request.
        url: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A line of a streamed response is longer than the client accepts.
    #[error("a line of the response from {url} is longer than {limit} bytes")]
    LineTooLong {
        /// The URL of the request.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The API URL cannot be used.
    #[error("invalid API URL {url:?}: {reason}; use e.g. http://127.0.0.1:4280")]
    InvalidUrl {
        /// The refused URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No API token in any of the places the client looks.
    #[error(
        "no API token found (looked at {looked}): pass --token, set HANGAR_API_TOKEN, or run as root on the server host"
    )]
    NoToken {
        /// The places looked at, with why each gave nothing.
        looked: String,
    },
    /// The client config file cannot be read or parsed.
    #[error("cannot use the config file {}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A local file (an image to import) cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A directory given as an image is not an OCI image layout.
    #[error(
        "{} is a directory but not an OCI image layout (no `oci-layout` file): give an oci-archive or docker-save tarball, or an OCI layout directory",
        path.display()
    )]
    NotOciLayout {
        /// The directory.
        path: PathBuf,
    },
}

impl ClientError {
    /// The HTTP status the server answered with, if the error came from an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }

    /// Maps a transport error: connection failures become [`ClientError::Unreachable`].
    pub(crate) fn transport(base_url: &str, url: &str, source: reqwest::Error) -> Self {
        if source.is_connect() {
            return ClientError::Unreachable {
                url: base_url.to_owned(),
                source,
            };
        }
        let mut cause = source.to_string();
        let mut next = source.source();
        while let Some(e) = next {
            cause = e.to_string();
            next = e.source();
        }
        ClientError::Transport {
            url: url.to_owned(),
            cause,
            source,
        }
    }
}
