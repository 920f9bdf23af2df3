//! Web application firewall rules (`[waf]`): operator rules matching on client IP/CIDR, method, path
//! glob, header regexes and JSON body regexes, plus a small default rule set (path traversal, null bytes,
//! probe paths, scanner user agents) that `default_rules = false` turns off.
//!
//! Promises: the configuration is compiled once by [`Waf::new`], which fails with one line naming the
//! rule id and the bad field; every regex is size-limited and all patterns of one kind share one
//! [`RegexSet`], so matching is linear in the input and does not grow with the number of rules beyond
//! what is needed to tally which rules matched. A rule matches when every condition it sets matches. A
//! block wins over log matches; all log matches are reported. Rules without a body condition are decided
//! by [`Waf::check_head`], before the body is read; rules with one only by [`Waf::check_body`]. Matches
//! are counted per rule, for metrics ([`Waf::totals`]) and for one periodic audit summary
//! ([`Waf::take_summary`]) rather than one entry per request.
//!
//! What it does not do: paths are matched as sent (percent-encoded), as the router sees them; body
//! regexes see the JSON text, with `\uXXXX` and `\/` escapes also tried decoded, never a parsed value.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, Method, Uri};
use ipnet::IpNet;
use regex::bytes::{RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Longest rule id.
const MAX_ID_LEN: usize = 64;
/// Longest regex or glob source accepted from the configuration.
const MAX_PATTERN_LEN: usize = 4096;
/// Compiled size limit of one pattern.
const PATTERN_SIZE_LIMIT: usize = 2 << 20;
/// Compiled size limit of one set, whatever the number of patterns.
const SET_SIZE_LIMIT_CAP: usize = 64 << 20;
/// Prefix of the default rules' ids, reserved for them.
const DEFAULT_PREFIX: &str = "default.";

/// `[waf]`: the default rule set switch and the operator's `[[waf.rules]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WafConfig {
    /// Apply the built-in rules (ids `default.*`).
    pub default_rules: bool,
    pub rules: Vec<RuleConfig>,
}

impl Default for WafConfig {
    fn default() -> Self {
        WafConfig {
            default_rules: true,
            rules: Vec::new(),
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the request (403 `REQUEST_BLOCKED` naming the rule).
    Block,
    /// Let it through and count the match.
    Log,
}

/// One `[[waf.rules]]` entry. Every condition set must match (AND); at least one must be set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// 1–64 characters of `A-Za-z0-9._-`, unique; `default.` is reserved.
    pub id: String,
    pub action: Action,
    /// IPs or CIDRs: the condition holds for clients in none of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow: Vec<String>,
    /// IPs or CIDRs: the condition holds for clients in any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_deny: Vec<String>,
    /// Methods, any case; the condition holds for any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// A glob on the path as sent: `*` is within one segment, a `**` segment is any depth (also none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Header name → case-insensitive regex on its value; holds when any value of the header matches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A regex on JSON request bodies (case-sensitive unless it says `(?i)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The first matching block rule, in configuration order (operator rules, then defaults).
    Block {
        rule: Arc<str>,
    },
    /// No block rule matched; these log rules did.
    Log {
        rules: Vec<Arc<str>>,
    },
}

impl Verdict {
    pub fn is_block(&self) -> bool {
        matches!(self, Verdict::Block { .. })
    }
}

/// A compiled rule: the conditions not held in a shared set, and its counters.
#[derive(Debug)]
struct Rule {
    id: Arc<str>,
    action: Action,
    /// How many conditions must hold (each header name counts once).
    conditions: u32,
    has_body: bool,
    ip_allow: Vec<IpNet>,
    ip_deny: Vec<IpNet>,
    methods: Vec<Method>,
    blocks: AtomicU64,
    logged: AtomicU64,
    blocks_total: AtomicU64,
    logged_total: AtomicU64,
}

/// One regex set and, per pattern, the rule it belongs to (a rule has at most one pattern per set).
#[derive(Debug)]
struct PatternSet {
    set: RegexSet,
    owners: Vec<usize>,
}

impl PatternSet {
    /// Counts one hit for each rule whose pattern matches any of `haystacks`.
    fn add_hits(&self, haystacks: &[&[u8]], hits: &mut [u32]) {
        let mut matched: Vec<usize> = Vec::new();
        for hay in haystacks {
            // Most requests match nothing: the cheap test first, the allocating one only on a hit.
            if !self.set.is_match(hay) {
                continue;
            }
            for idx in self.set.matches(hay).iter() {
                if !matched.contains(&idx) {
                    matched.push(idx);
                }
            }
        }
        for idx in matched {
            if let Some(&rule) = self.owners.get(idx) {
                if let Some(h) = hits.get_mut(rule) {
                    *h += 1;
                }
            }
        }
    }
}

/// Per rule, how many of its conditions a request met (on the stack for up to 16 rules).
type Hits = SmallVec<[u32; 16]>;

/// Ids of compiled firewalls, so that a thread's [`TargetMemo`] never carries hits from one to another.
static NEXT_WAF_ID: AtomicU64 = AtomicU64::new(1);

/// Longest request target (path and query) a thread's [`TargetMemo`] keeps.
const MEMO_TARGET_MAX: usize = 256;

/// The last request target a thread screened, with the hits the path and target patterns gave it.
/// Those hits depend on the target alone, and clients repeat their targets (listing, polling the same
/// prediction), so a repeat is decided without running either regex set.
#[derive(Default)]
struct TargetMemo {
    waf: u64,
    target: Vec<u8>,
    hits: Hits,
}

thread_local! {
    static TARGET_MEMO: std::cell::RefCell<TargetMemo> = std::cell::RefCell::new(TargetMemo::default());
}

/// The compiled firewall. Build once, share behind an `Arc`.
#[derive(Debug)]
pub struct Waf {
    /// Unique in the process (see [`TargetMemo`]).
    id: u64,
    rules: Vec<Rule>,
    /// Rules with an IP or method condition.
    simple: Vec<usize>,
    paths: Option<PatternSet>,
    /// Regexes on the raw path and query (default rules only).
    targets: Option<PatternSet>,
    headers: Vec<(HeaderName, PatternSet)>,
    bodies: Option<PatternSet>,
}

impl Waf {
    /// Compiles `config`; the error is one line naming the rule and field.
    pub fn new(config: &WafConfig) -> Result<Waf, String> {
        let mut b = Builder::default();
        for (index, rule) in config.rules.iter().enumerate() {
            b.add_rule(index, rule)?;
        }
        if config.default_rules {
            b.add_defaults()?;
        }
        b.finish()
    }

