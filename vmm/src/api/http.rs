//! One HTTP/1.1 request in, one response out. Requests are parsed with `httparse`; every
//! connection carries one request (`Connection: close`).

use super::{ApiError, VmApi};

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (bodies are not used by any endpoint).
pub const MAX_BODY: usize = 4 * 1024;
const MAX_HEADERS: usize = 32;

/// A response ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// For 405: the methods the path takes.
    pub allow: Option<&'static str>,
}

impl Response {
    fn json(status: u16, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string());
        Self {
            status,
            body,
            allow: None,
        }
    }

    /// `{"error": msg}` with `status`.
    pub fn error(status: u16, msg: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": msg }))
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    /// Where the body starts in the buffer.
    pub head_len: usize,
    pub content_length: usize,
}

/// What the bytes read so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed (and fit the limits).
    Partial,
    Complete(Head),
    /// Malformed or over a limit: answer with this and close.
    Reject(Response),
}

/// Parses the head of a request from `buf`.
pub fn parse_head(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Parse::Reject(Response::error(431, "request head too large"))
        }
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parse::Reject(Response::error(431, "too many headers"))
        }
        Err(e) => return Parse::Reject(Response::error(400, &format!("malformed request: {e}"))),
    };
    if head_len > MAX_HEAD {
        return Parse::Reject(Response::error(431, "request head too large"));
    }
    let mut content_length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parse::Reject(Response::error(400, "transfer-encoding is not supported"));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match parsed {
                Some(n) if n > MAX_BODY => {
                    return Parse::Reject(Response::error(413, "request body too large"))
                }
                Some(n) => content_length = n,
                None => return Parse::Reject(Response::error(400, "bad content-length")),
            }
        }
    }
    // httparse only returns Complete with both set.
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parse::Reject(Response::error(400, "malformed request"));
    };
    Parse::Complete(Head {
        method: method.to_string(),
        path: path.to_string(),
        head_len,
        content_length,
    })
}

