//! Files of any size, both ways, binary-safe.
//!
//! PVE caps one `file-write` at 61,440 characters and one `file-read` at 16 MiB, so:
//! - small writes are one `file-write` straight to the target (parents created only when the
//!   agent says they are missing, so the common case is one call);
//! - large writes are chunks written concurrently next to each other in the guest's temp dir,
//!   then one exec concatenates them into the target (quoted, whatever the name), deletes them
//!   and prints size and SHA-256, which must match what was sent;
//! - reads page with `offset`/`count`/`decode=0` (PVE ≥ 9.2). An older PVE rejects those
//!   parameters; then the first 16 MiB come from a plain `file-read` and the rest through exec.
//!   Reads never truncate silently: past the caller's limit they fail.

use std::sync::atomic::Ordering;

use pve_client::Params;
use sha2::{Digest, Sha256};

use crate::error::{self, Error, Result};
use crate::shell::{Script, single_quote};
use crate::wire;
use crate::{ExecRequest, GuestAgent, READ_PAGE, WRITE_CHUNK};

/// Pages read through exec on old PVE: under QGA's 16 MiB output capture.
const EXEC_PAGE: u64 = 15 * 1024 * 1024;

fn parent(abs: &str) -> &str {
    match abs.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((p, _)) => p,
    }
}

/// Maps what `sh`/`cat` printed about a target path to the matching error.
fn classify_stderr(stderr: &[u8], path: &str, stage: &str) -> Error {
    let text = String::from_utf8_lossy(stderr);
    if text.contains("Is a directory") {
        Error::IsADirectory { path: path.into() }
    } else if text.contains("Permission denied") || text.contains("Read-only file system") {
        Error::PermissionDenied { path: path.into() }
    } else if text.contains("No such file") || text.contains("Not a directory") {
        Error::NotFound { path: path.into() }
    } else {
        Error::Wrapper {
            stage: stage.into(),
            stderr: text.into_owned(),
        }
    }
}

impl GuestAgent {
    /// Writes `contents` to `path` (relative to the workdir), creating parent directories and
    /// replacing an existing file.
    ///
    /// Errors: [`Error::IsADirectory`], [`Error::PermissionDenied`], [`Error::NotFound`] (a
    /// parent that cannot be created), [`Error::Corrupted`], [`Error::AgentUnavailable`].
    pub async fn write_file(&self, path: &str, contents: &[u8]) -> Result<()> {
        let abs = self.resolve(path);
        if let Some(user) = self.inner.file_user.clone() {
            return self.write_file_as(&user, path, &abs, contents).await;
        }
        if contents.is_empty() {
            return self.assemble(path, &abs, None, contents).await;
        }
        if contents.len() > WRITE_CHUNK {
            let nonce = format!("{:016x}", rand::random::<u64>());
            let prefix = format!("{}/.pvesandbox-{nonce}.w", self.inner.tmpdir);
            let r = async {
                self.upload_chunks(&prefix, contents).await?;
                self.assemble(path, &abs, Some(&prefix), contents).await
            }
            .await;
            if r.is_err() {
                self.remove_transfer_files(&nonce).await;
            }
            return r;
        }
        match self.file_write(path, &abs, contents).await {
            Err(Error::NotFound { .. }) => {
                let mut s = Script::new();
                let d = s.word(parent(&abs).as_bytes());
                let (status, _, stderr) = self
                    .run_script(&format!("{}mkdir -p -- {d}", s.take_prelude()))
                    .await?;
                if status != 0 {
                    return Err(classify_stderr(&stderr, path, "mkdir"));
                }
                self.file_write(path, &abs, contents).await
            }
            other => other,
        }
    }

    async fn file_write(&self, path: &str, abs: &str, contents: &[u8]) -> Result<()> {
        let params = Params::new()
            .with("file", abs)
            .with("content", wire::b64(contents))
            .with("encode", false);
        self.inner
            .client
            .post(&self.path_of("file-write"), &params)
            .await
            .map_err(|e| error::classify_file(e, path, self.inner.vmid))?;
        Ok(())
    }