    /// No rule at all: the caller may skip the checks.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule looks at the body, so [`Waf::check_body`] is worth calling.
    pub fn needs_body(&self) -> bool {
        self.bodies.is_some()
    }

    /// Decides every rule without a body condition, before the body is read.
    pub fn check_head(&self, client: IpAddr, method: &Method, uri: &Uri, headers: &HeaderMap) -> Verdict {
        let hits = self.head_hits(client, method, uri, headers);
        self.decide(&hits, false)
    }

    /// Decides the rules with a body condition (call [`Waf::check_head`] first; the rules it decides
    /// are not looked at again). `body` is the body read so far, up to the size limit; it is scanned
    /// only when it is JSON by its content type or by its first byte (the API parses such bodies).
    pub fn check_body(
        &self,
        client: IpAddr,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Verdict {
        let Some(bodies) = &self.bodies else {
            return Verdict::Allow;
        };
        let mut hits = self.head_hits(client, method, uri, headers);
        let candidate = self
            .rules
            .iter()
            .zip(&hits)
            .any(|(r, &h)| r.has_body && h + 1 == r.conditions);
        if !candidate || !is_json(headers, body) {
            return Verdict::Allow;
        }
        match unescaped_view(body) {
            Some(view) => bodies.add_hits(&[body, &view], &mut hits),
            None => bodies.add_hits(&[body], &mut hits),
        }
        self.decide(&hits, true)
    }

    /// Per rule with a non-zero count since the last call: (id, blocks, log matches); resets them.
    pub fn take_summary(&self) -> Vec<(Arc<str>, u64, u64)> {
        self.rules
            .iter()
            .filter_map(|r| {
                let blocks = r.blocks.swap(0, Ordering::Relaxed);
                let logged = r.logged.swap(0, Ordering::Relaxed);
                (blocks > 0 || logged > 0).then(|| (r.id.clone(), blocks, logged))
            })
            .collect()
    }

    /// Per rule, (id, blocks, log matches) since start, never reset (for metrics counters).
    pub fn totals(&self) -> Vec<(Arc<str>, u64, u64)> {
        self.rules
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    r.blocks_total.load(Ordering::Relaxed),
                    r.logged_total.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Hits of every condition other than the body, per rule.
    fn head_hits(&self, client: IpAddr, method: &Method, uri: &Uri, headers: &HeaderMap) -> Hits {
        let client = client.to_canonical();
        let mut hits: Hits = smallvec::smallvec![0u32; self.rules.len()];
        for &i in &self.simple {
            let (Some(r), Some(h)) = (self.rules.get(i), hits.get_mut(i)) else {
                continue;
            };
            if !r.ip_allow.is_empty() && !r.ip_allow.iter().any(|n| n.contains(&client)) {
                *h += 1;
            }
            if !r.ip_deny.is_empty() && r.ip_deny.iter().any(|n| n.contains(&client)) {
                *h += 1;
            }
            if !r.methods.is_empty() && r.methods.contains(method) {
                *h += 1;
            }
        }
        self.add_target_hits(uri, &mut hits);
        for (name, set) in &self.headers {
            let values: SmallVec<[&[u8]; 4]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
            if !values.is_empty() {
                set.add_hits(&values, &mut hits);
            }
        }
        hits
    }

    /// Adds the hits of the path and target patterns, remembered per thread for the last target.
    fn add_target_hits(&self, uri: &Uri, hits: &mut Hits) {
        if self.paths.is_none() && self.targets.is_none() {
            return;
        }
        let target = uri
            .path_and_query()
            .map_or(uri.path(), |pq| pq.as_str())
            .as_bytes();
        let remembered = TARGET_MEMO.with_borrow(|m| {
            let same = m.waf == self.id && m.target == target;
            if same {
                for (h, t) in hits.iter_mut().zip(&m.hits) {
                    *h += t;
                }
            }
            same
        });
        if remembered {
            return;
        }
        let mut own: Hits = smallvec::smallvec![0u32; self.rules.len()];
        if let Some(paths) = &self.paths {
            paths.add_hits(&[uri.path().as_bytes()], &mut own);
        }
        if let Some(targets) = &self.targets {
            targets.add_hits(&[target], &mut own);
        }
        for (h, t) in hits.iter_mut().zip(&own) {
            *h += t;
        }
        if target.len() <= MEMO_TARGET_MAX {
            TARGET_MEMO.with_borrow_mut(|m| {
                m.waf = self.id;
                m.target.clear();
                m.target.extend_from_slice(target);
                m.hits = own;
            });
        }
    }

    /// The verdict over the rules with (`body`) or without a body condition, counting it.
    fn decide(&self, hits: &[u32], body: bool) -> Verdict {
        let mut logs: Vec<&Rule> = Vec::new();
        for (r, &h) in self.rules.iter().zip(hits) {
            if r.has_body != body || h != r.conditions {
                continue;
            }
            match r.action {
                Action::Block => {
                    r.blocks.fetch_add(1, Ordering::Relaxed);
                    r.blocks_total.fetch_add(1, Ordering::Relaxed);
                    return Verdict::Block { rule: r.id.clone() };
                }
                Action::Log => logs.push(r),
            }
        }
        if logs.is_empty() {
            return Verdict::Allow;
        }
        for r in &logs {
            r.logged.fetch_add(1, Ordering::Relaxed);
            r.logged_total.fetch_add(1, Ordering::Relaxed);
        }
        Verdict::Log {
            rules: logs.iter().map(|r| r.id.clone()).collect(),
        }
    }
}

/// Pattern sources collected per kind before the sets are compiled.
#[derive(Default)]
struct Patterns {
    sources: Vec<String>,
    owners: Vec<usize>,
}

impl Patterns {
    fn push(&mut self, source: String, owner: usize) {
        self.sources.push(source);
        self.owners.push(owner);
    }

    fn compile(self, kind: &str, case_insensitive: bool) -> Result<Option<PatternSet>, String> {
        if self.sources.is_empty() {
            return Ok(None);
        }
        let limit = PATTERN_SIZE_LIMIT
            .saturating_mul(self.sources.len())
            .min(SET_SIZE_LIMIT_CAP);
        let set = RegexSetBuilder::new(&self.sources)
            .case_insensitive(case_insensitive)
            .size_limit(limit)
            .build()
            .map_err(|e| {
                format!(
                    "waf: the {kind} patterns together are too large: {}",
                    one_line(&e)
                )
            })?;
        Ok(Some(PatternSet {
            set,
            owners: self.owners,
        }))
    }
}

#[derive(Default)]
struct Builder {
    rules: Vec<Rule>,
    paths: Patterns,
    targets: Patterns,
    /// Keyed by the lowercase header name.
    headers: BTreeMap<String, (HeaderName, Patterns)>,
    bodies: Patterns,
}

impl Builder {
    fn add_rule(&mut self, index: usize, cfg: &RuleConfig) -> Result<(), String> {
        let id = cfg.id.as_str();
        let valid = (1..=MAX_ID_LEN).contains(&id.len())
            && id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !valid {
            return Err(format!(
                "waf.rules[{index}].id: {id:?} is not a valid rule id (1-{MAX_ID_LEN} characters of A-Za-z0-9._-)"
            ));
        }
        if id.starts_with(DEFAULT_PREFIX) {
            return Err(format!(
                "waf.rules[{id}].id: the prefix {DEFAULT_PREFIX:?} is reserved for the default rules"
            ));
        }
        if self.rules.iter().any(|r| &*r.id == id) {
            return Err(format!("waf.rules[{id}].id: duplicate rule id"));
        }
        let err = |field: &str, msg: String| format!("waf.rules[{id}].{field}: {msg}");
        let owner = self.rules.len();
        let mut conditions = 0u32;

        let ip_allow = parse_nets(&cfg.ip_allow).map_err(|(i, m)| err(&format!("ip_allow[{i}]"), m))?;
        let ip_deny = parse_nets(&cfg.ip_deny).map_err(|(i, m)| err(&format!("ip_deny[{i}]"), m))?;
        conditions += u32::from(!ip_allow.is_empty()) + u32::from(!ip_deny.is_empty());
        let mut methods = Vec::with_capacity(cfg.methods.len());
        for (i, m) in cfg.methods.iter().enumerate() {
            let method = Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| err(&format!("methods[{i}]"), format!("{m:?} is not an HTTP method")))?;
            methods.push(method);
        }
        conditions += u32::from(!methods.is_empty());
        if let Some(glob) = &cfg.path {
            let re = glob_to_regex(glob).map_err(|m| err("path", m))?;
            check_regex(&re, false).map_err(|m| err("path", m))?;
            self.paths.push(re, owner);
            conditions += 1;
        }
        for (name, re) in &cfg.headers {
            let field = format!("headers.{name}");
            let header = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| err(&field, format!("{name:?} is not a header name")))?;
            check_regex(re, true).map_err(|m| err(&field, m))?;
            let entry = self
                .headers
                .entry(header.as_str().to_owned())
                .or_insert_with(|| (header.clone(), Patterns::default()));
            if entry.1.owners.contains(&owner) {
                return Err(err(&field, "the header is named twice".to_owned()));
            }
            entry.1.push(re.clone(), owner);
            conditions += 1;
        }
        let has_body = cfg.body.is_some();
        if let Some(re) = &cfg.body {
            check_regex(re, false).map_err(|m| err("body", m))?;
            self.bodies.push(re.clone(), owner);
            conditions += 1;
        }
        if conditions == 0 {
            return Err(format!(
                "waf.rules[{id}]: sets no condition (ip_allow, ip_deny, methods, path, headers or body)"
            ));
        }
        self.rules.push(Rule {
            ip_allow,
            ip_deny,
            methods,
            ..new_rule(id, cfg.action, conditions, has_body)
        });
        Ok(())
    }

