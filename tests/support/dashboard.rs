//! The Grafana dashboard (docs/grafana-dashboard.json) as tests read it: its PromQL queries,
//! with Grafana's variables replaced so that Prometheus (or promtool) can read them, and the
//! metric names they select.

use std::collections::BTreeSet;

use super::repo_root;

pub const DASHBOARD: &str = "docs/grafana-dashboard.json";

/// One PromQL expression of the dashboard.
#[derive(Debug)]
pub struct Query {
    /// The panel (or template variable) it belongs to.
    pub panel: String,
    pub expr: String,
    /// Whether it reads natsguard's labelled metrics only: traffic makes it find data.
    pub expects_data: bool,
}

pub fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join(DASHBOARD)).expect("the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel target's expression, and the metric of each `label_values(metric, label)`
/// template variable (as the selector it is).
pub fn queries() -> Vec<Query> {
    let dashboard = dashboard();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL target").to_owned();
            queries.push(Query {
                panel: panel["title"].as_str().unwrap_or_default().to_owned(),
                expects_data: metric_names(&expr)
                    .iter()
                    .all(|name| labelled_families().contains(name))
                    && !expr.contains("revoked"),
                expr,
            });
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let definition = variable["query"]["query"]
            .as_str()
            .expect("a query variable");
        let metric = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("not label_values(metric, label): {definition}"));
        queries.push(Query {
            panel: format!("variable {}", variable["name"]),
            expr: metric.trim().to_owned(),
            expects_data: true,
        });
    }
    queries
}

/// natsguard's labelled metric families in Prometheus (`natsguard_<family>`).
pub fn labelled_families() -> Vec<String> {
    natsguard::engine::telemetry::Family::ALL
        .iter()
        .map(|family| format!("natsguard_{}", family.name()))
        .collect()
}

/// The expression with Grafana's variables replaced: ranges by `5m`, `$namespace` (a
/// multi-value variable, read as a regex) by `.*`.
pub fn instant(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "5m")
        .replace("$__interval", "5m")
        .replace("$namespace", ".*")
}

/// PromQL's aggregation operators: `sum by (x) (...)` puts a label list between the name and
/// its `(`.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// PromQL words that are not metric names where an identifier can stand.
const KEYWORDS: [&str; 11] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

/// The metric names an expression selects: identifiers outside strings, label matchers
/// (`{...}`), ranges (`[...]`) and label lists (`by (...)`), that are not function names
/// (followed by `(`), aggregation operators or keywords. Expressions that promtool accepts only.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut at = 0;
    let mut label_list_follows = false;
    while at < chars.len() {
        let c = chars[at];
        if c == '"' || c == '\'' || c == '`' {
            at += 1;
            while at < chars.len() && chars[at] != c {
                at += if chars[at] == '\\' { 2 } else { 1 };
            }
            at += 1;
        } else if c == '{' || c == '[' || (c == '(' && label_list_follows) {
            let close = match c {
                '{' => '}',
                '[' => ']',
                _ => ')',
            };
            label_list_follows = false;
            while at < chars.len() && chars[at] != close {
                at += 1;
            }
            at += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = at;
            while at < chars.len()
                && (chars[at].is_ascii_alphanumeric() || "_:".contains(chars[at]))
            {
                at += 1;
            }
            let word: String = chars[start..at].iter().collect();
            let next = chars[at..].iter().find(|c| !c.is_whitespace());
            if KEYWORDS.contains(&word.as_str()) {
                label_list_follows =
                    !matches!(word.as_str(), "and" | "or" | "unless" | "bool" | "offset");
            } else if next != Some(&'(') && !AGGREGATIONS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else if c.is_ascii_digit() {
            // A number or a duration (`5m`): its letters are not a name.
            while at < chars.len() && (chars[at].is_ascii_alphanumeric() || chars[at] == '.') {
                at += 1;
            }
        } else {
            at += 1;
        }
    }
    names
}

/// The metrics docs/troubleshooting.md documents (§6): every `natsguard_…` name in the first
/// column of its tables, a `<placeholder>` (`<reason>`, `<kind>`) standing for any word.
pub fn documented_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("docs/troubleshooting.md"))
        .expect("docs/troubleshooting.md");
    let section = text
        .split("\n## 6. Metrics")
        .nth(1)
        .expect("docs/troubleshooting.md has a section 6. Metrics");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `natsguard_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("natsguard_{name}"))
        .collect()
}

pub fn is_documented(name: &str, documented: &[String]) -> bool {
    documented
        .iter()
        .any(|pattern| match pattern.split_once('<') {
            Some((prefix, rest)) => {
                let suffix = rest.split_once('>').map_or("", |(_, suffix)| suffix);
                name.len() > prefix.len() + suffix.len()
                    && name.starts_with(prefix)
                    && name.ends_with(suffix)
            }
            None => pattern == name,
        })
}
