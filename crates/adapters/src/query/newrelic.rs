//! The `newrelic` metrics provider: a metric's NRQL, run for each variant through
//! NerdGraph (`POST /graphql`, `actor { account(id) { nrql(query) { results } } }`)
//! with the user API key from the environment in the `API-Key` header.
//!
//! Owns the GraphQL request (the account id and the NRQL as variables, never spliced
//! into the document), the window (`SINCE <from ms> UNTIL <to ms>` appended on a line
//! of its own to NRQL that names no `SINCE` or `UNTIL` outside its strings and
//! comments), and reading one number out of `results`. It must not send the key
//! anywhere but that header.

use std::sync::Arc;

use rampart_core::policy::{NewRelicSpec, QuerySpec};
use rampart_core::ports::{BoxFuture, Clock};
use serde_json::{Value, json};

use super::fetch::{self, Request};
use super::{Ask, QueryProvider, ReadError, Reading, Secret, number, said};

const NAME: &str = "New Relic";

/// The NRQL query NerdGraph runs; `$id` and `$nrql` are variables.
const NRQL: &str = "query($id: Int!, $nrql: Nrql!) { actor { account(id: $id) { nrql(query: $nrql) { results } } } }";
/// The pre-release check: the key can see the account.
const ACCOUNT: &str = "query($id: Int!) { actor { account(id: $id) { id } } }";

/// NerdGraph, for one account, with its key.
pub struct NewRelic {
    url: String,
    account_id: u64,
    api_key: Result<Secret, String>,
    quiet: fetch::Quiet,
}

impl std::fmt::Debug for NewRelic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRelic")
            .field("url", &self.url)
            .field("account_id", &self.account_id)
            .field("api_key", &self.api_key)
            .field("quiet", &self.quiet)
            .finish()
    }
}

impl NewRelic {
    /// New Relic as `spec` says, with its key read from `env` now; the waits it asks
    /// for are kept on `clock`'s time.
    pub fn new(
        spec: &NewRelicSpec,
        env: &dyn Fn(&str) -> Option<String>,
        clock: Arc<dyn Clock>,
    ) -> NewRelic {
        NewRelic {
            url: spec.url.clone(),
            account_id: spec.account_id,
            api_key: Secret::from_env(&spec.api_key_env, env).map_err(|e| e.to_string()),
            quiet: fetch::Quiet::new(clock),
        }
    }

    /// Runs a GraphQL document with `variables`; returns `data`, or why not.
    async fn graphql(
        &self,
        document: &str,
        variables: Value,
        budget: &super::Budget,
    ) -> Result<Value, ReadError> {
        let key = self
            .api_key
            .as_ref()
            .map_err(|e| ReadError::Other(e.clone()))?;
        let req = Request {
            provider: NAME,
            method: "POST",
            url: format!("{}/graphql", self.url),
            body: Some(json!({"query": document, "variables": variables}).to_string()),
            headers: vec![("API-Key", key.expose().to_string())],
            secrets: vec![key],
            sign: None,
            throttled: None,
        };
        let mut answer = fetch::json(&req, budget, &self.quiet).await?;
        // GraphQL reports failures (a bad query, an account the key cannot see) in
        // `errors`, often with a 200.
        if let Some(first) = answer["errors"].as_array().and_then(|e| e.first()) {
            let message = first["message"].as_str().unwrap_or("no message");
            let why = said(message, &[key]);
            // NerdGraph's classes for a time limit or a failure on its side, which
            // its own client retries: no answer for now, not a refusal.
            let class = first["extensions"]["errorClass"]
                .as_str()
                .unwrap_or_default();
            if matches!(class, "TIMEOUT" | "INTERNAL_SERVER_ERROR" | "SERVER_ERROR") {
                return Err(ReadError::Other(format!("New Relic: {why}")));
            }
            return Err(ReadError::Refused {
                provider: NAME,
                why,
            });
        }
        Ok(answer["data"].take())
    }

