//! Where a query metric's numbers come from: the metrics providers a `source` names
//! (`prometheus`, `datadog`, `newrelic`, `cloudwatch`, `http`, `command`), their
//! connection settings under
//! `analysis:`, and the JSON paths that pick a number out of an answer.
//!
//! Owns the design every provider adapter follows:
//! - A metric's `source` picks the provider; the provider's connection settings live
//!   once under `analysis.<provider>` (`analysis.datadog: {site}`), its query text on
//!   the metric (`query`, `samples`, `bad`/`good` + `total`). For `http` and
//!   `command`, which fetch a document rather than run a query, the metric holds the
//!   fetch (`url` + `headers`, or `command`) and the query texts are JSON paths into
//!   the one document fetched per variant (`value`, `samples`, `bad`/`good` + `total`).
//! - Placeholders `{service}`, `{variant}`, `{version}`, `{interval}`, `{from}` and
//!   `{to}` (unix seconds) are filled per variant and interval by the adapter.
//! - Secrets are never in the policy: it names environment variables (`api_key_env`,
//!   `{env:NAME}` in a header), read by the adapter where `rampart run` runs. A
//!   missing one fails the pre-release check, before any traffic moves; it is not a
//!   policy error, because `rampart validate` is pure and runs where secrets are not
//!   (a CI lint job).
//! - Everything that can be wrong in the file itself (an unknown site, a malformed
//!   region, an unparseable JSON path, an empty command, a secret in a URL) is refused
//!   here, at its line.
//!
//! It must not read the environment, the network or the clock; adapters do.

use super::values::{decode_argv, decode_url};
use crate::decode::{Decoder, MapReader, list, one_of, scalar};
use crate::units::format_duration;
use crate::yaml::{Node, NodeKind};

/// The provider a query metric reads, with what the metric itself says about how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuerySource {
    /// PromQL over `analysis.prometheus`.
    Prometheus,
    /// A Datadog metrics query over `analysis.datadog`.
    Datadog,
    /// NRQL through New Relic's NerdGraph over `analysis.newrelic`.
    NewRelic,
    /// A CloudWatch metric math or Metrics Insights expression, read with
    /// GetMetricData over `analysis.cloudwatch`.
    CloudWatch,
    /// A JSON document from an HTTP GET; the query texts are JSON paths into it.
    Http(HttpFetch),
    /// A program's output (a number, or JSON); the query texts are JSON paths into it.
    Command(CommandFetch),
}

impl QuerySource {
    /// The policy's spelling (`source: ...`).
    pub fn id(&self) -> &'static str {
        match self {
            QuerySource::Prometheus => "prometheus",
            QuerySource::Datadog => "datadog",
            QuerySource::NewRelic => "newrelic",
            QuerySource::CloudWatch => "cloudwatch",
            QuerySource::Http(_) => "http",
            QuerySource::Command(_) => "command",
        }
    }

    /// How people name it (runbooks, the dashboard).
    pub fn label(&self) -> &'static str {
        match self {
            QuerySource::Prometheus => "Prometheus",
            QuerySource::Datadog => "Datadog",
            QuerySource::NewRelic => "New Relic",
            QuerySource::CloudWatch => "CloudWatch",
            QuerySource::Http(_) => "HTTP",
            QuerySource::Command(_) => "command",
        }
    }

    /// Whether its query texts are JSON paths into a fetched document (`http`,
    /// `command`) rather than queries a server runs.
    pub fn fetches(&self) -> bool {
        matches!(self, QuerySource::Http(_) | QuerySource::Command(_))
    }
}

/// Every `source` a metric may name.
pub(super) const SOURCES: &[&str] = &[
    "builtin",
    "prometheus",
    "datadog",
    "newrelic",
    "cloudwatch",
    "http",
    "command",
];

/// An `http` metric's request: GET `url`, once per variant and interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpFetch {
    /// `http://` or `https://` URL with placeholders; never a secret (URLs show up in
    /// errors and logs).
    pub url: String,
    /// Header names and value templates; `{env:NAME}` in a value is the environment
    /// variable `NAME`, read where rampart runs.
    pub headers: Vec<(String, String)>,
}

impl HttpFetch {
    /// The environment variables its headers read, in order.
    pub fn env_vars(&self) -> Vec<String> {
        self.headers.iter().flat_map(|(_, v)| env_refs(v)).collect()
    }
}

