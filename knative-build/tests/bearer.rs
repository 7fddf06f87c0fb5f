//! The Docker token flow (BUILD.md §2.3 "Auth"): a registry that answers
//! `401 WWW-Authenticate: Bearer realm=...` and a token endpoint that wants
//! Basic credentials. `docker-registry` only does token auth with signed
//! JWTs from an external token server, so this is a small in-process mock
//! that speaks just enough of the distribution API for a push.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use knative_build::image::{Credentials, ImageBuilder, ImageError, OciLayout, RegistryClient};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TOKEN: &str = "token-for-alice";

/// One request the mock saw.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    blobs: HashSet<String>,
}

struct MockRegistry {
    host: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockRegistry {
    async fn start(user: &str, password: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let host = listener.local_addr()?.to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let basic = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
        let realm = format!("http://{host}/token");
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                let basic = basic.clone();
                let realm = realm.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, state, &basic, &realm).await;
                });
            }
        });
        Ok(Self { host, state, task })
    }

    fn seen(&self) -> Vec<Seen> {
        self.state
            .lock()
            .map(|s| s.seen.clone())
            .unwrap_or_default()
    }
}

/// Serves one keep-alive connection.
async fn serve(
    stream: TcpStream,
    state: Arc<Mutex<State>>,
    basic: &str,
    realm: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let mut authorization = None;
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim().to_string();
                match name.to_ascii_lowercase().as_str() {
                    "authorization" => authorization = Some(value),
                    "content-length" => content_length = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).await?;

        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        let response = {
            let mut state = state
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            state.seen.push(Seen {
                method: method.clone(),
                path: target.clone(),
                authorization: authorization.clone(),
            });
            respond(
                &mut state,
                &method,
                path,
                query,
                authorization.as_deref(),
                basic,
                realm,
            )
        };
        reader.get_mut().write_all(response.as_bytes()).await?;
    }
}

fn respond(
    state: &mut State,
    method: &str,
    path: &str,
    query: &str,
    authorization: Option<&str>,
    basic: &str,
    realm: &str,
) -> String {
    let reply = |status: &str, headers: &[(&str, String)], body: &str| {
        let mut text = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        if method != "HEAD" {
            text.push_str(body);
        }
        text
    };
    if path == "/token" {
        return if authorization == Some(basic) {
            reply(
                "200 OK",
                &[],
                &format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#),
            )
        } else {
            reply("401 Unauthorized", &[], r#"{"details":"bad credentials"}"#)
        };
    }
    if authorization != Some(&format!("Bearer {TOKEN}")) {
        let challenge = format!(r#"Bearer realm="{realm}",service="mock-registry""#);
        return reply(
            "401 Unauthorized",
            &[("WWW-Authenticate", challenge)],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
    }
    let digest_param = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("digest="))
        .map(|d| d.replace("%3A", ":"));
    match method {
        "GET" if path == "/v2/" => reply("200 OK", &[], "{}"),
        "HEAD" if path.contains("/blobs/") => {
            let digest = path.rsplit('/').next().unwrap_or_default();
            if state.blobs.contains(digest) {
                reply("200 OK", &[], "")
            } else {
                reply("404 Not Found", &[], "")
            }
        }
        "POST" if path.ends_with("/blobs/uploads/") => reply(
            "202 Accepted",
            &[("Location", format!("{path}session-1"))],
            "",
        ),
        "PUT" if path.contains("/blobs/uploads/") => match digest_param {
            Some(digest) => {
                state.blobs.insert(digest.clone());
                let location = path.replace("uploads/session-1", &digest);
                reply("201 Created", &[("Location", location)], "")
            }
            None => reply("400 Bad Request", &[], ""),
        },
        "PUT" if path.contains("/manifests/") => {
            reply("201 Created", &[("Location", path.to_string())], "")
        }
        _ => reply("404 Not Found", &[], ""),
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn small_image(
    dir: &tempfile::TempDir,
) -> Result<knative_build::image::BuiltImage, Box<dyn std::error::Error>> {
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("hello.txt"), "hello\n")?;
    let layout = OciLayout::create(dir.path().join("layout"))?;
    Ok(ImageBuilder::new(src).build(&layout).await?)
}

#[tokio::test]
async fn basic_credentials_are_traded_for_a_bearer_token() -> TestResult {
    let registry = MockRegistry::start("alice", "pw").await?;
    let dir = tempfile::tempdir()?;
    let image = small_image(&dir).await?;
    let client = RegistryClient::builder()
        .plain_http(&registry.host)
        .credentials(&registry.host, Credentials::basic("alice", "pw"))
        .build()?;
    let pushed = client
        .push(&image, &format!("{}/bearer/app:v1", registry.host))
        .await?;
    assert_eq!(pushed.uploaded.len(), 2);

    let seen = registry.seen();
    let token_requests: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.starts_with("/token"))
        .collect();
    assert!(
        !token_requests.is_empty(),
        "no token was requested: {seen:?}"
    );
    assert!(
        token_requests.iter().any(|s| s
            .path
            .contains("scope=repository%3Abearer%2Fapp%3Apull%2Cpush")),
        "{token_requests:?}"
    );
    let manifest_put = seen
        .iter()
        .find(|s| s.method == "PUT" && s.path.contains("/manifests/"))
        .ok_or("no manifest upload")?;
    assert_eq!(
        manifest_put.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    Ok(())
}

#[tokio::test]
async fn token_endpoint_refusal_is_a_clear_auth_error() -> TestResult {
    let registry = MockRegistry::start("alice", "pw").await?;
    let dir = tempfile::tempdir()?;
    let image = small_image(&dir).await?;
    let client = RegistryClient::builder()
        .plain_http(&registry.host)
        .credentials(&registry.host, Credentials::basic("alice", "wrong"))
        .build()?;
    let err = client
        .push(&image, &format!("{}/bearer/app:v1", registry.host))
        .await
        .err()
        .ok_or("push with a wrong password succeeded")?;
    assert_eq!(
        err.to_string(),
        format!(
            "registry {} rejected the credentials for user alice (401)",
            registry.host
        )
    );
    Ok(())
}

#[tokio::test]
async fn a_given_bearer_token_is_sent_as_is() -> TestResult {
    let registry = MockRegistry::start("alice", "pw").await?;
    let dir = tempfile::tempdir()?;
    let image = small_image(&dir).await?;
    let target = format!("{}/bearer/app:v1", registry.host);

    let good = RegistryClient::builder()
        .plain_http(&registry.host)
        .credentials(&registry.host, Credentials::Bearer(TOKEN.to_string()))
        .build()?;
    good.push(&image, &target).await?;
    assert!(
        !registry.seen().iter().any(|s| s.path.starts_with("/token")),
        "a ready token needs no token request"
    );

    let bad = RegistryClient::builder()
        .plain_http(&registry.host)
        .credentials(&registry.host, Credentials::Bearer("stale".to_string()))
        .build()?;
    let err = bad
        .push(&image, &target)
        .await
        .err()
        .ok_or("stale token accepted")?;
    assert!(
        matches!(&err, ImageError::AuthRejected { user, .. } if user == "<bearer token>"),
        "{err:?}"
    );
    Ok(())
}