    /// One exec that creates the parents, moves the uploaded chunks (or nothing) into `abs` and
    /// reports size and SHA-256 for verification.
    async fn assemble(
        &self,
        path: &str,
        abs: &str,
        prefix: Option<&str>,
        contents: &[u8],
    ) -> Result<()> {
        let mut s = Script::new();
        let t = s.word(abs.as_bytes());
        let d = s.word(parent(abs).as_bytes());
        let (fill, cleanup) = match prefix {
            Some(p) => {
                let p = single_quote(p.as_bytes());
                (format!("cat -- {p}.* > {t}"), format!("rm -f -- {p}.*"))
            }
            None => (format!(": > {t}"), ":".to_owned()),
        };
        let script = format!(
            "{pre}if [ -d {t} ]; then {cleanup}; echo '{t}: Is a directory' >&2; exit 1; fi\n\
             mkdir -p -- {d} 2>/dev/null\n\
             if ! {fill}; then {cleanup}; exit 1; fi\n\
             {cleanup}\n\
             wc -c < {t} && {{ sha256sum < {t} 2>/dev/null || echo unverified; }}",
            pre = s.take_prelude(),
        );
        let (status, stdout, stderr) = self.run_script(&script).await?;
        if status != 0 {
            return Err(classify_stderr(&stderr, path, "assemble"));
        }
        let text = String::from_utf8_lossy(&stdout);
        let mut lines = text.lines();
        let size: Option<usize> = lines.next().and_then(|l| l.trim().parse().ok());
        let hash = lines
            .next()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("");
        let want = format!("{:x}", Sha256::digest(contents));
        if size != Some(contents.len()) || (hash != "unverified" && hash != want) {
            return Err(Error::Corrupted {
                path: path.into(),
                detail: format!(
                    "sent {} bytes sha256 {want}, guest has {size:?} bytes sha256 {hash}",
                    contents.len()
                ),
            });
        }
        Ok(())
    }

    /// Reads `path` (relative to the workdir) whole. With `limit`, a file larger than `limit`
    /// bytes fails with [`Error::OutputLimit`] instead of coming back truncated.
    ///
    /// Errors: [`Error::NotFound`], [`Error::IsADirectory`], [`Error::PermissionDenied`],
    /// [`Error::OutputLimit`], [`Error::AgentUnavailable`].
    pub async fn read_file(&self, path: &str, limit: Option<u64>) -> Result<Vec<u8>> {
        let abs = self.resolve(path);
        let limit = limit.unwrap_or(u64::MAX);
        if let Some(user) = self.inner.file_user.clone() {
            return self.read_file_as(&user, path, &abs, limit).await;
        }
        let mut out: Vec<u8> = Vec::new();
        loop {
            let have = out.len() as u64;
            // One byte past the limit tells "too big" without reading the rest.
            let want = READ_PAGE.min(limit.saturating_sub(have).saturating_add(1));
            let page = match self.read_page(path, &abs, have, want).await? {
                Some(page) => page,
                None => return self.read_file_legacy(path, &abs, limit).await,
            };
            let n = page.len() as u64;
            out.extend_from_slice(&page);
            if out.len() as u64 > limit {
                return Err(Error::OutputLimit {
                    path: path.into(),
                    limit,
                });
            }
            if n < want {
                return Ok(out);
            }
        }
    }

    /// Up to `count` bytes of `path` from byte `offset`: fewer at the end of the file, none
    /// past it. One call on PVE 9.2 and later (paged `file-read`); older PVE reads the whole
    /// file and cuts it. For tailing a file that grows (a command's output).
    ///
    /// Errors: as [`read_file`](Self::read_file).
    pub async fn read_at(&self, path: &str, offset: u64, count: u64) -> Result<Vec<u8>> {
        let abs = self.resolve(path);
        if self.inner.file_user.is_none() {
            // In pages PVE accepts: a `count` over its maximum is a parameter error that
            // would read as "no paging here".
            let mut out: Vec<u8> = Vec::new();
            while (out.len() as u64) < count {
                let have = out.len() as u64;
                let want = READ_PAGE.min(count - have);
                let Some(page) = self.read_page(path, &abs, offset + have, want).await? else {
                    break;
                };
                let short = (page.len() as u64) < want;
                out.extend_from_slice(&page);
                if short {
                    return Ok(out);
                }
            }
            if self.inner.paged_reads.load(Ordering::Relaxed) != 2 {
                return Ok(out);
            }
        }
        let all = self.read_file(path, None).await?;
        let start = (offset as usize).min(all.len());
        let end = start.saturating_add(count as usize).min(all.len());
        Ok(all[start..end].to_vec())
    }

