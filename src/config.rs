//! Configuration: the TOML file, built-in defaults, command-line overrides, and one validation
//! pass that reports every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the sidecar needs to run; `Default` is the documented built-in configuration.
/// Unknown keys are collected by `serde_ignored` (all of them, not just the first) and rejected.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// Address the proxy listens on (HTTP/1.1 and h2c prior knowledge on the same port).
    pub listen: SocketAddr,
    /// Largest request body accepted; larger bodies get 413 before any upstream is contacted.
    pub max_body_bytes: u64,
    /// How long a client may take to send its request headers (HTTP/1.1).
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a request body once its headers arrived.
    pub body_read_timeout_ms: u64,
    /// How long a write towards a client may wait for the client to read; then it is dropped.
    pub client_write_timeout_ms: u64,
    /// Decode request bodies that arrive with `Content-Encoding: lz4` (a trimmer next to the
    /// leaf, fed by one whose cluster sets `compression = "lz4"`); off, they pass untouched.
    pub accept_lz4: bool,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits anyway.
    pub shutdown_grace_ms: u64,
    /// Log line format: `text` for people, `json` for log shippers.
    pub log_format: LogFormat,
    /// The admin listener (metrics, health, status).
    pub admin: AdminConfig,
    /// Where allowlist bundles come from.
    pub bundles: BundlesConfig,
    /// How requests are trimmed.
    pub trim: TrimConfig,
    /// Shadow verification of trimmed requests against the untrimmed original.
    pub verify: VerifyConfig,
    /// Cluster that receives requests no cluster's `models` claims.
    pub default_cluster: String,
    /// Upstream clusters of leaf model servers.
    pub clusters: Vec<ClusterConfig>,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Address of the admin listener; loopback by default because it can change behaviour.
    pub listen: SocketAddr,
    /// Accept `POST /reload` and the kill switch from non-loopback peers.
    pub allow_remote_changes: bool,
}

/// Allowlist bundle source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct BundlesConfig {
    /// Directory watched for `*.json` bundles; none means nothing is trimmed.
    pub dir: Option<PathBuf>,
    /// Full rescan period, a safety net behind the directory watcher.
    pub rescan_interval_ms: u64,
    /// Quiet time after a file event before the directory is rescanned.
    pub debounce_ms: u64,
    /// Largest bundle file read; a larger one fails to load (its last-known-good stays).
    pub max_file_bytes: u64,
    /// Time a scan may take; a scan still running then is abandoned and reported.
    pub scan_timeout_ms: u64,
    /// `s3://BUCKET/PREFIX` polled for bundles (see `objstore`); exclusive with `dir`.
    pub source: Option<String>,
    /// Period of the conditional GET of each pointer (±10 % jitter).
    pub poll_interval_ms: u64,
    /// Where bundles fetched from `source` are installed and loaded from.
    pub cache_dir: Option<PathBuf>,
}

/// Trimming policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct TrimConfig {
    /// Default mode for model versions whose bundle does not set one.
    pub mode: Mode,
    /// What a request that names no version is trimmed with.
    pub unversioned: Unversioned,
    /// Window over which `trim_miss_rate` is computed.
    pub miss_rate_window_ms: u64,
}

/// Shadow verification: on a sample of trimmed requests the original goes to the same
/// cluster too, off the client's path, and the two answers are compared (see `verify`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct VerifyConfig {
    /// Fraction of trimmed requests verified (0 = off).
    pub sample: f64,
    /// Verifications in flight at once, process-wide; a sampled request over it is skipped.
    pub max_inflight: usize,
    /// Shadow request bytes sent per second, process-wide (one second of burst); over it, skipped.
    pub max_bytes_per_second: u64,
    /// Time a verification may take (shadow answer and the client's answer), then `error`.
    pub timeout_ms: u64,
    /// Two numbers are equal when they differ by at most this much...
    pub abs: f64,
    /// ...or by at most this fraction of the larger magnitude.
    pub rel: f64,
    /// Fraction of verified requests that also send the trimmed request a second time, to
    /// learn how much the leaf differs from itself.
    pub noise_sample: f64,
    /// Mismatches within `window_ms` that switch a model version to observe.
    pub mismatches_to_disable: u32,
    /// Window over which mismatches are counted.
    pub window_ms: u64,
}

