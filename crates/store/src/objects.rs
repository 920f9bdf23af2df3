//! Sealed object storage for generated outputs: the `object_store` crate over a local directory (the
//! default, `<data_dir>/objects`) or any S3-compatible endpoint. Every object is sealed with the
//! streaming envelope (`skygate_crypto::stream`) before a byte leaves the process, chunk by chunk, so a
//! large output never sits whole in memory, and is opened chunk by chunk on the way out.
//!
//! Objects are bound (AAD) to their key and owner like database values, can be tied to a shred key, and
//! take part in KEK rotation: [`Objects::versions`] counts them per KEK version and
//! [`Objects::rewrap_all`] rewrites only the header of objects under older versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use skygate_crypto::stream::{StreamHeader, StreamOpener};
use skygate_crypto::{Aad, Cipher, ShredId};

use crate::{Result, StoreError};

/// Multipart uploads need parts of at least 5 MiB (S3's rule); smaller objects go in one PUT.
const PART: usize = 5 * 1024 * 1024;
/// The suffix of a rewrap's temporary copy.
const REWRAP_SUFFIX: &str = ".rewrap";

/// Where objects are kept, and the cipher that seals them.
#[derive(Clone)]
pub struct Objects {
    inner: Arc<dyn ObjectStore>,
    cipher: Cipher,
    kind: &'static str,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// S3 settings (credentials come from the `AWS_*` environment variables).
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `s3://bucket[/prefix]`.
    pub url: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub allow_http: bool,
    /// Explicit access key id and secret; `None` reads the `AWS_*` environment variables.
    pub credentials: Option<(String, skygate_core::SecretString)>,
}

fn obj_err(what: &str, e: object_store::Error) -> StoreError {
    StoreError::Objects(format!("{what}: {e}"))
}