/// A `command` metric's program, run once per variant and interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandFetch {
    /// Program and arguments, with placeholders. No shell is involved unless the
    /// program is one.
    pub argv: Vec<String>,
}

/// `analysis.datadog`: where Datadog is and which keys to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatadogSpec {
    /// The Datadog site (`datadoghq.com`, `datadoghq.eu`, `us5.datadoghq.com`, ...).
    pub site: String,
    /// The API's base URL: `url` when given (a proxy, a test fake), else
    /// `https://api.<site>`.
    pub url: String,
    /// Which query API: v1 `GET /api/v1/query` or v2 `POST /api/v2/query/timeseries`.
    pub api: DatadogApi,
    /// The environment variable holding the API key (`DD_API_KEY`).
    pub api_key_env: String,
    /// The environment variable holding the application key (`DD_APP_KEY`).
    pub app_key_env: String,
}

impl Default for DatadogSpec {
    /// Datadog's US1 site, the v1 API, keys from `DD_API_KEY` and `DD_APP_KEY`.
    fn default() -> Self {
        DatadogSpec {
            site: "datadoghq.com".into(),
            url: datadog_endpoint("datadoghq.com"),
            api: DatadogApi::V1,
            api_key_env: DATADOG_KEY_VARS.0.into(),
            app_key_env: DATADOG_KEY_VARS.1.into(),
        }
    }
}

/// Datadog's API in `site`: `https://api.<site>`.
pub fn datadog_endpoint(site: &str) -> String {
    format!("https://api.{site}")
}

/// The variables Datadog's API and application keys are read from by default.
pub const DATADOG_KEY_VARS: (&str, &str) = ("DD_API_KEY", "DD_APP_KEY");

/// New Relic's regions (`analysis.newrelic.region`).
pub const NEWRELIC_REGIONS: [&str; 2] = ["us", "eu"];

/// NerdGraph's base URL in `region` (`us` for any other).
pub fn newrelic_endpoint(region: &str) -> &'static str {
    match region {
        "eu" => "https://api.eu.newrelic.com",
        _ => "https://api.newrelic.com",
    }
}

/// The variable New Relic's user API key is read from by default.
pub const NEWRELIC_KEY_VAR: &str = "NEW_RELIC_API_KEY";

/// Datadog's two metrics query APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatadogApi {
    /// `GET /api/v1/query`: `series[].pointlist`.
    V1,
    /// `POST /api/v2/query/timeseries`: `data.attributes.series` and `values`.
    V2,
}

/// `analysis.newrelic`: the account NRQL runs in, and the key to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRelicSpec {
    /// The account id NRQL queries run in.
    pub account_id: u64,
    /// NerdGraph's base URL: `url` when given, else by region
    /// (`https://api.newrelic.com`, `https://api.eu.newrelic.com`); `/graphql` follows.
    pub url: String,
    /// The environment variable holding the user API key (`NEW_RELIC_API_KEY`).
    pub api_key_env: String,
}

/// `analysis.cloudwatch`: the region GetMetricData is asked in, and how finely.
/// Credentials are not here: the adapter reads them where `rampart run` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudWatchSpec {
    /// The AWS region (`us-east-1`): the endpoint's, and the signature's scope.
    pub region: String,
    /// The endpoint's base URL: `url` when given (a VPC endpoint, a test fake), else
    /// [`cloudwatch_endpoint`] of the region.
    pub url: String,
    /// The datapoints' period in seconds (`Period` of each query): 1, 5, 10, 20, 30
    /// or a multiple of 60.
    pub period: u32,
    /// How far behind the interval each window is read: CloudWatch publishes a
    /// period's datapoints a minute or more after it ends, and a window is read only
    /// once, so a window read at its end would miss what had not arrived yet.
    /// Default two minutes.
    pub delay: std::time::Duration,
}

/// [`CloudWatchSpec::delay`] when the policy does not set it.
pub const CLOUDWATCH_DELAY: std::time::Duration = std::time::Duration::from_secs(120);

impl CloudWatchSpec {
    /// The boundary, in seconds, CloudWatch rounds a window's start down to: the
    /// period itself for 5, 10, 20 and 30 s (divisions of a minute) and for whole
    /// minutes, but a whole minute for 1 s periods (AWS documents sub-minute rounding
    /// for 5 to 30 s only, so a 1 s window is taken to start at its minute).
    pub fn alignment(&self) -> u32 {
        cloudwatch_alignment(self.period)
    }
}