/// A bundle entry's `verify` object: the `[verify]` keys a model version may set for itself.
/// The budgets (`max_inflight`, `max_bytes_per_second`) are the process's and stay global.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyOverride {
    /// Fraction of this version's trimmed requests verified (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample: Option<f64>,
    /// Time a verification may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// Absolute tolerance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub abs: Option<f64>,
    /// Relative tolerance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub rel: Option<f64>,
    /// Fraction of verified requests that also send a noise pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub noise_sample: Option<f64>,
    /// Mismatches within `window_ms` that switch this version to observe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub mismatches_to_disable: Option<u32>,
    /// Window over which mismatches are counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub window_ms: Option<u64>,
}

impl VerifyConfig {
    /// These settings with a model version's override applied.
    pub fn with(&self, o: &VerifyOverride) -> VerifyConfig {
        VerifyConfig {
            sample: o.sample.unwrap_or(self.sample),
            timeout_ms: o.timeout_ms.unwrap_or(self.timeout_ms),
            abs: o.abs.unwrap_or(self.abs),
            rel: o.rel.unwrap_or(self.rel),
            noise_sample: o.noise_sample.unwrap_or(self.noise_sample),
            mismatches_to_disable: o
                .mismatches_to_disable
                .unwrap_or(self.mismatches_to_disable),
            window_ms: o.window_ms.unwrap_or(self.window_ms),
            ..*self
        }
    }

    /// Every problem with these values, one line each, keys prefixed with `prefix`.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in [("sample", self.sample), ("noise_sample", self.noise_sample)] {
            if !(0.0..=1.0).contains(&value) {
                problems.push(format!("`{prefix}{key}` must be between 0 and 1"));
            }
        }
        for (key, value) in [("abs", self.abs), ("rel", self.rel)] {
            if !(value >= 0.0 && value.is_finite()) {
                problems.push(format!("`{prefix}{key}` must be a finite number >= 0"));
            }
        }
        for (key, value) in [
            ("max_inflight", self.max_inflight as u64),
            ("max_bytes_per_second", self.max_bytes_per_second),
            ("timeout_ms", self.timeout_ms),
            (
                "mismatches_to_disable",
                u64::from(self.mismatches_to_disable),
            ),
            ("window_ms", self.window_ms),
        ] {
            if value == 0 {
                problems.push(format!("`{prefix}{key}` must be greater than 0"));
            }
        }
        problems
    }
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            sample: 0.0,
            max_inflight: 8,
            max_bytes_per_second: 4 * 1024 * 1024,
            timeout_ms: 2_000,
            abs: 1e-6,
            rel: 1e-6,
            noise_sample: 0.1,
            mismatches_to_disable: 3,
            window_ms: 60_000,
        }
    }
}

/// Trimming mode.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Never trim (ordered first: least aggressive).
    Off,
    /// Compute what would be removed, forward the original.
    Observe,
    /// Trim.
    Enforce,
}

/// Allowlist used for requests without a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unversioned {
    /// Union of every listed version's allowlist.
    Union,
    /// The highest version's allowlist.
    Latest,
    /// Do not trim.
    Passthrough,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One named group of interchangeable leaf endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// Name used in routing, metrics (`upstream` label) and error messages.
    pub name: String,
    /// `http://host:port` of each leaf.
    pub endpoints: Vec<String>,
    /// Model names (exact, or globs with `*` and `?`) routed to this cluster.
    pub models: Vec<String>,
    /// Wire protocol towards the leaves.
    pub protocol: UpstreamProtocol,
    /// How requests are spread across endpoints.
    pub balance: Balance,
    /// Time allowed to open a TCP connection to an endpoint.
    pub connect_timeout_ms: u64,
    /// Time allowed from sending a request to receiving the response headers.
    pub request_timeout_ms: u64,
    /// How long an endpoint that refused a connection is skipped.
    pub eject_ms: u64,
    /// Idle pooled connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// Send the client's `Host` instead of the endpoint's authority (ingresses that route by Host).
    pub preserve_host: bool,
    /// Encode request bodies towards this cluster (`lz4`: for a trimmer next to the leaf).
    pub compression: Compression,
    /// On an allowlist miss, ask the leaf for the model's signature and trim by it.
    pub discover_signatures: bool,
    /// Compare every bundle allowlist of this cluster's models with the leaf's signature.
    pub verify_signatures: bool,
    /// How long a request that missed may wait for its model's signature (0: it goes on
    /// untouched and later requests use the answer).
    pub signature_wait_ms: u64,
    /// What a bundle version that lacks inputs the leaf declares does until a bundle fixes it.
    pub on_drift: OnDrift,
    /// How long a fetched signature is used before it is fetched again (in the background).
    pub signature_ttl_ms: u64,
    /// How long a 404, an error or an unreadable answer is remembered before asking again.
    pub signature_negative_ttl_ms: u64,
    /// Signatures (and remembered failures) cached for this cluster, at most.
    pub signature_cache_entries: usize,
    /// Bytes of cached signatures for this cluster, at most.
    pub signature_cache_bytes: usize,
    /// Metadata requests per second towards this cluster, at most (a burst of as many).
    pub metadata_requests_per_second: u32,
    /// Period of the drift check (it also runs whenever a bundle loads).
    pub verify_interval_ms: u64,
}

