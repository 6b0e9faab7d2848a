//! Bundles from S3-compatible object storage: the store layout, `bundle publish|rollback
//! --store`, and the poller that keeps `bundles.cache_dir` in step with the store's pointers.
//! The poller only writes files into the cache directory (temp file + rename) and asks the
//! reloader for a scan: the directory reload path is the one loading path.
//!
//! Layout under `s3://BUCKET/PREFIX`: immutable objects `PREFIX/NAME/GENERATION-SHA256.json`
//! (SHA256 = lowercase hex of the object's bytes) and one pointer per bundle,
//! `PREFIX/NAME/current` = `{"generation": N, "key": "PREFIX/NAME/N-SHA256.json", "sha256": "…"}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientConfigKey, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use crate::bundle::checksum::hex;
use crate::bundle::store::write_atomically;
use crate::bundle::Bundle;
use crate::config::BundlesConfig;
use crate::state::Shared;

/// Name of the pointer object inside each bundle's folder.
pub const POINTER: &str = "current";

/// `s3://BUCKET/PREFIX`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl StoreUrl {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{url}` must look like s3://BUCKET/PREFIX"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("`{url}` names no bucket"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
            return Err(format!(
                "`{url}`: the prefix must not contain `.`, `..` or `//`"
            ));
        }
        Ok(StoreUrl {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// `PREFIX/rest` (or `rest` at the bucket's root).
    fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// Key of bundle `name`'s pointer.
    pub fn pointer_key(&self, name: &str) -> String {
        self.key(&format!("{name}/{POINTER}"))
    }

    /// Key of the immutable object holding `name` at `generation` with bytes hashing to `sha256`.
    pub fn object_key(&self, name: &str, generation: u64, sha256: &str) -> String {
        self.key(&format!("{name}/{generation}-{sha256}.json"))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// The small object `PREFIX/NAME/current` that says which object is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// Generation of the live object.
    pub generation: u64,
    /// Full key of the live object.
    pub key: String,
    /// Lowercase hex SHA-256 of the live object's bytes.
    pub sha256: String,
}

impl Pointer {
    fn to_bytes(&self) -> Bytes {
        // A struct of plain fields always serialises.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// Whether `name` may be a bundle name in a key and a file name in the cache directory.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Lowercase hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Opens the bucket with `object_store`'s standard `AWS_*` variables (endpoint, region,
/// plain-HTTP permission, credentials, web identity). `poller` bounds retries and timeouts so a
/// down store costs one short attempt per poll (the next poll is the retry).
pub fn open(url: &StoreUrl, poller: bool) -> Result<Arc<dyn ObjectStore>, String> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&url.bucket);
    for (key, value) in [
        (ClientConfigKey::ConnectTimeout, "2 seconds"),
        (ClientConfigKey::Timeout, "20 seconds"),
    ] {
        let key = AmazonS3ConfigKey::Client(key);
        if builder.get_config_value(&key).is_none() {
            builder = builder.with_config(key, value);
        }
    }
    let retry = if poller {
        RetryConfig {
            max_retries: 0,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        }
    } else {
        RetryConfig {
            retry_timeout: Duration::from_secs(30),
            ..RetryConfig::default()
        }
    };
    let store = builder
        .with_retry(retry)
        .build()
        .map_err(|e| format!("cannot open {url}: {e}"))?;
    Ok(Arc::new(store))
}

/// What a publish or rollback installed.
#[derive(Debug, Clone)]
pub struct PointerWrite {
    /// Bundle name.
    pub bundle: String,
    /// The pointer now live.
    pub pointer: Pointer,
    /// Generation the pointer named before (none for a new bundle).
    pub previous: Option<u64>,
}

/// The live pointer of `name` with its ETag, or `None` when there is none.
pub async fn live_pointer(
    store: &dyn ObjectStore,
    url: &StoreUrl,
    name: &str,
) -> Result<Option<(Pointer, UpdateVersion)>, String> {
    let key = url.pointer_key(name);
    let result = match store
        .get_opts(&ObjectPath::from(key.as_str()), GetOptions::default())
        .await
    {
        Ok(result) => result,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(format!("cannot read {url} pointer {key}: {e}")),
    };
    let version = UpdateVersion {
        e_tag: result.meta.e_tag.clone(),
        version: result.meta.version.clone(),
    };
    let bytes = result
        .bytes()
        .await
        .map_err(|e| format!("cannot read {url} pointer {key}: {e}"))?;
    let pointer: Pointer = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{url} pointer {key} is not a pointer: {e}"))?;
    Ok(Some((pointer, version)))
}

/// Swaps the pointer of `name` to `pointer` only if it is still at `expected` (or still absent
/// when `expected` is `None`), then reads it back: a store that ignored the precondition and
/// let another writer in after us is caught here rather than trusted.
pub async fn swap_pointer(
    store: &dyn ObjectStore,
    url: &StoreUrl,
    name: &str,
    pointer: &Pointer,
    expected: Option<UpdateVersion>,
) -> Result<(), String> {
    let key = url.pointer_key(name);
    let path = ObjectPath::from(key.as_str());
    let mode = match expected {
        Some(version) => PutMode::Update(version),
        None => PutMode::Create,
    };
    let body = pointer.to_bytes();
    let options = PutOptions {
        mode,
        ..PutOptions::default()
    };
    match store
        .put_opts(&path, PutPayload::from(body.clone()), options)
        .await
    {
        Ok(_) => {}
        Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
            return Err(format!(
                "the pointer {key} in {url} changed while this command ran (another publish or rollback won); nothing was changed: read the live generation and retry"
            ))
        }
        Err(e @ object_store::Error::NotImplemented { .. }) => {
            return Err(format!(
                "cannot swap the pointer {key} in {url} safely: {e} (publishing needs conditional PUT; unset AWS_CONDITIONAL_PUT=disabled or use a store that supports If-Match)"
            ))
        }
        Err(e) => return Err(format!("cannot write pointer {key} in {url}: {e}")),
    }
    let back = store
        .get(&path)
        .await
        .map_err(|e| format!("pointer {key} written but cannot be read back: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("pointer {key} written but cannot be read back: {e}"))?;
    if back != body {
        return Err(format!(
            "the pointer {key} in {url} was overwritten by another writer right after this one: it now says {}",
            String::from_utf8_lossy(&back)
        ));
    }
    Ok(())
}

/// `trimmer bundle publish FILE --store URL`: writes the immutable object, then swaps the
/// pointer conditionally. Refuses a generation not newer than the live one unless `force`.
/// `bytes` and `bundle` come from the pipeline's `publish::publishable` (`file` names them
/// in messages).
pub async fn publish(
    file: &Path,
    bytes: Vec<u8>,
    bundle: Bundle,
    url: &StoreUrl,
    force: bool,
) -> Result<PointerWrite, String> {
    if bundle.sha256.is_none() {
        return Err(format!(
            "{}: has no `sha256`; a store is shared by a fleet, so only sealed bundles (`trimmer bundle build`) are published there",
            file.display()
        ));
    }
    let name = bundle.bundle.clone();
    if !valid_name(&name) {
        return Err(format!(
            "bundle name `{name}` cannot be a key: use letters, digits, `-`, `_`, `.`"
        ));
    }
    let store = open(url, false)?;
    let live = live_pointer(store.as_ref(), url, &name).await?;
    if let Some((pointer, _)) = &live {
        if bundle.generation <= pointer.generation && !force {
            return Err(format!(
                "generation {} is not newer than the live generation {} of `{name}` in {url} (--force to publish anyway)",
                bundle.generation, pointer.generation
            ));
        }
    }
    let sha256 = sha256_hex(&bytes);
    let key = url.object_key(&name, bundle.generation, &sha256);
    let path = ObjectPath::from(key.as_str());
    let payload = PutPayload::from(Bytes::from(bytes));
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store.put_opts(&path, payload.clone(), create).await {
        // The key names the bytes' digest: an existing object is the same artefact.
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
        // Without conditional PUT, overwriting a content-addressed key rewrites the same bytes.
        Err(object_store::Error::NotImplemented { .. }) => {
            store
                .put(&path, payload)
                .await
                .map_err(|e| format!("cannot write {key} in {url}: {e}"))?;
        }
        Err(e) => return Err(format!("cannot write {key} in {url}: {e}")),
    }
    let pointer = Pointer {
        generation: bundle.generation,
        key,
        sha256,
    };
    let previous = live.as_ref().map(|(p, _)| p.generation);
    swap_pointer(
        store.as_ref(),
        url,
        &name,
        &pointer,
        live.map(|(_, version)| version),
    )
    .await?;
    Ok(PointerWrite {
        bundle: name,
        pointer,
        previous,
    })
}

/// `trimmer bundle rollback NAME --store URL`: points `name` at generation `to` (default: the
/// newest one older than the live one). One conditional pointer write; objects never change.
pub async fn rollback(name: &str, url: &StoreUrl, to: Option<u64>) -> Result<PointerWrite, String> {
    let store = open(url, false)?;
    let (live, version) = live_pointer(store.as_ref(), url, name)
        .await?
        .ok_or_else(|| format!("`{name}` has no pointer in {url}: nothing to roll back"))?;
    let folder = ObjectPath::from(url.key(name).as_str());
    let listing = store
        .list_with_delimiter(Some(&folder))
        .await
        .map_err(|e| format!("cannot list {url}/{name}: {e}"))?;
    // generation → (last modified in ms, key, sha256); the newest upload wins for a generation that
    // was published twice with --force.
    let mut history: BTreeMap<u64, (i64, String, String)> = BTreeMap::new();
    for object in listing.objects {
        let Some(file) = object.location.filename() else {
            continue;
        };
        let Some((generation, sha256)) = file
            .strip_suffix(".json")
            .and_then(|stem| stem.split_once('-'))
            .and_then(|(g, s)| Some((g.parse::<u64>().ok()?, s.to_owned())))
        else {
            continue;
        };
        let modified = object.last_modified.timestamp_millis();
        let entry = (modified, object.location.to_string(), sha256);
        match history.get(&generation) {
            Some(existing) if existing.0 >= entry.0 => {}
            _ => {
                history.insert(generation, entry);
            }
        }
    }
    let generation = match to {
        Some(g) => g,
        None => {
            *history
                .range(..live.generation)
                .next_back()
                .ok_or_else(|| {
                    format!(
                        "no generation of `{name}` older than the live {} in {url}",
                        live.generation
                    )
                })?
                .0
        }
    };
    let Some((_, key, sha256)) = history.get(&generation).cloned() else {
        return Err(format!(
            "generation {generation} of `{name}` is not in {url} (have {:?})",
            history.keys().collect::<Vec<_>>()
        ));
    };
    let bytes = store
        .get(&ObjectPath::from(key.as_str()))
        .await
        .map_err(|e| format!("cannot read {key}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("cannot read {key}: {e}"))?;
    verify_object(
        name,
        &bytes,
        &Pointer {
            generation,
            key: key.clone(),
            sha256: sha256.clone(),
        },
        url,
    )?;
    let pointer = Pointer {
        generation,
        key,
        sha256,
    };
    swap_pointer(store.as_ref(), url, name, &pointer, Some(version)).await?;
    Ok(PointerWrite {
        bundle: name.to_owned(),
        pointer,
        previous: Some(live.generation),
    })
}

/// Checks fetched object bytes against the pointer that named them and against the bundle's
/// own checksum: the store is never trusted to have returned what the pointer means.
pub fn verify_object(
    name: &str,
    bytes: &[u8],
    pointer: &Pointer,
    url: &StoreUrl,
) -> Result<Bundle, String> {
    let expected_key = url.object_key(name, pointer.generation, &pointer.sha256);
    if pointer.key != expected_key {
        return Err(format!(
            "pointer of `{name}` names {} but generation {} with that digest lives at {expected_key}",
            pointer.key, pointer.generation
        ));
    }
    let actual = sha256_hex(bytes);
    if actual != pointer.sha256 {
        return Err(format!(
            "{}: bytes hash to {actual}, the pointer says {}",
            pointer.key, pointer.sha256
        ));
    }
    let bundle = Bundle::parse(bytes, name).map_err(|e| format!("{}: {e}", pointer.key))?;
    if bundle.sha256.is_none() {
        return Err(format!("{}: not sealed (no `sha256`)", pointer.key));
    }
    if bundle.generation != pointer.generation {
        return Err(format!(
            "{}: generation {} but the pointer says {}",
            pointer.key, bundle.generation, pointer.generation
        ));
    }
    Ok(bundle)
}

impl BundlesConfig {
    /// The directory the reloader loads: `cache_dir` with a `source`, else `dir`.
    pub fn watched_dir(&self) -> Option<PathBuf> {
        if self.source.is_some() {
            self.cache_dir.clone()
        } else {
            self.dir.clone()
        }
    }

    /// Problems with the object-store keys, one line each.
    pub fn source_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.poll_interval_ms == 0 {
            problems.push("`bundles.poll_interval_ms` must be greater than 0".to_owned());
        }
        match &self.source {
            Some(source) => {
                if let Err(why) = StoreUrl::parse(source) {
                    problems.push(format!("`bundles.source`: {why}"));
                }
                if self.cache_dir.is_none() {
                    problems.push(
                        "`bundles.source` needs `bundles.cache_dir` (where fetched bundles are kept and loaded from)"
                            .to_owned(),
                    );
                }
                if self.dir.is_some() {
                    problems.push(
                        "`bundles.dir` and `bundles.source` are exclusive: with a source the sidecar loads `bundles.cache_dir`".to_owned(),
                    );
                }
            }
            None => {
                if self.cache_dir.is_some() {
                    problems.push("`bundles.cache_dir` is set without `bundles.source`".to_owned());
                }
            }
        }
        problems
    }
}

/// What the poller knows about one bundle name.
#[derive(Debug, Default)]
struct Known {
    /// ETag of the pointer last processed, sent as `If-None-Match`.
    etag: Option<String>,
    /// SHA-256 of the bytes installed in the cache directory.
    installed: Option<String>,
    /// The pointer's object was rejected; fetched again at the next listing, not every poll.
    rejected: bool,
}

/// How one pointer poll ended.
enum PollResult {
    /// 304 (or 404 for a name with nothing cached): nothing changed.
    NotModified,
    /// The pointer changed (or was seen for the first time) and the cache now matches it;
    /// `true` when a file was written or removed.
    Updated(bool),
    /// The store failed or the pointer or object was refused.
    Error,
}

/// Keeps `bundles.cache_dir` in step with the store's pointers. One task; never on the request
/// path.
pub struct SourcePoller {
    shared: Arc<Shared>,
    url: StoreUrl,
    cache_dir: PathBuf,
    /// Opened lazily and again after a failure to build the client.
    store: Option<Arc<dyn ObjectStore>>,
    /// Bundle name → what the poller knows.
    known: BTreeMap<String, Known>,
    /// xorshift state for the jitter.
    rng: u64,
    /// The last round could not reach the store (logged once per outage, not per poll).
    down: bool,
    /// The last store error this round, for that log line.
    last_error: Option<String>,
}

/// Poll rounds between two listings of the prefix (new bundle names appear this often).
const LIST_EVERY: u32 = 10;

impl SourcePoller {
    /// Creates the cache directory and spawns the poller when a source is configured.
    pub fn spawn(
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let bundles = &shared.config.bundles;
        let url = StoreUrl::parse(bundles.source.as_deref()?).ok()?;
        let cache_dir = bundles.cache_dir.clone()?;
        if let Err(e) = std::fs::create_dir_all(&cache_dir) {
            tracing::error!(dir = %cache_dir.display(), error = %e, "cannot create the bundle cache directory");
        }
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            ^ (u64::from(std::process::id()) << 32);
        let poller = SourcePoller {
            shared,
            url,
            cache_dir,
            store: None,
            known: BTreeMap::new(),
            rng: seed | 1,
            down: false,
            last_error: None,
        };
        Some(tokio::spawn(poller.run(stop)))
    }

    /// Sets `…_last_success_timestamp_seconds{source}` to now.
    fn stamp_last_success(&self, source: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.shared
            .metrics
            .source
            .last_success
            .with_label_values(&[source])
            .set(now);
    }

    /// Polls until `stop` fires: a round at once (the local cache is already being served), then
    /// one every `poll_interval_ms` ± 10 %.
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let interval = crate::config::ms(self.shared.config.bundles.poll_interval_ms);
        let source = self.url.to_string();
        // Until the first success the gauge holds the start time, so a sidecar that never
        // reaches its store goes stale like one that lost it.
        self.stamp_last_success(&source);
        self.known_from_cache().await;
        tracing::info!(%source, cache_dir = %self.cache_dir.display(), "polling the bundle store");
        let mut round: u32 = 0;
        loop {
            self.round(round.is_multiple_of(LIST_EVERY), &source).await;
            round = round.wrapping_add(1);
            let pause = self.jittered(interval);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
        }
    }

    /// `interval` scaled by a factor in [0.9, 1.1).
    fn jittered(&mut self, interval: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        interval.mul_f64(0.9 + 0.2 * unit)
    }

    /// Names already in the cache directory (so a pointer gone from the store removes them)
    /// with the digests of their bytes.
    async fn known_from_cache(&mut self) {
        let dir = self.cache_dir.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return found;
            };
            for entry in entries.flatten() {
                let file = entry.file_name();
                let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                    continue;
                };
                if valid_name(name) {
                    if let Ok(bytes) = std::fs::read(entry.path()) {
                        found.push((name.to_owned(), sha256_hex(&bytes)));
                    }
                }
            }
            found
        })
        .await
        .unwrap_or_default();
        for (name, digest) in found {
            self.known.entry(name).or_default().installed = Some(digest);
        }
    }

    async fn round(&mut self, list: bool, source: &str) {
        let metrics = &self.shared.metrics.source;
        let store = match &self.store {
            Some(store) => store.clone(),
            None => match open(&self.url, true) {
                Ok(store) => {
                    self.store = Some(store.clone());
                    store
                }
                Err(why) => {
                    metrics.polls.with_label_values(&["error"]).inc();
                    tracing::warn!(%why, "bundle store unusable; serving the local cache");
                    return;
                }
            },
        };
        let mut reached = true;
        let contacted = list || !self.known.is_empty();
        if list {
            match self.list_names(store.as_ref()).await {
                Ok(names) => {
                    metrics.lists.with_label_values(&["ok"]).inc();
                    for name in names {
                        self.known.entry(name).or_default();
                    }
                    for known in self.known.values_mut().filter(|k| k.rejected) {
                        known.etag = None;
                    }
                }
                Err(why) => {
                    reached = false;
                    metrics.lists.with_label_values(&["error"]).inc();
                    tracing::debug!(%why, "cannot list the bundle store");
                    self.last_error = Some(why);
                }
            }
        }
        let mut changed = false;
        let names: Vec<String> = self.known.keys().cloned().collect();
        for name in names {
            let result = self.poll_one(store.as_ref(), &name).await;
            let label = match result {
                PollResult::NotModified => "not_modified",
                PollResult::Updated(wrote) => {
                    changed |= wrote;
                    "updated"
                }
                PollResult::Error => {
                    reached &= self.known.get(&name).is_some_and(|k| k.rejected);
                    "error"
                }
            };
            self.shared
                .metrics
                .source
                .polls
                .with_label_values(&[label])
                .inc();
        }
        if !reached && !self.down {
            let why = self.last_error.take().unwrap_or_default();
            tracing::warn!(%why, "bundle store unreachable; serving the local cache");
        } else if reached && self.down {
            tracing::info!("bundle store reachable again");
        }
        self.down = !reached;
        if reached && contacted {
            self.stamp_last_success(source);
        }
        if changed {
            self.reload().await;
        }
    }

    /// Bundle names under the prefix (one folder per bundle).
    async fn list_names(&self, store: &dyn ObjectStore) -> Result<Vec<String>, String> {
        let prefix =
            (!self.url.prefix.is_empty()).then(|| ObjectPath::from(self.url.prefix.as_str()));
        let listing = store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .filter(|n| valid_name(n))
            .map(str::to_owned)
            .collect())
    }

    /// One conditional GET of `name`'s pointer, and whatever it calls for.
    async fn poll_one(&mut self, store: &dyn ObjectStore, name: &str) -> PollResult {
        let metrics = &self.shared.metrics.source;
        let key = self.url.pointer_key(name);
        let options = GetOptions {
            if_none_match: self.known.get(name).and_then(|k| k.etag.clone()),
            ..GetOptions::default()
        };
        let result = match store
            .get_opts(&ObjectPath::from(key.as_str()), options)
            .await
        {
            Ok(result) => result,
            Err(object_store::Error::NotModified { .. }) => return PollResult::NotModified,
            Err(object_store::Error::NotFound { .. }) => {
                // The pointer is gone: so is the bundle.
                self.known.remove(name);
                let file = self.cache_dir.join(format!("{name}.json"));
                let removed = match std::fs::remove_file(&file) {
                    Ok(()) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    Err(e) => {
                        tracing::warn!(bundle = %name, error = %e, "cannot remove a bundle gone from the store");
                        return PollResult::Error;
                    }
                };
                if !removed {
                    // A folder without a pointer (listed again every LIST_EVERY rounds).
                    return PollResult::NotModified;
                }
                tracing::info!(bundle = %name, "pointer gone from the store; bundle removed from the cache");
                return PollResult::Updated(true);
            }
            Err(e) => {
                tracing::debug!(bundle = %name, error = %e, "bundle store poll failed");
                self.last_error = Some(e.to_string());
                return PollResult::Error;
            }
        };
        let etag = result.meta.e_tag.clone();
        let bytes = match result.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(bundle = %name, error = %e, "bundle store poll failed");
                self.last_error = Some(e.to_string());
                return PollResult::Error;
            }
        };
        metrics.bytes.inc_by(bytes.len() as u64);
        let fetched = match serde_json::from_slice::<Pointer>(&bytes) {
            Ok(pointer) => {
                let installed = self.known.get(name).and_then(|k| k.installed.as_deref());
                if installed == Some(pointer.sha256.as_str()) {
                    Ok(None)
                } else {
                    self.fetch(store, name, &pointer).await.map(Some)
                }
            }
            Err(e) => Err(format!("{key} is not a pointer: {e}")),
        };
        let known = self.known.entry(name.to_owned()).or_default();
        known.etag = etag;
        match fetched {
            Ok(None) => {
                known.rejected = false;
                PollResult::Updated(false)
            }
            Ok(Some((bytes, digest))) => {
                let file = self.cache_dir.join(format!("{name}.json"));
                let install = tokio::task::spawn_blocking(move || write_atomically(&file, &bytes))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                match install {
                    Ok(()) => {
                        known.installed = Some(digest);
                        known.rejected = false;
                        PollResult::Updated(true)
                    }
                    Err(why) => {
                        // Not a verdict on the object: try again next poll.
                        known.etag = None;
                        tracing::warn!(bundle = %name, %why, "cannot install a fetched bundle");
                        PollResult::Error
                    }
                }
            }
            Err(why) if why.starts_with("fetch:") => {
                known.etag = None;
                tracing::debug!(bundle = %name, %why, "bundle object fetch failed");
                self.last_error = Some(why);
                PollResult::Error
            }
            Err(why) => {
                known.rejected = true;
                metrics.rejected.inc();
                tracing::warn!(bundle = %name, %why, "bundle from the store rejected; last-known-good kept");
                PollResult::Error
            }
        }
    }

    /// Fetches and verifies the object `pointer` names; `fetch:`-prefixed errors are the
    /// store's (retried next poll), others are verdicts on the content.
    async fn fetch(
        &self,
        store: &dyn ObjectStore,
        name: &str,
        pointer: &Pointer,
    ) -> Result<(Bytes, String), String> {
        let metrics = &self.shared.metrics.source;
        let expected = self
            .url
            .object_key(name, pointer.generation, &pointer.sha256);
        if pointer.key != expected {
            return Err(format!(
                "pointer names {} but that generation and digest live at {expected}",
                pointer.key
            ));
        }
        let bytes = store
            .get(&ObjectPath::from(pointer.key.as_str()))
            .await
            .map_err(|e| format!("fetch: {}: {e}", pointer.key))?
            .bytes()
            .await
            .map_err(|e| format!("fetch: {}: {e}", pointer.key))?;
        metrics.objects.inc();
        metrics.bytes.inc_by(bytes.len() as u64);
        verify_object(name, &bytes, pointer, &self.url)?;
        let digest = pointer.sha256.clone();
        Ok((bytes, digest))
    }

    /// Asks the reloader for a scan of the cache directory and waits for it (off the request
    /// path, like `POST /reload`).
    async fn reload(&self) {
        let (reply, answer) = oneshot::channel();
        if self.shared.reload.send(reply).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(30), answer).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_keys() {
        let url = StoreUrl::parse("s3://bundles/fleet/prod/").unwrap();
        assert_eq!(url.bucket, "bundles");
        assert_eq!(url.prefix, "fleet/prod");
        assert_eq!(url.pointer_key("home"), "fleet/prod/home/current");
        assert_eq!(url.object_key("home", 3, "ab"), "fleet/prod/home/3-ab.json");
        let root = StoreUrl::parse("s3://bundles").unwrap();
        assert_eq!(root.pointer_key("home"), "home/current");
        assert!(StoreUrl::parse("https://x/y").is_err());
        assert!(StoreUrl::parse("s3:///y").is_err());
        assert!(StoreUrl::parse("s3://b/a/../c").is_err());
    }

    #[test]
    fn fetched_bytes_must_match_the_pointer_and_the_bundle() {
        let url = StoreUrl::parse("s3://b/p").unwrap();
        let mut bundle = Bundle::parse_document(
            br#"{"format": "trimmer.bundle/v1", "bundle": "home", "generation": 3, "models": [{"model": "m", "version": "1", "features": ["a"]}]}"#,
        )
        .unwrap();
        bundle.seal();
        let bytes = serde_json::to_vec(&bundle).unwrap();
        let sha256 = sha256_hex(&bytes);
        let pointer = Pointer {
            generation: 3,
            key: url.object_key("home", 3, &sha256),
            sha256: sha256.clone(),
        };
        assert!(verify_object("home", &bytes, &pointer, &url).is_ok());
        let mut tampered = bytes.clone();
        tampered.push(b' ');
        assert!(verify_object("home", &tampered, &pointer, &url)
            .is_err_and(|e| e.contains("the pointer says")));
        let elsewhere = Pointer {
            key: "other/home/3-x.json".into(),
            ..pointer.clone()
        };
        assert!(verify_object("home", &bytes, &elsewhere, &url).is_err());
        let other_generation = Pointer {
            generation: 4,
            key: url.object_key("home", 4, &sha256),
            ..pointer.clone()
        };
        assert!(verify_object("home", &bytes, &other_generation, &url)
            .is_err_and(|e| e.contains("generation 3")));
        assert!(verify_object("ads", &bytes, &pointer, &url).is_err());
    }

    #[test]
    fn names_that_cannot_escape_the_cache_dir() {
        assert!(valid_name("home_feed-2.v1"));
        for bad in ["", ".hidden", "a/b", "..", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn source_keys_are_validated_together() {
        let config = BundlesConfig {
            dir: Some("/b".into()),
            source: Some("http://x".into()),
            poll_interval_ms: 0,
            ..BundlesConfig::default()
        };
        let problems = config.source_problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