/// Whether CloudWatch serves datapoints of `period` seconds: 1, 5, 10, 20, 30 or a
/// multiple of 60.
pub fn cloudwatch_period(period: u64) -> bool {
    matches!(period, 1 | 5 | 10 | 20 | 30) || (period > 0 && period.is_multiple_of(60))
}

/// [`CloudWatchSpec::alignment`] of `period`.
pub fn cloudwatch_alignment(period: u32) -> u32 {
    if period < 5 { 60 } else { period }
}

/// CloudWatch's endpoint in `region`: `https://monitoring.REGION.amazonaws.com`, or
/// `.amazonaws.com.cn` in the China regions.
pub fn cloudwatch_endpoint(region: &str) -> String {
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://monitoring.{region}.{domain}")
}

/// Whether `name` is spelled like an AWS region: a two-letter area, one or more
/// lower-case words, and a number (`us-east-1`, `ap-southeast-4`, `us-gov-west-1`).
pub fn aws_region(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    let [area, words @ .., number] = parts.as_slice() else {
        return false;
    };
    area.len() == 2
        && area.chars().all(|c| c.is_ascii_lowercase())
        && !words.is_empty()
        && words
            .iter()
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()))
        && !number.is_empty()
        && number.len() <= 2
        && number.chars().all(|c| c.is_ascii_digit())
}

/// The Datadog sites, as Datadog names them.
pub const DATADOG_SITES: &[&str] = &[
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "uk1.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
];

/// Placeholders a query, URL or command may hold.
pub const PLACEHOLDERS: &[&str] = &[
    "{service}",
    "{variant}",
    "{version}",
    "{interval}",
    "{from}",
    "{to}",
];

/// A JSON path into a document: `$`, then `.key`, `["key"]` or `[index]` steps (a
/// negative index counts from the end: `[-1]` is the last element).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValuePath(pub Vec<PathStep>);

/// One step of a [`ValuePath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathStep {
    /// An object's field.
    Key(String),
    /// A list's element; negative counts from the end.
    Index(i64),
}

impl ValuePath {
    /// Parses `$.data.series[0]["value"]`; says what is wrong otherwise.
    pub fn parse(text: &str) -> Result<ValuePath, String> {
        let rest = text.trim().strip_prefix('$').ok_or_else(|| {
            format!("`{text}` is not a JSON path: start it with `$`, like `$.data.value` or `$.values[-1]`")
        })?;
        let mut steps = Vec::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '.' => {
                    let mut key = String::new();
                    while let Some((_, c)) = chars.peek() {
                        if c.is_alphanumeric() || *c == '_' || *c == '-' {
                            key.push(*c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    if key.is_empty() {
                        return Err(format!(
                            "`{text}`: a `.` at {} names no field; quote unusual names: `[\"a.b\"]`",
                            i + 1
                        ));
                    }
                    steps.push(PathStep::Key(key));
                }
                '[' => {
                    let close = rest[i..]
                        .find(']')
                        .ok_or_else(|| format!("`{text}`: the `[` at {} is never closed", i + 1))?;
                    let inner = &rest[i + 1..i + close];
                    steps.push(bracket(text, inner)?);
                    // `close` is a byte offset: skip the characters up to and
                    // including the `]`, however many bytes each takes.
                    while chars.next_if(|(j, _)| *j <= i + close).is_some() {}
                }
                other => {
                    return Err(format!(
                        "`{text}`: unexpected `{other}` at {}; steps are `.field`, `[\"field\"]` or `[index]`",
                        i + 1
                    ));
                }
            }
        }
        Ok(ValuePath(steps))
    }
}

/// The step inside `[...]`: a quoted key or a whole number.
fn bracket(text: &str, inner: &str) -> Result<PathStep, String> {
    let inner = inner.trim();
    for q in ['"', '\''] {
        if let Some(key) = inner.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return Ok(PathStep::Key(key.to_string()));
        }
    }
    inner.parse::<i64>().map(PathStep::Index).map_err(|_| {
        format!("`{text}`: `[{inner}]` is neither an index like `[0]` nor a quoted field like `[\"name\"]`")
    })
}