/// What a drifted bundle version (one that lacks inputs the leaf declares) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDrift {
    /// Trim it by the leaf's live signature instead (right for strict leaves).
    Live,
    /// Stop trimming it: mode observe (right for leaves that accept extra features).
    Observe,
    /// Only report it.
    Ignore,
}

impl OnDrift {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDrift::Live => "live",
            OnDrift::Observe => "observe",
            OnDrift::Ignore => "ignore",
        }
    }
}

/// Request body encoding towards a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Bodies as they are.
    None,
    /// lz4 frames with `Content-Encoding: lz4`.
    Lz4,
}

/// Wire protocol towards a cluster's leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 cleartext with prior knowledge.
    H2c,
}

/// Endpoint selection policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each endpoint in turn.
    RoundRobin,
    /// The endpoint with the fewest requests waiting for an answer.
    LeastOutstanding,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8585)),
            max_body_bytes: 32 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            client_write_timeout_ms: 30_000,
            accept_lz4: false,
            shutdown_grace_ms: 30_000,
            log_format: LogFormat::Text,
            admin: AdminConfig::default(),
            bundles: BundlesConfig::default(),
            trim: TrimConfig::default(),
            verify: VerifyConfig::default(),
            default_cluster: "default".to_owned(),
            clusters: Vec::new(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9585)),
            allow_remote_changes: false,
        }
    }
}

impl Default for BundlesConfig {
    fn default() -> Self {
        Self {
            dir: None,
            rescan_interval_ms: 30_000,
            debounce_ms: 200,
            max_file_bytes: 64 * 1024 * 1024,
            scan_timeout_ms: 10_000,
            source: None,
            poll_interval_ms: 30_000,
            cache_dir: None,
        }
    }
}

impl Default for TrimConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            unversioned: Unversioned::Union,
            miss_rate_window_ms: 60_000,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            endpoints: Vec::new(),
            models: Vec::new(),
            protocol: UpstreamProtocol::Http1,
            balance: Balance::RoundRobin,
            connect_timeout_ms: 1_000,
            request_timeout_ms: 30_000,
            eject_ms: 5_000,
            max_idle_per_endpoint: 64,
            preserve_host: false,
            compression: Compression::None,
            discover_signatures: false,
            verify_signatures: false,
            signature_wait_ms: 0,
            on_drift: OnDrift::Observe,
            signature_ttl_ms: 300_000,
            signature_negative_ttl_ms: 30_000,
            signature_cache_entries: 1024,
            signature_cache_bytes: 8 * 1024 * 1024,
            metadata_requests_per_second: 10,
            verify_interval_ms: 300_000,
        }
    }
}

/// Values given on the command line; each one that is set replaces the file's.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin`.
    pub admin: Option<SocketAddr>,
    /// `--upstream`: the only endpoint of the default cluster.
    pub upstream: Option<String>,
    /// `--bundles`.
    pub bundles: Option<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// A configuration that could not be used, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// One human-readable line per problem.
    pub problems: Vec<String>,
}

