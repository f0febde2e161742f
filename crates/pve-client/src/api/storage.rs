//! Per-storage calls: content, upload, download-url.

use std::path::PathBuf;

use futures_util::FutureExt;

use crate::api::{NodeApi, seg, upid_of};
use crate::client::Body;
use crate::{Error, Method, Params, Result, StorageContent, Upid};

/// Calls on one storage of one node. Get one with [`NodeApi::storage`].
#[derive(Debug, Clone, Copy)]
pub struct StorageApi<'a> {
    pub(crate) node: NodeApi<'a>,
    pub(crate) storage: &'a str,
}

/// An upload of a local file (`POST .../upload`).
#[derive(Debug, Clone)]
pub struct Upload {
    /// Local file to send. It is streamed, never read into memory.
    pub file: PathBuf,
    /// `iso`, `vztmpl` or `import`.
    pub content: String,
    /// Name on the storage (PVE normalizes it).
    pub filename: String,
    /// Expected checksum, checked by PVE after the copy.
    pub checksum: Option<(String, String)>,
}

/// A server-side download (`POST .../download-url`): the node fetches `url` itself.
#[derive(Debug, Clone)]
pub struct DownloadUrl {
    /// `http(s)://...`.
    pub url: String,
    /// `iso`, `vztmpl` or `import`.
    pub content: String,
    /// Name on the storage.
    pub filename: String,
    /// `(algorithm, checksum)`, e.g. `("sha256", "ab12...")`.
    pub checksum: Option<(String, String)>,
    /// Decompress with this algorithm (`gz`, `lzo`, `zst`, `bz2`).
    pub compression: Option<String>,
}

impl StorageApi<'_> {
    fn path(&self, rest: &str) -> String {
        self.node
            .path(&format!("/storage/{}{rest}", seg(self.storage)))
    }

    /// `GET .../content`, optionally of one content type.
    pub async fn content(&self, content: Option<&str>) -> Result<Vec<StorageContent>> {
        self.node
            .client
            .call(
                Method::Get,
                &self.path("/content"),
                &Params::new().with_opt("content", content),
            )
            .await
    }

    /// `DELETE .../content/{volume}`. Returns the task when PVE runs one.
    pub async fn delete_volume(&self, volid: &str) -> Result<Option<Upid>> {
        let path = self.path(&format!("/content/{}", seg(volid)));
        match self
            .node
            .client
            .call::<serde_json::Value>(Method::Delete, &path, &Params::new())
            .await?
        {
            serde_json::Value::Null => Ok(None),
            v => upid_of(Method::Delete, &path, v).map(Some),
        }
    }

    /// `POST .../upload`: streams the file as multipart on the client's shared connection pool.
    ///
    /// Upload has no `proxyto` in PVE, so send it to the node that owns the storage: this
    /// client's base URL must point at that node.
    pub async fn upload(&self, upload: &Upload) -> Result<Upid> {
        let path = self.path("/upload");
        let meta = tokio::fs::metadata(&upload.file)
            .await
            .map_err(|source| Error::Io {
                path: upload.file.display().to_string(),
                source,
            })?;
        let len = meta.len();
        let up = upload.clone();
        let make = move || {
            let up = up.clone();
            async move {
                let file = tokio::fs::File::open(&up.file)
                    .await
                    .map_err(|source| Error::Io {
                        path: up.file.display().to_string(),
                        source,
                    })?;
                let stream = tokio_util::io::ReaderStream::new(file);
                let part = reqwest::multipart::Part::stream_with_length(
                    reqwest::Body::wrap_stream(stream),
                    len,
                )
                .file_name(up.filename.clone())
                .mime_str("application/octet-stream")
                .expect("static mime");
                let mut form = reqwest::multipart::Form::new().text("content", up.content.clone());
                if let Some((algo, sum)) = &up.checksum {
                    form = form
                        .text("checksum-algorithm", algo.clone())
                        .text("checksum", sum.clone());
                }
                Ok(form.part("filename", part))
            }
            .boxed()
        };
        let v = self
            .node
            .client
            .execute(Method::Post, &path, Body::Multipart(&make))
            .await?;
        upid_of(Method::Post, &path, v)
    }

    /// `POST .../download-url`.
    pub async fn download_url(&self, d: &DownloadUrl) -> Result<Upid> {
        let path = self.path("/download-url");
        let mut p = Params::new()
            .with("url", d.url.as_str())
            .with("content", d.content.as_str())
            .with("filename", d.filename.as_str());
        if let Some((algo, sum)) = &d.checksum {
            p = p
                .with("checksum-algorithm", algo.as_str())
                .with("checksum", sum.as_str());
        }
        p = p.with_opt("compression", d.compression.as_deref());
        let v = self.node.client.call(Method::Post, &path, &p).await?;
        upid_of(Method::Post, &path, v)
    }
}