    fn add_defaults(&mut self) -> Result<(), String> {
        // Dots and separators: plain, percent-encoded, double-encoded, and the overlong UTF-8 dot.
        const DOT: &str = r"(?:\.|%2e|%252e|%c0%ae)";
        const SEP: &str = r"(?:/|\\|%2f|%5c|%252f|%255c)";
        let traversal = format!(r"(?i){DOT}{DOT}{SEP}|{SEP}{DOT}{DOT}(?:$|[?#&;])");
        self.add_default("default.path-traversal", DefaultKind::Target, &traversal)?;
        self.add_default("default.null-byte", DefaultKind::Target, "%00")?;
        self.add_default(
            "default.probe-path",
            DefaultKind::Path,
            r"(?i)(?:^|/)(?:\.env(?:$|[/.])|\.git(?:$|/)|wp-admin(?:$|/)|wp-login\.php$|phpmyadmin(?:$|/)|cgi-bin(?:$|/))",
        )?;
        self.add_default(
            "default.scanner-user-agent",
            DefaultKind::UserAgent,
            r"(?-u:\b)(?:sqlmap|nikto|nmap|masscan|zgrab|nuclei|acunetix|wpscan|dirbuster|gobuster)",
        )
    }

    fn add_default(&mut self, id: &str, kind: DefaultKind, re: &str) -> Result<(), String> {
        let owner = self.rules.len();
        let set = match kind {
            DefaultKind::Target => &mut self.targets,
            DefaultKind::Path => &mut self.paths,
            DefaultKind::UserAgent => {
                &mut self
                    .headers
                    .entry(USER_AGENT.as_str().to_owned())
                    .or_insert_with(|| (USER_AGENT, Patterns::default()))
                    .1
            }
        };
        check_regex(re, matches!(kind, DefaultKind::UserAgent))
            .map_err(|m| format!("waf.rules[{id}]: {m}"))?;
        set.push(re.to_owned(), owner);
        self.rules.push(new_rule(id, Action::Block, 1, false));
        Ok(())
    }