    /// One paged `file-read`, or `None` when this PVE has no paging (before 9.2; remembered).
    async fn read_page(
        &self,
        path: &str,
        abs: &str,
        offset: u64,
        count: u64,
    ) -> Result<Option<Vec<u8>>> {
        if self.inner.paged_reads.load(Ordering::Relaxed) == 2 {
            return Ok(None);
        }
        let params = Params::new()
            .with("file", abs)
            .with("offset", offset)
            .with("count", count)
            .with("decode", false);
        match self
            .inner
            .client
            .get(&self.path_of("file-read"), &params)
            .await
        {
            Ok(v) => {
                self.inner.paged_reads.store(1, Ordering::Relaxed);
                let content = v.get("content").and_then(|c| c.as_str()).unwrap_or("");
                // A guest that answers more than was asked for gets cut to size.
                wire::decode_concatenated_b64(content)
                    .map(|mut page| {
                        page.truncate(count.min(usize::MAX as u64) as usize);
                        Some(page)
                    })
                    .map_err(|e| {
                        Error::Api(pve_client::Error::Decode {
                            method: "GET",
                            path: self.path_of("file-read"),
                            message: format!("content is not base64: {e}"),
                        })
                    })
            }
            Err(e)
                if e.status() == Some(400)
                    && e.field_errors().is_some_and(|f| {
                        ["offset", "count", "decode"]
                            .iter()
                            .any(|k| f.contains_key(*k))
                    }) =>
            {
                // PVE before 9.2: no paging parameters.
                self.inner.paged_reads.store(2, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(error::classify_file(e, path, self.inner.vmid)),
        }
    }

    /// A write as `user`: the contents are the stdin of `cat` run as that user, so the kernel
    /// checks that user's permissions; size checked afterwards.
    async fn write_file_as(
        &self,
        user: &str,
        path: &str,
        abs: &str,
        contents: &[u8],
    ) -> Result<()> {
        let script = "if [ -d \"$1\" ]; then echo \"$1: Is a directory\" >&2; exit 1; fi\n\
                      mkdir -p -- \"$2\" 2>/dev/null\n\
                      cat > \"$1\" && wc -c < \"$1\"";
        let out = self
            .exec(
                &ExecRequest::new([
                    b"sh".as_slice(),
                    b"-c",
                    script.as_bytes(),
                    b"sh",
                    abs.as_bytes(),
                    parent(abs).as_bytes(),
                ])
                .user(user)
                .stdin(contents.to_vec()),
            )
            .await?;
        if out.status != 0 {
            return Err(classify_stderr(&out.stderr, path, "write"));
        }
        let size: Option<usize> = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
        if size != Some(contents.len()) {
            return Err(Error::Corrupted {
                path: path.into(),
                detail: format!("sent {} bytes, guest has {size:?}", contents.len()),
            });
        }
        Ok(())
    }

    /// A read as `user`, paged through exec output (under QGA's 16 MiB capture).
    async fn read_file_as(&self, user: &str, path: &str, abs: &str, limit: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let have = out.len() as u64;
            let want = EXEC_PAGE.min(limit.saturating_sub(have).saturating_add(1));
            // Checks first so the error names the real cause, as open(2) would.
            let script = "if [ ! -e \"$1\" ]; then echo \"$1: No such file or directory\" >&2; exit 1; fi\n\
                          if [ -d \"$1\" ]; then echo \"$1: Is a directory\" >&2; exit 1; fi\n\
                          tail -c +\"$2\" -- \"$1\" | head -c \"$3\"";
            let from = (have + 1).to_string();
            let count = want.to_string();
            let page = self
                .exec(
                    &ExecRequest::new([
                        b"sh".as_slice(),
                        b"-c",
                        script.as_bytes(),
                        b"sh",
                        abs.as_bytes(),
                        from.as_bytes(),
                        count.as_bytes(),
                    ])
                    .user(user),
                )
                .await?;
            if page.status != 0 || !page.stderr.is_empty() {
                return Err(classify_stderr(&page.stderr, path, "read"));
            }
            let n = page.stdout.len() as u64;
            out.extend_from_slice(&page.stdout);
            if out.len() as u64 > limit {
                return Err(Error::OutputLimit {
                    path: path.into(),
                    limit,
                });
            }
            if n < want {
                return Ok(out);
            }
        }
    }

    /// Old PVE: one plain `file-read` (16 MiB), the rest paged through exec output.
    async fn read_file_legacy(&self, path: &str, abs: &str, limit: u64) -> Result<Vec<u8>> {
        let v = self
            .inner
            .client
            .get(&self.path_of("file-read"), &Params::new().with("file", abs))
            .await
            .map_err(|e| error::classify_file(e, path, self.inner.vmid))?;
        let mut out = wire::latin1_bytes(v.get("content").and_then(|c| c.as_str()).unwrap_or(""));
        let truncated = matches!(v.get("truncated"), Some(t) if t.as_i64() == Some(1) || t.as_bool() == Some(true) || t.as_str() == Some("1"));
        let too_big = |len: usize| (len as u64) > limit;
        if too_big(out.len()) {
            return Err(Error::OutputLimit {
                path: path.into(),
                limit,
            });
        }
        if !truncated {
            return Ok(out);
        }
        let mut s = Script::new();
        let f = s.word(abs.as_bytes());
        let pre = s.take_prelude();
        loop {
            let have = out.len() as u64;
            let want = EXEC_PAGE.min(limit.saturating_sub(have).saturating_add(1));
            let (status, page, stderr) = self
                .run_script(&format!(
                    "{pre}tail -c +{} -- {f} | head -c {want}",
                    have + 1
                ))
                .await?;
            if status != 0 {
                return Err(classify_stderr(&stderr, path, "read"));
            }
            let n = page.len() as u64;
            out.extend_from_slice(&page);
            if too_big(out.len()) {
                return Err(Error::OutputLimit {
                    path: path.into(),
                    limit,
                });
            }
            if n < want {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parent;

    #[test]
    fn parents() {
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b/"), "/a");
    }
}