impl Config {
    /// Reads `path` (or the built-in defaults when `None`), applies `overrides`, and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut config = match path {
            None => Config::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Self::parse(&text, &mut problems).unwrap_or_default(),
                Err(e) => {
                    return Err(ConfigError {
                        problems: vec![format!("cannot read {}: {e}", path.display())],
                    })
                }
            },
        };
        config.apply(overrides);
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Parses TOML, recording unknown keys (all of them) and syntax or type errors in `problems`.
    fn parse(text: &str, problems: &mut Vec<String>) -> Option<Config> {
        let deserializer = toml::Deserializer::new(text);
        let mut unknown = Vec::new();
        let parsed =
            serde_ignored::deserialize(deserializer, |path| unknown.push(path.to_string()));
        problems.extend(
            unknown
                .into_iter()
                .map(|key| format!("unknown key `{key}`")),
        );
        match parsed {
            Ok(config) => Some(config),
            Err(e) => {
                problems.push(e.to_string().trim_end().replace('\n', "\n    "));
                None
            }
        }
    }

    fn apply(&mut self, overrides: &Overrides) {
        if let Some(listen) = overrides.listen {
            self.listen = listen;
        }
        if let Some(admin) = overrides.admin {
            self.admin.listen = admin;
        }
        if let Some(dir) = &overrides.bundles {
            self.bundles.dir = Some(dir.clone());
        }
        if let Some(format) = overrides.log_format {
            self.log_format = format;
        }
        if let Some(url) = &overrides.upstream {
            let endpoints = vec![url.clone()];
            match self
                .clusters
                .iter_mut()
                .find(|c| c.name == self.default_cluster)
            {
                Some(cluster) => cluster.endpoints = endpoints,
                None => self.clusters.push(ClusterConfig {
                    name: self.default_cluster.clone(),
                    endpoints,
                    ..ClusterConfig::default()
                }),
            }
        }
    }

    /// Every semantic problem, one line each; empty when the configuration is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                problems.push(format!("`{name}` must be greater than 0"));
            }
        };
        positive("max_body_bytes", self.max_body_bytes);
        positive("header_read_timeout_ms", self.header_read_timeout_ms);
        positive("body_read_timeout_ms", self.body_read_timeout_ms);
        positive("client_write_timeout_ms", self.client_write_timeout_ms);
        positive("bundles.max_file_bytes", self.bundles.max_file_bytes);
        positive("bundles.scan_timeout_ms", self.bundles.scan_timeout_ms);
        positive(
            "bundles.rescan_interval_ms",
            self.bundles.rescan_interval_ms,
        );
        positive("trim.miss_rate_window_ms", self.trim.miss_rate_window_ms);
        problems.extend(self.bundles.source_problems());
        problems.extend(self.verify.problems("verify."));
        if self.listen == self.admin.listen && self.listen.port() != 0 {
            problems.push(format!(
                "`listen` and `admin.listen` are both {}: the admin port never shares the proxy port",
                self.listen
            ));
        }
        if self.clusters.is_empty() {
            problems
                .push("no upstream: pass --upstream URL or add a [[clusters]] table".to_owned());
        } else if !self.clusters.iter().any(|c| c.name == self.default_cluster) {
            problems.push(format!(
                "`default_cluster` is `{}` but no cluster has that name",
                self.default_cluster
            ));
        }
        let mut seen_names = std::collections::HashSet::new();
        let mut seen_patterns = std::collections::HashMap::new();
        for (i, cluster) in self.clusters.iter().enumerate() {
            let label = if cluster.name.is_empty() {
                format!("clusters[{i}]")
            } else {
                format!("cluster `{}`", cluster.name)
            };
            if cluster.name.is_empty() {
                problems.push(format!("{label}: `name` is missing"));
            } else if !seen_names.insert(cluster.name.as_str()) {
                problems.push(format!("{label}: the name is used by another cluster"));
            }
            if cluster.endpoints.is_empty() {
                problems.push(format!("{label}: `endpoints` is empty"));
            }
            for endpoint in &cluster.endpoints {
                if let Err(why) = parse_endpoint(endpoint) {
                    problems.push(format!("{label}: endpoint `{endpoint}` {why}"));
                }
            }
            for pattern in &cluster.models {
                if pattern.is_empty() {
                    problems.push(format!("{label}: empty model pattern"));
                } else if let Some(other) = seen_patterns.insert(pattern.as_str(), label.clone()) {
                    problems.push(format!(
                        "{label}: model pattern `{pattern}` is also routed by {other}"
                    ));
                }
            }
            for (name, value) in [
                ("connect_timeout_ms", cluster.connect_timeout_ms),
                ("request_timeout_ms", cluster.request_timeout_ms),
            ] {
                if value == 0 {
                    problems.push(format!("{label}: `{name}` must be greater than 0"));
                }
            }
            if cluster.discover_signatures || cluster.verify_signatures {
                for (name, value) in [
                    ("signature_ttl_ms", cluster.signature_ttl_ms),
                    (
                        "signature_negative_ttl_ms",
                        cluster.signature_negative_ttl_ms,
                    ),
                    (
                        "signature_cache_entries",
                        cluster.signature_cache_entries as u64,
                    ),
                    (
                        "signature_cache_bytes",
                        cluster.signature_cache_bytes as u64,
                    ),
                    (
                        "metadata_requests_per_second",
                        u64::from(cluster.metadata_requests_per_second),
                    ),
                    ("verify_interval_ms", cluster.verify_interval_ms),
                ] {
                    if value == 0 {
                        problems.push(format!("{label}: `{name}` must be greater than 0"));
                    }
                }
            }
            if cluster.signature_wait_ms >= cluster.request_timeout_ms {
                problems.push(format!(
                    "{label}: `signature_wait_ms` must be less than `request_timeout_ms`"
                ));
            }
        }
        problems
    }
}