impl Objects {
    /// A local directory (created 0700 if missing).
    pub fn local(dir: &std::path::Path, cipher: Cipher) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| StoreError::Config(format!("cannot use {} for objects: {e}", dir.display())))?;
        Ok(Objects {
            inner: Arc::new(fs),
            cipher,
            kind: "file",
        })
    }

    /// An S3-compatible bucket.
    pub fn s3(s: &S3Settings, cipher: Cipher) -> Result<Self> {
        let rest = s
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| StoreError::Config("outputs.store must start with s3://".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&s.region)
            .with_allow_http(s.allow_http);
        if let Some(e) = &s.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some((id, secret)) = &s.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret.expose());
        }
        let s3 = b
            .build()
            .map_err(|e| StoreError::Config(format!("cannot configure S3 bucket {bucket}: {e}")))?;
        let inner: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                s3,
                prefix.trim_matches('/'),
            ))
        };
        Ok(Objects {
            inner,
            cipher,
            kind: "s3",
        })
    }

    /// Objects in memory, for tests.
    pub fn in_memory(cipher: Cipher) -> Self {
        Objects {
            inner: Arc::new(object_store::memory::InMemory::new()),
            cipher,
            kind: "memory",
        }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    fn path(key: &str) -> Result<ObjPath> {
        let ok = !key.is_empty()
            && key.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
        if !ok {
            return Err(StoreError::Objects(format!("invalid object key {key:?}")));
        }
        Ok(ObjPath::from(key))
    }

    /// Seals and stores the byte stream `body` under `key`, bound to `aad` and shred key `shred` (0 =
    /// none). Returns the plaintext length. Nothing is visible under `key` until the upload completes.
    pub async fn put_stream<S>(&self, key: &str, aad: &Aad, shred: ShredId, body: S) -> Result<u64>
    where
        S: futures_util::Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let path = Self::path(key)?;
        let (header, mut sealer) = self.cipher.stream_sealer(aad, shred)?;
        let chunk = sealer.chunk_size();
        let mut out = Upload::new(self.inner.clone(), path, header);
        let mut pending = BytesMut::new();
        let mut total = 0u64;
        let mut body = std::pin::pin!(body);
        while let Some(next) = body.next().await {
            let next = next.map_err(|e| StoreError::Objects(format!("reading the object to store: {e}")))?;
            total += next.len() as u64;
            pending.extend_from_slice(&next);
            // Keep the last (possibly full) chunk back: only the final chunk carries the last flag.
            while pending.len() > chunk {
                let piece = pending.split_to(chunk);
                out.write(sealer.seal_chunk(&piece, false)?).await?;
            }
        }
        out.write(sealer.seal_chunk(&pending, true)?).await?;
        out.finish().await?;
        Ok(total)
    }

    /// [`Objects::put_stream`] for bytes in memory.
    pub async fn put(&self, key: &str, aad: &Aad, shred: ShredId, data: Bytes) -> Result<u64> {
        self.put_stream(key, aad, shred, futures_util::stream::iter([Ok(data)]))
            .await
    }

    /// Opens the object under `key` as a stream of plaintext chunks. Each chunk is authenticated
    /// before it is yielded; truncation, reordering or tampering ends the stream with an error.
    pub async fn get_stream(&self, key: &str, aad: &Aad) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = Self::path(key)?;
        let got = self.inner.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound(format!("object {key}")),
            e => obj_err("reading an object", e),
        })?;
        let raw = got.into_stream().map_err(|e| obj_err("reading an object", e));
        Ok(open_stream(self.cipher.clone(), aad.clone(), raw.boxed()))
    }

    /// The whole plaintext of a (small) object.
    pub async fn get(&self, key: &str, aad: &Aad) -> Result<Vec<u8>> {
        let mut s = self.get_stream(key, aad).await?;
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    /// Deletes an object. Deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.inner.delete(&Self::path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(obj_err("deleting an object", e)),
        }
    }

    /// Deletes every object whose key starts with `prefix/` (a directory-like prefix, e.g. one
    /// prediction's outputs). Returns how many it deleted. Idempotent.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let dir = Self::path(prefix.trim_end_matches('/'))?;
        let metas: Vec<_> = self
            .inner
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| obj_err("listing objects", e))?;
        let mut n = 0;
        for m in metas {
            match self.inner.delete(&m.location).await {
                Ok(()) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(obj_err("deleting an object", e)),
            }
        }
        Ok(n)
    }

    /// Every stored path, rewrap's temporary copies included.
    async fn all_paths(&self) -> Result<Vec<String>> {
        let metas: Vec<_> = self
            .inner
            .list(None)
            .try_collect()
            .await
            .map_err(|e| obj_err("listing objects", e))?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }

    /// Every object key (rewrap's temporary copies excluded).
    pub async fn keys(&self) -> Result<Vec<String>> {
        let mut keys = self.all_paths().await?;
        keys.retain(|k| !k.ends_with(REWRAP_SUFFIX));
        Ok(keys)
    }

    async fn header(&self, key: &str) -> Result<Vec<u8>> {
        let path = Self::path(key)?;
        let head = self
            .inner
            .head(&path)
            .await
            .map_err(|e| obj_err("reading an object", e))?;
        let want = (StreamHeader::MAX_LEN as u64).min(head.size);
        let bytes = self
            .inner
            .get_range(&path, 0..want)
            .await
            .map_err(|e| obj_err("reading an object header", e))?;
        Ok(bytes.to_vec())
    }

    /// How many objects each KEK version wraps.
    pub async fn versions(&self) -> Result<BTreeMap<u32, u64>> {
        let mut out = BTreeMap::new();
        for key in self.keys().await? {
            let h = self.header(&key).await?;
            let parsed = StreamHeader::parse(&h).map_err(|source| StoreError::Sealed {
                place: format!("object {key}"),
                source,
            })?;
            *out.entry(parsed.kek_version()).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// Moves every object under an older KEK version to the current one by rewriting its header (the
    /// sealed chunks are copied unchanged). The new copy is written beside the object and then renamed
    /// over it, so a crash leaves either the old or the new object, both readable.
    pub async fn rewrap_all(&self) -> Result<(u64, u64)> {
        let (mut moved, mut failed) = (0, 0);
        // Leftovers of an interrupted run.
        for tmp in self
            .all_paths()
            .await?
            .iter()
            .filter(|k| k.ends_with(REWRAP_SUFFIX))
        {
            let _ = self.inner.delete(&ObjPath::from(tmp.as_str())).await;
        }
        for key in self.keys().await? {
            match self.rewrap_one(&key).await {
                Ok(true) => moved += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(object = %key, error = %e, "cannot rewrap an object");
                    failed += 1;
                }
            }
        }
        Ok((moved, failed))
    }

    async fn rewrap_one(&self, key: &str) -> Result<bool> {
        let path = Self::path(key)?;
        let head = self.header(key).await?;
        let parsed = StreamHeader::parse(&head).map_err(|source| StoreError::Sealed {
            place: format!("object {key}"),
            source,
        })?;
        let Some(new_header) = self.cipher.rewrap_stream_header(&head[..parsed.len()])? else {
            return Ok(false);
        };
        let tmp = ObjPath::from(format!("{key}{REWRAP_SUFFIX}"));
        let got = self
            .inner
            .get(&path)
            .await
            .map_err(|e| obj_err("reading an object", e))?;
        let mut body = got.into_stream();
        let mut out = Upload::new(self.inner.clone(), tmp.clone(), new_header);
        let mut skip = parsed.len();
        while let Some(b) = body.next().await {
            let mut b = b.map_err(|e| obj_err("reading an object", e))?;
            if skip > 0 {
                let n = skip.min(b.len());
                let _ = b.split_to(n);
                skip -= n;
            }
            if !b.is_empty() {
                out.write(b.to_vec()).await?;
            }
        }
        out.finish().await?;
        self.inner
            .rename(&tmp, &path)
            .await
            .map_err(|e| obj_err("replacing an object", e))?;
        Ok(true)
    }
}