/// A JSON path field (`value`, `samples`, `bad`, `good`, `total` of an `http` or
/// `command` metric), checked but kept as written.
pub(super) fn decode_value_path(cx: &mut Decoder, n: &Node, p: &str) -> Option<String> {
    let text = scalar(cx, n, p, "a JSON path like `$.data.value`")?;
    match ValuePath::parse(text) {
        Ok(_) => Some(text.trim().to_string()),
        Err(why) => {
            cx.error(n.pos, p, why);
            None
        }
    }
}

/// A metric's `url` (for `source: http`): a URL whose only `{...}` are placeholders,
/// with no secret in it.
pub(super) fn decode_url_template(cx: &mut Decoder, n: &Node, p: &str) -> Option<String> {
    let url = decode_url(cx, n, p)?;
    super::values::refuse_userinfo(cx, n, p, &url)?;
    if !env_refs(&url).is_empty() {
        cx.error(
            n.pos,
            p,
            "a URL is shown in errors and logs, so it cannot carry a secret; send it in a header: `headers: {Authorization: \"Bearer {env:TOKEN}\"}`",
        );
        return None;
    }
    if let Some(unknown) = unknown_placeholder(&url) {
        cx.error(
            n.pos,
            p,
            format!(
                "`{unknown}` is not a placeholder; use {}",
                list(PLACEHOLDERS)
            ),
        );
        return None;
    }
    Some(url)
}

