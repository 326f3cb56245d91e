//! The CLI's HTTP client: the platform's URL and a token from flags or the environment, and the
//! API's problem documents turned into one-line errors.

use std::path::Path;

use anyhow::Context;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http =
            reqwest::Client::builder().user_agent(concat!("mysimbdp-cli/", env!("CARGO_PKG_VERSION"))).build()?;
        Ok(Client { http, base: url.trim_end_matches('/').to_owned(), token })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn finish(&self, resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|p| p.get("detail").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(text);
        anyhow::bail!("{} {}: {detail}", status.as_u16(), status.canonical_reason().unwrap_or(""))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.with_context(|| format!("cannot reach the platform at {}", self.base))?;
        self.finish(resp).await
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        Ok(self.send(self.request(Method::GET, path).query(query)).await?.json().await?)
    }

    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.send(self.request(Method::GET, path)).await?.text().await?)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self.send(self.request(Method::POST, path).json(body)).await?.json().await?)
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self.send(self.request(Method::PUT, path).json(body)).await?.json().await?)
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<StatusCode> {
        Ok(self.send(self.request(Method::DELETE, path)).await?.status())
    }

    /// A DELETE whose answer is a JSON document.
    pub async fn delete_json(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(self.request(Method::DELETE, path)).await?.json().await?)
    }

    /// Streams a local file as the request body, with a progress bar on a terminal.
    pub async fn upload(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        file: &Path,
    ) -> anyhow::Result<Value> {
        let f = tokio::fs::File::open(file).await.with_context(|| format!("opening {}", file.display()))?;
        let size = f.metadata().await?.len();
        let bar = indicatif::ProgressBar::new(size);
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) && size > 1 << 20 {
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}")
                    .expect("a valid template"),
            );
        } else {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let progress = bar.clone();
        let stream = tokio_util::io::ReaderStream::new(f).inspect(move |chunk| {
            if let Ok(c) = chunk {
                progress.inc(c.len() as u64);
            }
        });
        let req = self
            .request(method, path)
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(stream));
        let result = self.send(req).await;
        bar.finish_and_clear();
        Ok(result?.json().await?)
    }
}