    async fn one(&self, nrql: &str, ask: &Ask) -> Result<f64, ReadError> {
        let nrql = windowed(&ask.fill(nrql, str::to_string), ask);
        let data = self
            .graphql(
                NRQL,
                json!({"id": self.account_id, "nrql": nrql}),
                &ask.budget,
            )
            .await?;
        let secrets: Vec<&Secret> = self.api_key.iter().collect();
        value_of(&data["actor"]["account"]["nrql"]["results"], &secrets)
    }
}

/// `nrql` over `ask`'s window, unless it names its own. The window goes on a line of
/// its own: after a `--` or `//` comment ending the query, on its line it would be
/// part of the comment, and NRQL would read its default hour.
fn windowed(nrql: &str, ask: &Ask) -> String {
    if names_its_own_window(nrql) {
        return nrql.to_string();
    }
    format!("{nrql}\nSINCE {} UNTIL {}", ask.from, ask.to)
}

/// Whether `nrql` has a `SINCE` or `UNTIL` clause of its own: the keyword as a word
/// outside quoted strings, backquoted names and comments (`timeSinceLoad`,
/// `appName = 'since-v2'`, `-- counted since v2` are not one).
fn names_its_own_window(nrql: &str) -> bool {
    code_of(nrql)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| w.eq_ignore_ascii_case("since") || w.eq_ignore_ascii_case("until"))
}

/// `nrql` with every quoted string, backquoted name and comment (`-- ...` and
/// `// ...` to the end of the line, `/* ... */`) replaced by a space: the words
/// left are the query's own. A backslash in a quoted string escapes the next
/// character (`'Bob\'s'`).
fn code_of(nrql: &str) -> String {
    #[derive(Clone, Copy)]
    enum In {
        Code,
        Quote(char),
        LineComment,
        BlockComment,
    }
    let mut out = String::with_capacity(nrql.len());
    let mut state = In::Code;
    let mut chars = nrql.chars().peekable();
    while let Some(c) = chars.next() {
        match state {
            In::Code => match (c, chars.peek()) {
                ('\'' | '"' | '`', _) => {
                    state = In::Quote(c);
                    out.push(' ');
                }
                ('-', Some('-')) | ('/', Some('/')) => {
                    chars.next();
                    state = In::LineComment;
                    out.push(' ');
                }
                ('/', Some('*')) => {
                    chars.next();
                    state = In::BlockComment;
                    out.push(' ');
                }
                _ => out.push(c),
            },
            In::Quote(q) => {
                if c == '\\' && q != '`' {
                    chars.next();
                } else if c == q {
                    state = In::Code;
                }
            }
            In::LineComment => {
                if c == '\n' {
                    state = In::Code;
                    out.push(c);
                }
            }
            In::BlockComment => {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    state = In::Code;
                }
            }
        }
    }
    out
}

/// The one number of `results`: one row, one value (a field other than the
/// time-series bounds; a percentile's single entry). What it shows of the row is
/// scrubbed of `secrets`.
fn value_of(results: &Value, secrets: &[&Secret]) -> Result<f64, ReadError> {
    let rows = results
        .as_array()
        .ok_or_else(|| ReadError::Empty("New Relic returned no results".into()))?;
    let row = match rows.as_slice() {
        [] => return Err(ReadError::Empty("New Relic returned no results".into())),
        [one] => one,
        many => return Err(ReadError::ManySeries(many.len())),
    };
    let fields: Vec<(&String, &Value)> = row
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "beginTimeSeconds" | "endTimeSeconds"))
        .collect();
    let (name, value) = match fields.as_slice() {
        [one] => *one,
        [] => return Err(ReadError::Empty("the result row holds no value".into())),
        _ => {
            return Err(ReadError::Other(format!(
                "the result row holds {} values; SELECT one",
                fields.len()
            )));
        }
    };
    // `percentile(duration, 99)` answers {"percentile.duration": {"99": 0.42}}.
    let value = match value.as_object().map(|o| o.values().collect::<Vec<_>>()) {
        Some(inner) if inner.len() == 1 => inner[0],
        _ => value,
    };
    if value.is_null() {
        return Err(ReadError::Empty(format!(
            "`{}` is null: no events",
            said(name, secrets)
        )));
    }
    number(value).ok_or_else(|| ReadError::NotANumber(said(&value.to_string(), secrets)))
}