/// A metric's `headers`: names as HTTP allows them, values whose only `{...}` are
/// `{env:NAME}` references.
pub(super) fn decode_headers(cx: &mut Decoder, n: &Node, p: &str) -> Option<Vec<(String, String)>> {
    let NodeKind::Map(entries) = &n.kind else {
        cx.error(
            n.pos,
            p,
            format!(
                "expected a mapping of header names to values, found {}",
                n.type_name()
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    for (key, value) in entries {
        let path = crate::decode::join(p, &key.text);
        let token = !key.text.is_empty()
            && key
                .text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
        if !token {
            cx.error(
                key.pos,
                &path,
                format!("`{}` is not an HTTP header name", key.text),
            );
            continue;
        }
        let Some(text) = scalar(cx, value, &path, "a header value") else {
            continue;
        };
        let bad_ref = braces(text).into_iter().find(|inner| {
            inner
                .strip_prefix("env:")
                .is_none_or(|name| !env_name(name))
        });
        if let Some(inner) = bad_ref {
            cx.error(
                value.pos,
                &path,
                format!("`{{{inner}}}`: a header value's only placeholder is `{{env:NAME}}`, an environment variable (letters, digits and `_`)"),
            );
            continue;
        }
        out.push((key.text.clone(), text.to_string()));
    }
    Some(out)
}

/// An environment variable's *name* (`api_key_env: DD_API_KEY`); never its value.
pub(super) fn decode_env_name(cx: &mut Decoder, n: &Node, p: &str) -> Option<String> {
    let name = scalar(cx, n, p, "an environment variable name")?;
    if !env_name(name) {
        cx.error(
            n.pos,
            p,
            // Not echoed: it may be a secret pasted where its variable's name belongs.
            "this is not an environment variable name; give the variable's name (letters, digits and `_`), never the secret itself",
        );
        return None;
    }
    Some(name.to_string())
}

/// A `command` metric's program: a non-empty list.
pub(super) fn decode_command(cx: &mut Decoder, n: &Node, p: &str) -> Option<CommandFetch> {
    decode_argv(cx, n, p).map(|argv| CommandFetch { argv })
}

/// `analysis.datadog: {site, url, api, api_key_env, app_key_env}`.
pub(super) fn decode_datadog(cx: &mut Decoder, n: &Node, p: &str) -> Option<DatadogSpec> {
    let m = cx.map(n, p, &["site", "url", "api", "api_key_env", "app_key_env"])?;
    let site = m
        .optional_with(cx, "site", |cx, n, p| one_of(cx, n, p, DATADOG_SITES))
        .unwrap_or("datadoghq.com");
    let url = m.optional_with(cx, "url", super::values::decode_base_url);
    let api = match m.optional_with(cx, "api", |cx, n, p| one_of(cx, n, p, &["v1", "v2"])) {
        Some("v2") => DatadogApi::V2,
        _ => DatadogApi::V1,
    };
    let env = |cx: &mut Decoder, m: &MapReader<'_>, key: &str, default: &str| {
        m.optional_with(cx, key, decode_env_name)
            .unwrap_or_else(|| default.to_string())
    };
    let api_key_env = env(cx, &m, "api_key_env", DATADOG_KEY_VARS.0);
    let app_key_env = env(cx, &m, "app_key_env", DATADOG_KEY_VARS.1);
    Some(DatadogSpec {
        site: site.to_string(),
        url: url.unwrap_or_else(|| datadog_endpoint(site)),
        api,
        api_key_env,
        app_key_env,
    })
}

/// `analysis.newrelic: {account_id, region, url, api_key_env}`.
pub(super) fn decode_newrelic(cx: &mut Decoder, n: &Node, p: &str) -> Option<NewRelicSpec> {
    let m = cx.map(n, p, &["account_id", "region", "url", "api_key_env"])?;
    let account_id = m.required::<u64>(cx, "account_id");
    if account_id == Some(0) {
        cx.error(
            m.get("account_id").map_or(m.pos(), |n| n.pos),
            &m.path_of("account_id"),
            "0 is not a New Relic account id; it is the number in the account's URLs",
        );
    }
    let region = m
        .optional_with(cx, "region", |cx, n, p| one_of(cx, n, p, &NEWRELIC_REGIONS))
        .unwrap_or("us");
    let url = m.optional_with(cx, "url", super::values::decode_base_url);
    let api_key_env = m
        .optional_with(cx, "api_key_env", decode_env_name)
        .unwrap_or_else(|| NEWRELIC_KEY_VAR.to_string());
    let url = url.unwrap_or_else(|| newrelic_endpoint(region).to_string());
    Some(NewRelicSpec {
        account_id: account_id.filter(|id| *id > 0)?,
        url,
        api_key_env,
    })
}

/// `analysis.cloudwatch: {region, url, period}`.
pub(super) fn decode_cloudwatch(cx: &mut Decoder, n: &Node, p: &str) -> Option<CloudWatchSpec> {
    let m = cx.map(n, p, &["region", "url", "period", "delay"])?;
    let region = m.required_with(cx, "region", |cx, n, p| {
        let region = scalar(cx, n, p, "an AWS region like `us-east-1`")?;
        if aws_region(region) {
            return Some(region.to_string());
        }
        cx.error(
            n.pos,
            p,
            format!("`{region}` is not an AWS region; write it the way AWS does, like `us-east-1`, `eu-central-1` or `ap-southeast-2`"),
        );
        None
    });
    let url = m.optional_with(cx, "url", super::values::decode_base_url);
    let period = m.optional::<u32>(cx, "period").unwrap_or(60);
    if !cloudwatch_period(u64::from(period)) {
        cx.error(
            m.get("period").map_or(m.pos(), |n| n.pos),
            &m.path_of("period"),
            format!("CloudWatch takes a period of 1, 5, 10, 20, 30 or a multiple of 60 seconds, not {period}"),
        );
    }
    let delay = m
        .optional::<std::time::Duration>(cx, "delay")
        .unwrap_or(CLOUDWATCH_DELAY);
    if delay > super::values::HOUR {
        cx.error(
            m.get("delay").map_or(m.pos(), |n| n.pos),
            &m.path_of("delay"),
            format!(
                "{} is too long; at most 1h (every verdict would wait that long for its data)",
                format_duration(delay)
            ),
        );
    }
    let region = region?;
    Some(CloudWatchSpec {
        url: url.unwrap_or_else(|| cloudwatch_endpoint(&region)),
        region,
        period,
        delay,
    })
}

/// The periods, in seconds, the `SEARCH(...)` calls in a CloudWatch expression ask
/// for: each call's third argument where it is a whole number. Quoted text (the
/// search's own `'...'` and `"..."`, with `\` escapes) is skipped, so a `SEARCH(`
/// or a comma inside a search string is not taken for one.
pub fn search_periods(expression: &str) -> Vec<u64> {
    let chars: Vec<char> = expression.chars().collect();
    let mut periods = Vec::new();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            i += 1;
            continue;
        }
        let word_start = i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '_');
        let is_search = word_start
            && chars.len() >= i + 6
            && chars[i..i + 6]
                .iter()
                .collect::<String>()
                .eq_ignore_ascii_case("search");
        if !is_search {
            i += 1;
            continue;
        }
        let mut j = i + 6;
        while chars.get(j).is_some_and(|c| c.is_whitespace()) {
            j += 1;
        }
        if chars.get(j) != Some(&'(') {
            i += 6;
            continue;
        }
        // The call's top-level arguments, up to its closing parenthesis.
        let mut args = vec![String::new()];
        let mut depth = 0usize;
        let mut inner: Option<char> = None;
        j += 1;
        while let Some(&c) = chars.get(j) {
            j += 1;
            if let Some(q) = inner {
                if c == '\\' {
                    j += 1;
                } else if c == q {
                    inner = None;
                }
                continue;
            }
            match c {
                '\'' | '"' => inner = Some(c),
                '(' => depth += 1,
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    args.push(String::new());
                    continue;
                }
                _ => {}
            }
            if let Some(last) = args.last_mut() {
                last.push(c);
            }
        }
        if let Some(period) = args.get(2).and_then(|a| a.trim().parse::<u64>().ok()) {
            periods.push(period);
        }
        i += 6;
    }
    periods
}