/// An upload that becomes a single PUT for small objects and a multipart upload for large ones.
struct Upload {
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    buf: Vec<u8>,
    multipart: Option<WriteMultipart>,
}

impl Upload {
    fn new(store: Arc<dyn ObjectStore>, path: ObjPath, first: Vec<u8>) -> Self {
        Upload {
            store,
            path,
            buf: first,
            multipart: None,
        }
    }

    async fn write(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.buf.extend_from_slice(&bytes);
        if self.buf.len() >= PART {
            if self.multipart.is_none() {
                let up = self
                    .store
                    .put_multipart(&self.path)
                    .await
                    .map_err(|e| obj_err("starting an upload", e))?;
                self.multipart = Some(WriteMultipart::new_with_chunk_size(up, PART));
            }
            if let Some(m) = self.multipart.as_mut() {
                // Back pressure: at most two parts in flight, so memory stays bounded.
                m.wait_for_capacity(2)
                    .await
                    .map_err(|e| obj_err("uploading an object", e))?;
                m.write(&std::mem::take(&mut self.buf));
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<()> {
        match self.multipart.take() {
            None => {
                self.store
                    .put(&self.path, PutPayload::from(std::mem::take(&mut self.buf)))
                    .await
                    .map_err(|e| obj_err("storing an object", e))?;
            }
            Some(mut m) => {
                m.write(&self.buf);
                m.finish().await.map_err(|e| obj_err("completing an upload", e))?;
            }
        }
        Ok(())
    }
}

/// Reassembles sealed chunks from arbitrary network pieces and opens them one by one.
fn open_stream(
    cipher: Cipher,
    aad: Aad,
    raw: BoxStream<'static, Result<Bytes>>,
) -> BoxStream<'static, Result<Bytes>> {
    struct State {
        raw: BoxStream<'static, Result<Bytes>>,
        buf: BytesMut,
        opener: Option<StreamOpener>,
        cipher: Cipher,
        aad: Aad,
        done: bool,
    }
    let st = State {
        raw,
        buf: BytesMut::new(),
        opener: None,
        cipher,
        aad,
        done: false,
    };
    futures_util::stream::try_unfold(st, |mut st| async move {
        loop {
            if st.done {
                return Ok(None);
            }
            if st.opener.is_none() {
                // `None`: the header is not complete yet; an invalid header fails at once.
                let parsed = StreamHeader::parse_prefix(&st.buf).map_err(|source| StoreError::Sealed {
                    place: "object".into(),
                    source,
                })?;
                if let Some(h) = parsed {
                    let header = st.buf.split_to(h.len());
                    st.opener = Some(st.cipher.stream_opener(&header, &st.aad)?);
                    continue;
                }
            } else if let Some(op) = st.opener.as_mut() {
                let sealed = op.sealed_chunk_len();
                // A full sealed chunk with more bytes after it is not the last one.
                if st.buf.len() > sealed {
                    let c = st.buf.split_to(sealed);
                    return Ok(Some((Bytes::from(op.open_chunk(&c, false)?), st)));
                }
            }
            match st.raw.next().await {
                Some(b) => st.buf.extend_from_slice(&b?),
                None => {
                    st.done = true;
                    let Some(op) = st.opener.as_mut() else {
                        return Err(StoreError::Sealed {
                            place: "object".into(),
                            source: skygate_crypto::CryptoError::Format("truncated stream header"),
                        });
                    };
                    let last = std::mem::take(&mut st.buf);
                    return Ok(Some((Bytes::from(op.open_chunk(&last, true)?), st)));
                }
            }
        }
    })
    .boxed()
}
