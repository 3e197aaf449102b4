//! Newline-delimited JSON responses (`logs`), decoded line by line as they arrive.

use std::marker::PhantomData;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::ClientError;

/// The longest line accepted; a longer one means a broken server, not a log line.
pub const MAX_LINE_BYTES: usize = 1 << 20;

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A stream of `T`, one per line of the response body.
pub struct NdjsonStream<T> {
    body: ByteStream,
    buf: Vec<u8>,
    done: bool,
    base_url: String,
    url: String,
    _item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> NdjsonStream<T> {
    pub(crate) fn new(response: reqwest::Response, base_url: String) -> Self {
        let url = response.url().to_string();
        NdjsonStream {
            body: Box::pin(response.bytes_stream()),
            buf: Vec::new(),
            done: false,
            base_url,
            url,
            _item: PhantomData,
        }
    }

    /// The next item, `None` at the end of the response.
    ///
    /// Blank lines are skipped; a last line without a newline is still returned.
    pub async fn next(&mut self) -> Option<Result<T, ClientError>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if let Some(item) = self.decode(&line) {
                    return Some(item);
                }
                continue;
            }
            if self.buf.len() > MAX_LINE_BYTES {
                self.done = true;
                self.buf.clear();
                return Some(Err(ClientError::LineTooLong {
                    url: self.url.clone(),
                    limit: MAX_LINE_BYTES,
                }));
            }
            if self.done {
                let rest = std::mem::take(&mut self.buf);
                return self.decode(&rest);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    self.done = true;
                    self.buf.clear();
                    return Some(Err(ClientError::transport(&self.base_url, &self.url, e)));
                }
                None => self.done = true,
            }
        }
    }

    fn decode(&self, line: &[u8]) -> Option<Result<T, ClientError>> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return None;
        }
        Some(
            serde_json::from_slice(line).map_err(|source| ClientError::Decode {
                url: self.url.clone(),
                source,
            }),
        )
    }
}