impl QueryProvider for NewRelic {
    fn read<'a>(&'a self, spec: &'a QuerySpec, ask: &'a Ask) -> BoxFuture<'a, Reading> {
        Box::pin(async move {
            let value = self.one(&spec.query, ask).await;
            let samples = match &spec.samples {
                Some(q) => Some(self.one(q, ask).await),
                None => None,
            };
            Reading {
                value,
                samples,
                histogram: None,
            }
        })
    }

    fn secrets(&self) -> Vec<Secret> {
        self.api_key.iter().cloned().collect()
    }

    fn check(&self) -> BoxFuture<'_, Result<String, ReadError>> {
        Box::pin(async move {
            let budget = super::Budget::new(Default::default());
            let data = self
                .graphql(ACCOUNT, json!({"id": self.account_id}), &budget)
                .await?;
            if data["actor"]["account"]["id"].as_u64() != Some(self.account_id) {
                return Err(ReadError::Other(format!(
                    "New Relic did not show account {} to this key",
                    self.account_id
                )));
            }
            Ok(format!(
                "the key can read account {} at {}",
                self.account_id, self.url
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (review): any `since` in the text, a name or a string included,
    /// dropped the window, and NRQL read its default hour instead of the interval.
    /// Regression (review): so did a `since` in a comment.
    #[test]
    fn only_a_since_clause_of_its_own_keeps_the_query_unwindowed() {
        for own in [
            "SELECT count(*) FROM Transaction SINCE 1 hour ago",
            "select count(*) from Transaction since 5 minutes ago",
            "SELECT count(*) FROM Transaction -- last hour\nSINCE 1 hour ago",
            "SELECT count(*) FROM Transaction /* a\nb */ SINCE 1 hour ago",
            "SELECT count(*) FROM Transaction WHERE name = 'Bob\\'s' SINCE 1 hour ago",
            "SELECT count(*) FROM Transaction UNTIL 10 minutes ago",
        ] {
            assert!(names_its_own_window(own), "{own}");
        }
        for not in [
            "SELECT average(timeSinceLoad) FROM PageView",
            "SELECT count(*) FROM Transaction WHERE appName = 'since-v2'",
            "SELECT count(*) FROM Transaction WHERE `since` = 1",
            "SELECT count(*) FROM Transaction WHERE tag = \"x since y\"",
            "SELECT count(*) FROM Transaction WHERE name = 'Bob\\'s since' -- ok",
            "SELECT count(*) FROM Transaction -- counted since the v2 cutover",
            "SELECT count(*) FROM Transaction // since v2",
            "SELECT count(*) FROM Transaction /* since v2 */ WHERE error IS true",
            "SELECT count(*) FROM Transaction WHERE path = '--' AND x = 'a // since'",
        ] {
            assert!(!names_its_own_window(not), "{not}");
        }
    }

    #[test]
    fn results_become_one_number_or_no_data() {
        let v = |s: &str| value_of(&serde_json::from_str(s).unwrap(), &[]);
        assert_eq!(v(r#"[{"count": 12}]"#).ok(), Some(12.0));
        assert_eq!(
            v(r#"[{"percentile.duration": {"99": 0.42}}]"#).ok(),
            Some(0.42)
        );
        assert_eq!(
            v(r#"[{"beginTimeSeconds": 1, "endTimeSeconds": 2, "average.duration": 3.5}]"#).ok(),
            Some(3.5)
        );
        assert!(matches!(v("[]"), Err(ReadError::Empty(_))));
        assert!(matches!(
            v(r#"[{"average.duration": null}]"#),
            Err(ReadError::Empty(_))
        ));
        assert!(matches!(
            v(r#"[{"a": 1}, {"a": 2}]"#),
            Err(ReadError::ManySeries(2))
        ));
        assert!(matches!(
            v(r#"[{"a": 1, "b": 2}]"#),
            Err(ReadError::Other(_))
        ));
    }
}