/// Whether `name` can name an environment variable: letters, digits and `_`, not
/// starting with a digit.
fn env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The text inside each `{...}` of `text`.
fn braces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    out
}

/// The environment variables `{env:NAME}` references in `text` name.
pub fn env_refs(text: &str) -> Vec<String> {
    braces(text)
        .into_iter()
        .filter_map(|inner| inner.strip_prefix("env:"))
        .map(str::to_string)
        .collect()
}

/// The first `{...}` in `text` that is not a placeholder.
fn unknown_placeholder(text: &str) -> Option<String> {
    braces(text)
        .into_iter()
        .map(|inner| format!("{{{inner}}}"))
        .find(|p| !PLACEHOLDERS.contains(&p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_parse_or_say_why() {
        use PathStep::{Index, Key};
        let ok = |t: &str| ValuePath::parse(t).unwrap().0;
        assert_eq!(ok("$"), vec![]);
        assert_eq!(
            ok("$.data.series[0][\"point-list\"][-1]"),
            vec![
                Key("data".into()),
                Key("series".into()),
                Index(0),
                Key("point-list".into()),
                Index(-1)
            ]
        );
        assert_eq!(ok("$['a.b']"), vec![Key("a.b".into())]);
        for (bad, says) in [
            ("data.value", "start it with `$`"),
            ("$.", "names no field"),
            ("$[0", "never closed"),
            ("$[x]", "neither an index"),
            ("$ value", "unexpected ` `"),
        ] {
            let e = ValuePath::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// The parser once skipped a bracket's length in bytes as if it were characters:
    /// `$["日"].a.b` lost its `.a`, and `$["é"].x` was refused.
    #[test]
    fn a_non_ascii_bracket_key_keeps_the_steps_after_it() {
        use PathStep::{Index, Key};
        let ok = |t: &str| ValuePath::parse(t).unwrap().0;
        assert_eq!(
            ok(r#"$["日"].a.b"#),
            vec![Key("日".into()), Key("a".into()), Key("b".into())]
        );
        assert_eq!(ok(r#"$["é"].x"#), vec![Key("é".into()), Key("x".into())]);
        assert_eq!(
            ok(r#"$['größe'][1]["ü"]"#),
            vec![Key("größe".into()), Index(1), Key("ü".into())]
        );
    }

    #[test]
    fn placeholders_and_env_references() {
        assert_eq!(
            env_refs("Bearer {env:TOKEN} {env:X_2}"),
            vec!["TOKEN", "X_2"]
        );
        assert_eq!(unknown_placeholder("http://h/{variant}?t={to}"), None);
        assert_eq!(
            unknown_placeholder("http://h/{varient}").as_deref(),
            Some("{varient}")
        );
        assert!(env_name("DD_API_KEY") && !env_name("1X") && !env_name("a-b"));
    }

    #[test]
    fn aws_regions_are_spelled_like_aws_spells_them() {
        for ok in [
            "us-east-1",
            "eu-central-2",
            "ap-southeast-4",
            "us-gov-west-1",
            "cn-northwest-1",
            "il-central-1",
        ] {
            assert!(aws_region(ok), "{ok}");
        }
        for bad in [
            "",
            "us-east",
            "useast1",
            "US-EAST-1",
            "us-east-1a",
            "us_east_1",
            "east-1",
            "us--1",
            "us-east-100",
            "monitoring.us-east-1.amazonaws.com",
        ] {
            assert!(!aws_region(bad), "{bad}");
        }
        assert_eq!(
            cloudwatch_endpoint("eu-west-1"),
            "https://monitoring.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            cloudwatch_endpoint("cn-north-1"),
            "https://monitoring.cn-north-1.amazonaws.com.cn"
        );
    }
}
