//! The CLI's side of the control socket: one request per connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest response accepted.
const MAX_RESPONSE: u64 = 1 << 20;

/// Errors talking to a VM's control socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talk to {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed response from {}", path.display())]
    BadResponse { path: PathBuf },
    #[error("the VM refused: {status} {message}")]
    Refused { status: u16, message: String },
}

/// Sends `method path` and returns the JSON body of a 2xx answer.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut buf = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut buf).map_err(io)?;
    parse_response(&buf).ok_or_else(|| ClientError::BadResponse {
        path: socket.to_path_buf(),
    })?
}

fn parse_response(buf: &[u8]) -> Option<Result<serde_json::Value, ClientError>> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(n) = resp.parse(buf).ok()? else {
        return None;
    };
    let status = resp.code?;
    let body: serde_json::Value = serde_json::from_slice(&buf[n..]).ok()?;
    if (200..300).contains(&status) {
        return Some(Ok(body));
    }
    let message = body["error"].as_str().unwrap_or("").to_string();
    Some(Err(ClientError::Refused { status, message }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::http::Response;

    #[test]
    fn parse_response_when_error_status_then_refused_with_message() {
        let bytes = Response::error(409, "already paused").to_bytes();
        match parse_response(&bytes) {
            Some(Err(ClientError::Refused { status, message })) => {
                assert_eq!((status, message.as_str()), (409, "already paused"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parse_response_when_truncated_or_not_json_then_none() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-").is_none());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nnot json").is_none());
    }
}
