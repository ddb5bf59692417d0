//! Grafana dashboards of `dashboards/`, read the way Grafana and its ClickHouse data source
//! plugin (`grafana-clickhouse-datasource`) read them: the panels' queries, the template
//! variables, and the plugin's macros expanded into the SQL ClickHouse receives.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The plugin's type name, which ClickHouse panels and variables name as their data source.
pub const CLICKHOUSE: &str = "grafana-clickhouse-datasource";

/// A dashboard file, parsed.
pub fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dashboards")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The template variables, by name.
pub fn variables(dashboard: &Value) -> BTreeMap<String, &Value> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect()
}

/// What a dashboard's user picked: the time range, the interval and each variable's values,
/// `None` for "All".
pub struct Selection {
    /// Unix seconds.
    pub from: i64,
    pub to: i64,
    pub interval_s: u64,
    /// Variable name to its selected values; a variable not here is "All" of `all`.
    pub picked: BTreeMap<String, Vec<String>>,
    /// Every value each variable offers (what its query returned), for "All".
    pub all: BTreeMap<String, Vec<String>>,
}

impl Selection {
    fn values(&self, var: &str) -> &[String] {
        self.picked
            .get(var)
            .or_else(|| self.all.get(var))
            .unwrap_or_else(|| panic!("variable ${var} has no values"))
    }

    fn is_all(&self, var: &str) -> bool {
        !self.picked.contains_key(var)
    }
}

/// The SQL the plugin sends for `sql` under `sel`. Macros follow the plugin's documented
/// expansions (https://clickhouse.com/docs/integrations/grafana/query-builder#macros, the
/// plugin's README "Macros"):
/// - `$__timeFilter(c)`  → `c >= toDateTime(FROM) AND c <= toDateTime(TO)`
/// - `$__fromTime` / `$__toTime` → `toDateTime(FROM)` / `toDateTime(TO)`
/// - `$__interval_s` → the interval in seconds
/// - `$__timeInterval(c)` → `toStartOfInterval(toDateTime(c), INTERVAL N second)`
/// - `$__conditionalAll(cond, $var)` → `cond`, or `1=1` when `$var` selects all values
///   (the plugin's `applyConditionalAll` in src/data/CHDatasource.ts: `1=1` when the
///   variable's current value is `$__all` or empty; it runs before variables are replaced)
///
/// Variables use Grafana's format `${var:singlequote}` (Grafana's "Advanced variable format
/// options"): each value in single quotes (a quote escaped as `\'`), joined by commas; "All"
/// without a custom all-value stands for every value the variable offers.
pub fn expand(sql: &str, sel: &Selection) -> String {
    // conditionalAll decides on the variable before it is interpolated.
    let mut out = replace_macro(sql, "$__conditionalAll", |args| {
        let (cond, var) = args
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("$__conditionalAll needs two arguments: {args}"));
        let var = var.trim().trim_start_matches('$').trim_matches(['{', '}']);
        if sel.is_all(var) {
            "1=1".to_string()
        } else {
            cond.trim().to_string()
        }
    });
    out = replace_macro(&out, "$__timeFilter", |c| {
        format!(
            "{c} >= toDateTime({}) AND {c} <= toDateTime({})",
            sel.from, sel.to
        )
    });
    out = replace_macro(&out, "$__timeInterval", |c| {
        format!(
            "toStartOfInterval(toDateTime({c}), INTERVAL {} second)",
            sel.interval_s
        )
    });
    out = out
        .replace("$__fromTime", &format!("toDateTime({})", sel.from))
        .replace("$__toTime", &format!("toDateTime({})", sel.to))
        .replace("$__interval_s", &sel.interval_s.to_string());
    let var = regex::Regex::new(r"\$\{(\w+):singlequote\}").unwrap();
    let out = var
        .replace_all(&out, |c: &regex::Captures| {
            sel.values(&c[1])
                .iter()
                .map(|v| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .into_owned();
    assert!(
        !out.contains('$'),
        "a macro or variable is left unexpanded:\n{out}"
    );
    out
}

/// Replaces each `name(args)` (parentheses balanced) with `f(args)`.
fn replace_macro(sql: &str, name: &str, f: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find(&format!("{name}(")) {
        out.push_str(&rest[..at]);
        let open = at + name.len();
        let mut depth = 0;
        let close = rest[open..]
            .char_indices()
            .find_map(|(i, ch)| {
                match ch {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(open + i)
            })
            .unwrap_or_else(|| panic!("unbalanced {name}( in:\n{sql}"));
        out.push_str(&f(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}