    fn finish(self) -> Result<Waf, String> {
        let simple = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.ip_allow.is_empty() || !r.ip_deny.is_empty() || !r.methods.is_empty())
            .map(|(i, _)| i)
            .collect();
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, (header, patterns)) in self.headers {
            if let Some(set) = patterns.compile(&format!("headers.{name}"), true)? {
                headers.push((header, set));
            }
        }
        Ok(Waf {
            id: NEXT_WAF_ID.fetch_add(1, Ordering::Relaxed),
            rules: self.rules,
            simple,
            paths: self.paths.compile("path", false)?,
            targets: self.targets.compile("default target", false)?,
            headers,
            bodies: self.bodies.compile("body", false)?,
        })
    }
}

/// Where a default rule's single pattern goes.
enum DefaultKind {
    /// The raw path and query.
    Target,
    Path,
    UserAgent,
}

fn new_rule(id: &str, action: Action, conditions: u32, has_body: bool) -> Rule {
    Rule {
        id: Arc::from(id),
        action,
        conditions,
        has_body,
        ip_allow: Vec::new(),
        ip_deny: Vec::new(),
        methods: Vec::new(),
        blocks: AtomicU64::new(0),
        logged: AtomicU64::new(0),
        blocks_total: AtomicU64::new(0),
        logged_total: AtomicU64::new(0),
    }
}

/// Parses IPs and CIDRs; on failure, the index and the reason.
fn parse_nets(list: &[String]) -> Result<Vec<IpNet>, (usize, String)> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let t = s.trim();
            t.parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| (i, format!("{s:?} is not an IP address or CIDR network")))
        })
        .collect()
}

/// Compiles one pattern alone, so a bad or oversized one is reported against its own rule.
fn check_regex(source: &str, case_insensitive: bool) -> Result<(), String> {
    if source.len() > MAX_PATTERN_LEN {
        return Err(format!("longer than {MAX_PATTERN_LEN} bytes"));
    }
    RegexBuilder::new(source)
        .case_insensitive(case_insensitive)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map(|_| ())
        .map_err(|e| one_line(&e))
}