/// Runs the request against the VM.
pub fn route(method: &str, path: &str, api: &dyn VmApi) -> Response {
    let path = path.split('?').next().unwrap_or(path);
    let action: fn(&dyn VmApi) -> Result<(), ApiError> = match path {
        "/vm" => {
            return match method {
                "GET" => Response::json(200, &api.status()),
                _ => method_not_allowed("GET"),
            }
        }
        "/vm/shutdown" => |a| a.shutdown(),
        "/vm/kill" => |a| a.kill(),
        "/vm/pause" => |a| a.pause(),
        "/vm/resume" => |a| a.resume(),
        _ => return Response::error(404, &format!("no such endpoint {path}")),
    };
    if method != "PUT" {
        return method_not_allowed("PUT");
    }
    match action(api) {
        Ok(()) => Response::json(200, &api.status()),
        Err(ApiError::Conflict(m)) => Response::error(409, &m),
        Err(ApiError::Failed(m)) => Response::error(500, &m),
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = Response::error(405, &format!("method not allowed (use {allow})"));
    r.allow = Some(allow);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{VmState, VmStatus};
    use std::sync::Mutex;

    /// A VM that records what it was asked and follows the state rules.
    struct FakeVm {
        state: Mutex<VmState>,
        calls: Mutex<Vec<&'static str>>,
    }

    impl FakeVm {
        fn new() -> Self {
            Self {
                state: Mutex::new(VmState::Running),
                calls: Mutex::new(Vec::new()),
            }
        }
        fn calls(&self) -> Vec<&'static str> {
            self.calls.lock().unwrap().clone()
        }
        fn record(&self, c: &'static str) {
            self.calls.lock().unwrap().push(c);
        }
    }

    impl VmApi for FakeVm {
        fn status(&self) -> VmStatus {
            VmStatus {
                name: "vm1".into(),
                state: *self.state.lock().unwrap(),
                pid: 42,
                uptime_ms: 7,
                vcpus: 2,
                memory_mib: 256,
                kernel: "/k".into(),
                boot_timer_us: None,
                addresses: vec![],
                devices: Default::default(),
            }
        }
        fn shutdown(&self) -> Result<(), ApiError> {
            self.record("shutdown");
            *self.state.lock().unwrap() = VmState::Stopping;
            Ok(())
        }
        fn kill(&self) -> Result<(), ApiError> {
            self.record("kill");
            Ok(())
        }
        fn pause(&self) -> Result<(), ApiError> {
            self.record("pause");
            let mut s = self.state.lock().unwrap();
            if *s != VmState::Running {
                return Err(ApiError::Conflict("not running".into()));
            }
            *s = VmState::Paused;
            Ok(())
        }
        fn resume(&self) -> Result<(), ApiError> {
            self.record("resume");
            Err(ApiError::Failed("kick failed".into()))
        }
    }

    fn complete(raw: &str) -> Head {
        match parse_head(raw.as_bytes()) {
            Parse::Complete(h) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn rejected(raw: &[u8]) -> u16 {
        match parse_head(raw) {
            Parse::Reject(r) => {
                let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                assert!(v["error"].is_string(), "{}", r.body);
                r.status
            }
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn parse_head_when_curl_request_then_method_path_and_length() {
        let raw = "PUT /vm/pause HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8\r\nContent-Length: 2\r\n\r\n{}";
        let head = complete(raw);
        assert_eq!(head.method, "PUT");
        assert_eq!(head.path, "/vm/pause");
        assert_eq!(head.content_length, 2);
        assert_eq!(&raw[head.head_len..], "{}");
    }

    #[test]
    fn parse_head_when_truncated_then_partial() {
        assert_eq!(parse_head(b"GET /vm HTTP/1.1\r\nHost: x"), Parse::Partial);
        assert_eq!(parse_head(b""), Parse::Partial);
    }

    #[test]
    fn parse_head_when_malformed_then_400() {
        let cases: &[&[u8]] = &[
            b"GET\r\n\r\n",
            b"\x00\x01\x02 garbage\r\n\r\n",
            b"GET /vm HTTP/9.9\r\n\r\n",
            b"GET /vm HTTP/1.1\r\nBad Header\r\n\r\n",
            b"PUT /vm/kill HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
            b"PUT /vm/kill HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for raw in cases {
            assert_eq!(rejected(raw), 400, "{raw:?}");
        }
    }

    #[test]
    fn parse_head_when_over_limits_then_413_or_431() {
        let body = format!(
            "PUT /vm/kill HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(rejected(body.as_bytes()), 413);
        let long = format!("GET /vm HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(rejected(long.as_bytes()), 431);
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let raw = format!("GET /vm HTTP/1.1\r\n{many}\r\n");
        assert_eq!(rejected(raw.as_bytes()), 431);
    }

    #[test]
    fn route_when_get_vm_then_status_json() {
        let vm = FakeVm::new();
        let r = route("GET", "/vm?pretty", &vm);
        assert_eq!(r.status, 200);
        let s: VmStatus = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            (s.name.as_str(), s.pid, s.state),
            ("vm1", 42, VmState::Running)
        );
        assert!(vm.calls().is_empty());
    }

    #[test]
    fn route_when_each_action_put_then_called_once_with_status_or_error() {
        let vm = FakeVm::new();
        assert_eq!(route("PUT", "/vm/pause", &vm).status, 200);
        assert_eq!(route("PUT", "/vm/pause", &vm).status, 409);
        assert_eq!(route("PUT", "/vm/resume", &vm).status, 500);
        let r = route("PUT", "/vm/shutdown", &vm);
        assert_eq!(r.status, 200);
        assert!(r.body.contains("\"stopping\""), "{}", r.body);
        assert_eq!(route("PUT", "/vm/kill", &vm).status, 200);
        assert_eq!(
            vm.calls(),
            vec!["pause", "pause", "resume", "shutdown", "kill"]
        );
    }

    #[test]
    fn route_when_wrong_method_then_405_with_allow_and_no_action() {
        let vm = FakeVm::new();
        for (m, p, allow) in [
            ("GET", "/vm/kill", "PUT"),
            ("POST", "/vm/shutdown", "PUT"),
            ("DELETE", "/vm", "GET"),
            ("PUT", "/vm", "GET"),
        ] {
            let r = route(m, p, &vm);
            assert_eq!((r.status, r.allow), (405, Some(allow)), "{m} {p}");
        }
        assert!(vm.calls().is_empty());
    }

    #[test]
    fn route_when_unknown_path_then_404() {
        let vm = FakeVm::new();
        for p in ["/", "/vms", "/vm/", "/vm/reboot", "vm", "/console/x"] {
            assert_eq!(route("GET", p, &vm).status, 404, "{p}");
        }
    }

    #[test]
    fn response_when_serialised_then_parses_as_http() {
        let mut r = Response::error(405, "no");
        r.allow = Some("PUT");
        let bytes = r.to_bytes();
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&bytes).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(resp.code, Some(405));
        assert!(resp
            .headers
            .iter()
            .any(|h| h.name == "Allow" && h.value == b"PUT"));
        assert_eq!(&bytes[n..], br#"{"error":"no"}"#);
    }
}