/// Parses an endpoint URL into its authority; only `http://host:port` (no path) is accepted.
pub fn parse_endpoint(url: &str) -> Result<http::uri::Authority, &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "is not a URL")?;
    if uri.scheme_str() != Some("http") {
        return Err("must start with http:// (TLS towards leaves is not supported)");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must not have a path or query");
    }
    let authority = uri.authority().ok_or("has no host")?;
    if authority.port_u16().is_none() {
        return Err("must name a port");
    }
    Ok(authority.clone())
}

/// Milliseconds from the configuration as a `Duration`.
pub fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_only_an_upstream() {
        let overrides = Overrides {
            upstream: Some("http://127.0.0.1:8501".into()),
            ..Default::default()
        };
        let config = Config::load(None, &overrides).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8585");
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9585");
        assert_eq!(config.clusters[0].name, "default");
    }

    #[test]
    fn the_admin_port_never_shares_the_proxy_port() {
        let mut config = Config {
            clusters: vec![ClusterConfig {
                name: "default".into(),
                endpoints: vec!["http://127.0.0.1:1".into()],
                ..ClusterConfig::default()
            }],
            ..Config::default()
        };
        config.admin.listen = config.listen;
        assert!(
            config
                .problems()
                .iter()
                .any(|p| p.contains("never shares the proxy port")),
            "{:?}",
            config.problems()
        );
    }

    #[test]
    fn verify_keys_are_checked() {
        let mut problems = Vec::new();
        let config = Config::parse(
            "[verify]\nsample = 1.5\nmax_inflight = 0\nrel = -1.0\nwindow = 5\n",
            &mut problems,
        )
        .unwrap();
        problems.extend(config.verify.problems("verify."));
        for expected in [
            "`verify.window`",
            "`verify.sample` must be between 0 and 1",
            "`verify.max_inflight` must be greater than 0",
            "`verify.rel` must be a finite number >= 0",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected}: {problems:?}"
            );
        }
        let o = VerifyOverride {
            sample: Some(0.5),
            abs: Some(0.01),
            ..VerifyOverride::default()
        };
        let merged = VerifyConfig::default().with(&o);
        assert_eq!((merged.sample, merged.abs), (0.5, 0.01));
        assert_eq!(merged.rel, VerifyConfig::default().rel);
    }

    #[test]
    fn reports_every_problem() {
        let mut problems = Vec::new();
        let config = Config::parse(
            "listn = 1\n[[clusters]]\nname = \"a\"\nendpoints = [\"ftp://x\"]\nconnect_timeout_ms = 0\n[trim]\nmod = \"x\"\n",
            &mut problems,
        )
        .unwrap();
        problems.extend(config.problems());
        assert!(
            problems.iter().any(|p| p.contains("`listn`")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("`trim.mod`")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("ftp://x")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("connect_timeout_ms")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("default_cluster")),
            "{problems:?}"
        );
    }
}