/// A regex error on one line: parse errors keep their reason, not the caret drawing.
fn one_line(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => {
            let reason = text
                .lines()
                .map(str::trim)
                .filter_map(|l| l.strip_prefix("error:"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ");
            if reason.is_empty() {
                let joined: Vec<&str> = text.split_whitespace().collect();
                joined.join(" ")
            } else {
                format!("regex parse error: {reason}")
            }
        }
        other => other.to_string().split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Anchored regex for a path glob: `*` matches within one segment, a `**` segment any depth.
fn glob_to_regex(glob: &str) -> Result<String, String> {
    let Some(rest) = glob.strip_prefix('/') else {
        return Err(format!("{glob:?} must start with '/'"));
    };
    if glob.len() > MAX_PATTERN_LEN {
        return Err(format!("longer than {MAX_PATTERN_LEN} bytes"));
    }
    let mut re = String::from("^");
    for segment in rest.split('/') {
        if segment == "**" {
            re.push_str("(?:/(?s:.*))?");
            continue;
        }
        if segment.contains("**") {
            return Err(format!("{glob:?}: '**' must be a whole path segment"));
        }
        re.push('/');
        for (i, part) in segment.split('*').enumerate() {
            if i > 0 {
                re.push_str("[^/]*");
            }
            re.push_str(&regex::escape(part));
        }
    }
    re.push('$');
    Ok(re)
}

/// JSON by its content type (`application/json`, `application/*+json`), or by its first non-space
/// byte: the API's JSON extractor parses a body whatever its label, so the label alone would let a
/// mislabelled body slip past the body rules.
fn is_json(headers: &HeaderMap, body: &[u8]) -> bool {
    let labelled = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let essence = v
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        })
        .unwrap_or(false);
    labelled || matches!(body.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['))
}

/// The body with `\uXXXX` (and surrogate pairs) and `\/` escapes decoded, so a body regex cannot be
/// dodged by escaping; `"`, `\` and control characters keep an escaped form. None when there is no
/// such escape.
fn unescaped_view(body: &[u8]) -> Option<Vec<u8>> {
    if !body.windows(2).any(|w| w == b"\\u" || w == b"\\/") {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        match body.get(i + 1) {
            Some(b'/') => {
                out.push(b'/');
                i += 2;
                continue;
            }
            Some(b'u') => {
                if let Some((c, used)) = decode_unicode_escape(body, i) {
                    match c {
                        '"' => out.extend_from_slice(b"\\\""),
                        '\\' => out.extend_from_slice(b"\\\\"),
                        c if (c as u32) < 0x20 => out.extend_from_slice(body.get(i..i + used)?),
                        c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                    i += used;
                    continue;
                }
            }
            _ => {}
        }
        // Any other escape (including `\\`) is copied as a pair, so `\\u0041` stays as it is.
        out.extend_from_slice(body.get(i..(i + 2).min(body.len()))?);
        i += 2;
    }
    Some(out)
}

/// The character of the `\uXXXX` escape at `at` (joining a surrogate pair) and the bytes it takes.
fn decode_unicode_escape(body: &[u8], at: usize) -> Option<(char, usize)> {
    let hex4 = |from: usize| -> Option<u32> {
        let digits = std::str::from_utf8(body.get(from..from + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    let high = hex4(at + 2)?;
    if (0xD800..0xDC00).contains(&high) {
        if body.get(at + 6..at + 8)? != b"\\u" {
            return None;
        }
        let low = hex4(at + 8)?;
        if !(0xDC00..0xE000).contains(&low) {
            return None;
        }
        let cp = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
        return char::from_u32(cp).map(|c| (c, 12));
    }
    char::from_u32(high).map(|c| (c, 6))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(id: &str, action: Action) -> RuleConfig {
        RuleConfig {
            id: id.to_owned(),
            action,
            ip_allow: vec![],
            ip_deny: vec![],
            methods: vec![],
            path: None,
            headers: BTreeMap::new(),
            body: None,
        }
    }

    fn waf(default_rules: bool, rules: Vec<RuleConfig>) -> Waf {
        Waf::new(&WafConfig { default_rules, rules }).unwrap()
    }

    fn err(default_rules: bool, rules: Vec<RuleConfig>) -> String {
        let e = Waf::new(&WafConfig { default_rules, rules }).unwrap_err();
        assert!(!e.contains('\n'), "error is not one line: {e}");
        e
    }

    fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn head(w: &Waf, method: &str, uri: &str, headers: &[(&str, &str)]) -> Verdict {
        head_from(w, "203.0.113.9", method, uri, headers)
    }

    fn head_from(w: &Waf, client: &str, method: &str, uri: &str, headers: &[(&str, &str)]) -> Verdict {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let uri: Uri = uri.parse().unwrap();
        w.check_head(ip(client), &method, &uri, &hdrs(headers))
    }

    fn body(w: &Waf, content_type: Option<&str>, body: &[u8]) -> Verdict {
        let headers: Vec<(&str, &str)> = content_type.map(|c| ("content-type", c)).into_iter().collect();
        let uri: Uri = "/v1/predictions".parse().unwrap();
        w.check_body(ip("203.0.113.9"), &Method::POST, &uri, &hdrs(&headers), body)
    }

    fn blocked(rule: &str) -> Verdict {
        Verdict::Block {
            rule: Arc::from(rule),
        }
    }

    fn logged(rules: &[&str]) -> Verdict {
        Verdict::Log {
            rules: rules.iter().map(|r| Arc::from(*r)).collect(),
        }
    }

    const SDK: (&str, &str) = ("user-agent", "skytells-python/1.0.0");

    #[test]
    fn default_rules_block_their_examples() {
        let w = waf(true, vec![]);
        for uri in [
            "/v1/../etc/passwd",
            "/v1/..%2f..%2fetc/passwd",
            "/v1/%2e%2e/secret",
            "/v1/%2E%2E%2Fsecret",
            "/v1/..%5Cwindows",
            "/v1/..\\windows",
            "/v1/files?name=../../etc/passwd",
            "/v1/files?name=%252e%252e%252fetc",
            "/v1/predictions/..",
        ] {
            assert_eq!(
                head(&w, "GET", uri, &[SDK]),
                blocked("default.path-traversal"),
                "{uri}"
            );
        }
        for uri in ["/v1/models%00.json", "/v1/predictions?id=x%00"] {
            assert_eq!(
                head(&w, "GET", uri, &[SDK]),
                blocked("default.null-byte"),
                "{uri}"
            );
        }
        for uri in [
            "/.env",
            "/api/.env.bak",
            "/.git/config",
            "/wp-admin/",
            "/blog/wp-login.php",
            "/phpMyAdmin/index.php",
            "/cgi-bin/test.sh",
        ] {
            assert_eq!(
                head(&w, "GET", uri, &[SDK]),
                blocked("default.probe-path"),
                "{uri}"
            );
        }
        for ua in [
            "sqlmap/1.7.2#stable (https://sqlmap.org)",
            "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
            "Nikto/2.5.0",
            "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
            "Mozilla/5.0 zgrab/0.x",
            "Nuclei - Open-source project (github.com/projectdiscovery/nuclei)",
            "acunetix_wvs_security_test",
            "WPScan v3.8.22 (https://wpscan.com/wordpress-security-scanner)",
            "DirBuster-1.0-RC1",
            "gobuster/3.6",
        ] {
            assert_eq!(
                head(&w, "GET", "/v1/models", &[("user-agent", ua)]),
                blocked("default.scanner-user-agent"),
                "{ua}"
            );
        }
    }

    #[test]
    fn ordinary_api_traffic_passes_the_defaults() {
        let w = waf(true, vec![]);
        assert!(!w.needs_body());
        for (method, uri) in [
            ("POST", "/v1/predictions"),
            ("GET", "/v1/predictions/7b3a4c1e-1f7e-4b8e-9d1a-2f0b8e2c9a11"),
            (
                "POST",
                "/v1/predictions/7b3a4c1e-1f7e-4b8e-9d1a-2f0b8e2c9a11/cancel",
            ),
            ("GET", "/v1/predictions?limit=20&cursor=abc...def"),
            ("GET", "/v1/models/black-forest-labs/flux.1-dev"),
            ("GET", "/v1/environment.json"),
            ("GET", "/healthz"),
        ] {
            assert_eq!(head(&w, method, uri, &[SDK]), Verdict::Allow, "{method} {uri}");
        }
        assert_eq!(
            head(
                &w,
                "GET",
                "/v1/models",
                &[("user-agent", "Mozilla/5.0 (X11; Linux x86_64) libnmapx")]
            ),
            Verdict::Allow
        );
        // Body rules are operator-defined only: a prompt about `../` is fine.
        let prompt = br#"{"model": "flux", "input": {"prompt": "explain ../ in unix paths"}}"#;
        assert_eq!(body(&w, Some("application/json"), prompt), Verdict::Allow);
        assert!(w.take_summary().is_empty());
    }

    #[test]
    fn a_remembered_target_gives_the_verdict_a_fresh_one_does() {
        // Two firewalls on one thread: the same targets block on one and pass on the other, in any
        // order, repeated, so a remembered target never carries one firewall's hits to the other.
        let on = waf(true, vec![]);
        let path_rule = RuleConfig {
            path: Some("/admin/*".into()),
            ..rule("no-admin", Action::Block)
        };
        let off = waf(false, vec![path_rule]);
        let long = format!("/v1/{}/../x", "a".repeat(MEMO_TARGET_MAX));
        for _ in 0..3 {
            for uri in ["/v1/../etc/passwd", "/v1/models", "/admin/x", long.as_str()] {
                let traversal = uri.contains("..");
                let want_on = if traversal {
                    blocked("default.path-traversal")
                } else {
                    Verdict::Allow
                };
                let want_off = if uri.starts_with("/admin/") {
                    blocked("no-admin")
                } else {
                    Verdict::Allow
                };
                assert_eq!(head(&on, "GET", uri, &[SDK]), want_on, "{uri}");
                assert_eq!(head(&on, "GET", uri, &[SDK]), want_on, "{uri} again");
                assert_eq!(head(&off, "GET", uri, &[SDK]), want_off, "{uri}");
                assert_eq!(head(&off, "GET", uri, &[SDK]), want_off, "{uri} again");
            }
        }
    }

    #[test]
    fn default_rules_can_be_turned_off() {
        let w = waf(false, vec![]);
        assert!(w.is_empty());
        assert_eq!(
            head(&w, "GET", "/.env", &[("user-agent", "sqlmap/1.7")]),
            Verdict::Allow
        );
        assert_eq!(head(&w, "GET", "/v1/../x%00", &[]), Verdict::Allow);
        let off: WafConfig = serde_json::from_str(r#"{"default_rules": false}"#).unwrap();
        assert!(Waf::new(&off).unwrap().is_empty());
        let on: WafConfig = serde_json::from_str("{}").unwrap();
        assert!(on.default_rules);
        assert!(!Waf::new(&on).unwrap().is_empty());
    }

    #[test]
    fn ip_allow_and_deny_with_v4_and_v6() {
        let mut admin = rule("admin-from-office", Action::Block);
        admin.ip_allow = vec!["10.0.0.0/8".into(), "2001:db8:1::/48".into(), "192.0.2.7".into()];
        admin.path = Some("/admin/**".into());
        let mut deny = rule("bad-nets", Action::Block);
        deny.ip_deny = vec!["198.51.100.0/24".into(), "2001:db8:dead::/48".into()];
        let w = waf(false, vec![admin, deny]);

        for client in ["10.1.2.3", "2001:db8:1:5::1", "192.0.2.7", "::ffff:10.9.9.9"] {
            assert_eq!(
                head_from(&w, client, "GET", "/admin/keys", &[]),
                Verdict::Allow,
                "{client}"
            );
        }
        for client in ["203.0.113.1", "2001:db8:2::1", "192.0.2.8"] {
            assert_eq!(
                head_from(&w, client, "GET", "/admin", &[]),
                blocked("admin-from-office"),
                "{client}"
            );
        }
        assert_eq!(
            head_from(&w, "203.0.113.1", "GET", "/v1/models", &[]),
            Verdict::Allow
        );
        for client in ["198.51.100.77", "2001:db8:dead:beef::1", "::ffff:198.51.100.1"] {
            assert_eq!(
                head_from(&w, client, "GET", "/v1/models", &[]),
                blocked("bad-nets"),
                "{client}"
            );
        }
        assert_eq!(
            head_from(&w, "198.51.101.1", "GET", "/v1/models", &[]),
            Verdict::Allow
        );
    }

    #[test]
    fn methods_and_path_globs() {
        let mut cancel = rule("no-cancel", Action::Block);
        cancel.methods = vec!["post".into()];
        cancel.path = Some("/v1/predictions/*/cancel".into());
        let mut v1 = rule("v1-delete", Action::Log);
        v1.methods = vec!["DELETE".into(), "PUT".into()];
        v1.path = Some("/v1/**".into());
        let mut mid = rule("mid", Action::Log);
        mid.path = Some("/a/**/z".into());
        let w = waf(false, vec![cancel, v1, mid]);

        assert_eq!(
            head(&w, "POST", "/v1/predictions/abc/cancel", &[]),
            blocked("no-cancel")
        );
        assert_eq!(head(&w, "GET", "/v1/predictions/abc/cancel", &[]), Verdict::Allow);
        assert_eq!(
            head(&w, "POST", "/v1/predictions/a/b/cancel", &[]),
            Verdict::Allow
        );
        assert_eq!(
            head(&w, "POST", "/v1/predictions/abc/cancel/x", &[]),
            Verdict::Allow
        );
        for uri in ["/v1", "/v1/", "/v1/predictions", "/v1/predictions/a/b/c?x=1"] {
            assert_eq!(head(&w, "DELETE", uri, &[]), logged(&["v1-delete"]), "{uri}");
        }
        assert_eq!(head(&w, "DELETE", "/v10/x", &[]), Verdict::Allow);
        assert_eq!(head(&w, "DELETE", "/v2/x", &[]), Verdict::Allow);
        for uri in ["/a/z", "/a/b/z", "/a/b/c/z"] {
            assert_eq!(head(&w, "GET", uri, &[]), logged(&["mid"]), "{uri}");
        }
        assert_eq!(head(&w, "GET", "/a/bz", &[]), Verdict::Allow);
        // Glob metacharacters other than `*` are literal.
        assert_eq!(glob_to_regex("/x.y/(z)").unwrap(), r"^/x\.y/\(z\)$");
    }

    #[test]
    fn header_regexes_are_case_insensitive() {
        let mut bot = rule("curl", Action::Block);
        bot.headers.insert("User-Agent".into(), "^curl/".into());
        let mut tenant = rule("tenant", Action::Log);
        tenant.headers.insert("x-tenant".into(), "^acme$".into());
        let w = waf(false, vec![bot, tenant]);
        assert_eq!(
            head(&w, "GET", "/", &[("user-agent", "CURL/8.5.0")]),
            blocked("curl")
        );
        assert_eq!(
            head(&w, "GET", "/", &[("user-agent", "curl/8.5.0")]),
            blocked("curl")
        );
        assert_eq!(
            head(&w, "GET", "/", &[("user-agent", "mycurl/1")]),
            Verdict::Allow
        );
        assert_eq!(head(&w, "GET", "/", &[]), Verdict::Allow);
        // Any one of several values matching is enough.
        assert_eq!(
            head(&w, "GET", "/", &[("x-tenant", "other"), ("X-Tenant", "ACME")]),
            logged(&["tenant"])
        );
    }

    #[test]
    fn body_regex_only_on_json_bodies() {
        let mut secret = rule("no-secrets", Action::Block);
        secret.body = Some(r#""api_key"\s*:"#.into());
        let w = waf(false, vec![secret]);
        assert!(w.needs_body());
        let json = br#"{"input": {"api_key": "x"}}"#;
        // Head checks never decide body rules.
        assert_eq!(head(&w, "POST", "/v1/predictions", &[]), Verdict::Allow);
        assert_eq!(body(&w, Some("application/json"), json), blocked("no-secrets"));
        assert_eq!(
            body(&w, Some("Application/JSON; charset=utf-8"), json),
            blocked("no-secrets")
        );
        assert_eq!(
            body(&w, Some("application/merge-patch+json"), json),
            blocked("no-secrets")
        );
        assert_eq!(
            body(&w, Some("application/json"), br#"{"input": {}}"#),
            Verdict::Allow
        );
        // Not JSON: not scanned.
        assert_eq!(
            body(&w, Some("text/plain"), br#"note: "api_key": 1"#),
            Verdict::Allow
        );
        assert_eq!(
            body(
                &w,
                Some("multipart/form-data; boundary=x"),
                b"--x\r\n\"api_key\": 1"
            ),
            Verdict::Allow
        );
        assert_eq!(body(&w, None, b"\x89PNG \"api_key\":"), Verdict::Allow);
        // JSON under another label (the API's JSON extractor reads it all the same): scanned.
        assert_eq!(body(&w, Some("text/plain"), json), blocked("no-secrets"));
        assert_eq!(body(&w, None, json), blocked("no-secrets"));
        // Escapes do not hide a match.
        assert_eq!(
            body(&w, Some("application/json"), br#"{"\u0061pi_key": "x"}"#),
            blocked("no-secrets")
        );
        assert_eq!(
            body(&w, Some("application/json"), br#"{"\\u0061pi_key": "x"}"#),
            Verdict::Allow
        );
    }

    #[test]
    fn unescaped_view_decodes_unicode_escapes() {
        assert_eq!(unescaped_view(b"{\"a\": 1}"), None);
        let v = unescaped_view(br#"["\u00e9\ud83d\ude00 \/ \u0022 \u005c \u000a \\u0041 \ud800x"]"#).unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            r#"["é😀 / \" \\ \u000a \\u0041 \ud800x"]"#
        );
    }

    #[test]
    fn conditions_combine_with_and() {
        let mut r = rule("all", Action::Block);
        r.ip_deny = vec!["10.0.0.0/8".into()];
        r.methods = vec!["POST".into()];
        r.path = Some("/v1/predictions".into());
        r.headers.insert("user-agent".into(), "bot".into());
        r.headers.insert("x-debug".into(), "1".into());
        r.body = Some("evil".into());
        let w = waf(false, vec![r]);
        let full = [
            ("user-agent", "a bot"),
            ("x-debug", "1"),
            ("content-type", "application/json"),
        ];
        let check = |client: &str, method: Method, uri: &str, headers: &[(&str, &str)], b: &[u8]| {
            let uri: Uri = uri.parse().unwrap();
            let headers = hdrs(headers);
            assert_eq!(w.check_head(ip(client), &method, &uri, &headers), Verdict::Allow);
            w.check_body(ip(client), &method, &uri, &headers, b)
        };
        let body = br#"{"x": "evil"}"#;
        assert_eq!(
            check("10.0.0.1", Method::POST, "/v1/predictions", &full, body),
            blocked("all")
        );
        assert_eq!(
            check("11.0.0.1", Method::POST, "/v1/predictions", &full, body),
            Verdict::Allow
        );
        assert_eq!(
            check("10.0.0.1", Method::GET, "/v1/predictions", &full, body),
            Verdict::Allow
        );
        assert_eq!(
            check("10.0.0.1", Method::POST, "/v1/models", &full, body),
            Verdict::Allow
        );
        assert_eq!(
            check("10.0.0.1", Method::POST, "/v1/predictions", &full[..1], body),
            Verdict::Allow
        );
        assert_eq!(
            check("10.0.0.1", Method::POST, "/v1/predictions", &full, b"{}"),
            Verdict::Allow
        );
    }

    #[test]
    fn block_wins_and_all_logs_are_reported() {
        let mut a = rule("log-a", Action::Log);
        a.path = Some("/v1/**".into());
        let mut b = rule("log-b", Action::Log);
        b.methods = vec!["GET".into()];
        let mut c = rule("block-c", Action::Block);
        c.headers.insert("x-block".into(), "yes".into());
        let w = waf(true, vec![a, b, c]);
        assert_eq!(head(&w, "GET", "/v1/models", &[]), logged(&["log-a", "log-b"]));
        assert_eq!(
            head(&w, "GET", "/v1/models", &[("x-block", "YES")]),
            blocked("block-c")
        );
        assert_eq!(head(&w, "GET", "/v1/.env", &[]), blocked("default.probe-path"));
        assert_eq!(head(&w, "POST", "/v2", &[]), Verdict::Allow);
    }

    #[test]
    fn counters_summarise_and_reset() {
        let mut l = rule("log-get", Action::Log);
        l.methods = vec!["GET".into()];
        let w = waf(true, vec![l]);
        for _ in 0..3 {
            head(&w, "GET", "/v1/models", &[]);
        }
        head(&w, "POST", "/.env", &[]);
        head(&w, "POST", "/.git/HEAD", &[]);
        head(&w, "GET", "/x", &[("user-agent", "sqlmap")]);
        // The blocked scanner request was a GET too, but a block is counted alone.
        let mut summary = w.take_summary();
        summary.sort();
        let expected: Vec<(Arc<str>, u64, u64)> = vec![
            (Arc::from("default.probe-path"), 2, 0),
            (Arc::from("default.scanner-user-agent"), 1, 0),
            (Arc::from("log-get"), 0, 3),
        ];
        assert_eq!(summary, expected);
        assert!(w.take_summary().is_empty());
        head(&w, "GET", "/v1/models", &[]);
        assert_eq!(w.take_summary(), vec![(Arc::from("log-get"), 0, 1)]);
        let totals: BTreeMap<String, (u64, u64)> = w
            .totals()
            .into_iter()
            .map(|(id, b, l)| (id.to_string(), (b, l)))
            .collect();
        assert_eq!(totals["log-get"], (0, 4));
        assert_eq!(totals["default.probe-path"], (2, 0));
        assert_eq!(totals["default.path-traversal"], (0, 0));
    }

    #[test]
    fn config_errors_name_the_rule_and_field() {
        let mut a = rule("dup", Action::Block);
        a.methods = vec!["GET".into()];
        let e = err(false, vec![a.clone(), a.clone()]);
        assert_eq!(e, "waf.rules[dup].id: duplicate rule id");

        let mut bad_re = rule("scanner-ua", Action::Block);
        bad_re.headers.insert("user-agent".into(), "(unclosed".into());
        let e = err(false, vec![bad_re]);
        assert!(
            e.starts_with("waf.rules[scanner-ua].headers.user-agent: regex parse error"),
            "{e}"
        );

        let mut bad_body = rule("b", Action::Log);
        bad_body.body = Some("[z-a]".into());
        assert!(err(false, vec![bad_body]).starts_with("waf.rules[b].body: regex parse error"));

        let mut huge = rule("huge", Action::Log);
        huge.body = Some(r"\w{1000}\w{1000}".into());
        assert!(err(false, vec![huge]).starts_with("waf.rules[huge].body: "));

        let mut bad_cidr = rule("nets", Action::Block);
        bad_cidr.ip_deny = vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()];
        assert_eq!(
            err(false, vec![bad_cidr]),
            r#"waf.rules[nets].ip_deny[1]: "10.0.0.0/33" is not an IP address or CIDR network"#
        );
        let mut bad_allow = rule("allow", Action::Block);
        bad_allow.ip_allow = vec!["office".into()];
        assert!(err(false, vec![bad_allow]).starts_with("waf.rules[allow].ip_allow[0]: "));

        let e = err(false, vec![rule("empty", Action::Block)]);
        assert!(e.starts_with("waf.rules[empty]: sets no condition"), "{e}");
        let mut empty_lists = rule("lists", Action::Block);
        empty_lists.methods = vec![];
        assert!(err(false, vec![empty_lists]).contains("sets no condition"));

        for id in ["", "has space", "x".repeat(65).as_str(), "emoji😀", "a/b"] {
            let mut r = rule(id, Action::Block);
            r.methods = vec!["GET".into()];
            let e = err(false, vec![a.clone(), r]);
            assert!(e.starts_with("waf.rules[1].id: "), "{e}");
        }
        let mut ok = rule(&"A-z_0.9".repeat(10)[..64], Action::Block);
        ok.methods = vec!["GET".into()];
        assert!(Waf::new(&WafConfig {
            default_rules: true,
            rules: vec![ok]
        })
        .is_ok());

        let mut reserved = rule("default.mine", Action::Block);
        reserved.methods = vec!["GET".into()];
        assert!(err(true, vec![reserved]).starts_with("waf.rules[default.mine].id: "));

        let mut method = rule("m", Action::Block);
        method.methods = vec!["GE T".into()];
        assert!(err(false, vec![method]).starts_with("waf.rules[m].methods[0]: "));
        let mut glob = rule("g", Action::Block);
        glob.path = Some("v1/**".into());
        assert!(err(false, vec![glob]).starts_with("waf.rules[g].path: "));
        let mut glob = rule("g", Action::Block);
        glob.path = Some("/v1/a**".into());
        assert!(err(false, vec![glob]).starts_with("waf.rules[g].path: "));
        let mut header = rule("h", Action::Block);
        header.headers.insert("bad header".into(), "x".into());
        assert!(err(false, vec![header]).starts_with("waf.rules[h].headers.bad header: "));
        let mut twice = rule("t", Action::Block);
        twice.headers.insert("X-A".into(), "x".into());
        twice.headers.insert("x-a".into(), "y".into());
        assert!(err(false, vec![twice]).starts_with("waf.rules[t].headers.x-a: "));
    }

    #[test]
    fn config_reads_from_toml_and_rejects_unknown_keys() {
        use figment::providers::{Format, Toml};
        let toml = r#"
            default_rules = true
            [[rules]]
            id = "office-only-admin"
            action = "block"
            ip_allow = ["10.0.0.0/8"]
            path = "/admin/**"
            [[rules]]
            id = "scanner-ua"
            action = "log"
            headers = { user-agent = "zmeu" }
        "#;
        let cfg: WafConfig = figment::Figment::from(Toml::string(toml)).extract().unwrap();
        assert_eq!(cfg.rules.len(), 2);
        assert_eq!(cfg.rules[1].action, Action::Log);
        let w = Waf::new(&cfg).unwrap();
        assert_eq!(
            head(&w, "GET", "/x", &[("user-agent", "ZmEu")]),
            logged(&["scanner-ua"])
        );

        let bad = "[[rules]]\nid = \"x\"\naction = \"block\"\nmethod = [\"GET\"]\n";
        let e = figment::Figment::from(Toml::string(bad))
            .extract::<WafConfig>()
            .unwrap_err();
        assert!(e.to_string().contains("method"), "{e}");
        let bad = "[[rules]]\nid = \"x\"\naction = \"deny\"\n";
        assert!(figment::Figment::from(Toml::string(bad))
            .extract::<WafConfig>()
            .is_err());
    }

    #[test]
    fn large_bodies_and_pathological_patterns_stay_linear() {
        let mut rules = Vec::new();
        for (i, re) in [r"(a|aa)*b", r"(x+x+)+y", r"(\w+\s?)+\$", r"(?i)(.*a){20}"]
            .iter()
            .enumerate()
        {
            let mut r = rule(&format!("slow-{i}"), Action::Block);
            r.body = Some((*re).into());
            rules.push(r);
        }
        let w = waf(true, rules);
        let mut big = b"{\"prompt\": \"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 1 << 20));
        big.extend_from_slice(b"\"}");
        let mut aas = b"{\"prompt\": \"".to_vec();
        aas.extend(std::iter::repeat_n(b'a', 1 << 20));
        aas.extend_from_slice(b"\\u0041\"}");
        let start = Instant::now();
        assert_eq!(body(&w, Some("application/json"), &big), Verdict::Allow);
        assert_eq!(body(&w, Some("application/json"), &aas), blocked("slow-3"));
        let elapsed = start.elapsed();
        assert!(
            elapsed < Duration::from_secs(2),
            "two 1 MiB bodies took {elapsed:?}"
        );

        let long_ua = "a".repeat(64 * 1024);
        let start = Instant::now();
        assert_eq!(
            head(&w, "GET", "/v1/models", &[("user-agent", &long_ua)]),
            Verdict::Allow
        );
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
