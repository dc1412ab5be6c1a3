//! Reading Compose files: YAML (1.2 booleans, duplicate keys refused, serde-saphyr's budgets on
//! depth, aliases and sizes) into a value tree; interpolation of every string in it; and the
//! merge of several `-c` files, later ones overriding earlier ones.

use serde_json::{Map, Value};

use super::interpolate::{interpolate, Vars};

/// The largest Compose file read (real ones are a few KiB).
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Parses one file's text. Errors read `FILE:LINE:COLUMN: what`.
pub fn parse(text: &str, file: &str) -> Result<Value, String> {
    if text.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{file}: {} bytes, more than the {} KiB a Compose file may have",
            text.len(),
            MAX_FILE_BYTES / 1024
        ));
    }
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
        // `mode: 0440` is octal, as Compose (YAML 1.1) reads it.
        legacy_octal_numbers: true,
    };
    let v: Value =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| located(&e, file))?;
    match v {
        Value::Object(_) => Ok(v),
        Value::Null => Err(format!("{file}: the file is empty")),
        _ => Err(format!(
            "{file}: a Compose file is a mapping (services:, volumes:, …)"
        )),
    }
}

/// The parser's error as `FILE:LINE:COLUMN: what`.
fn located(e: &serde_saphyr::Error, file: &str) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // The message without the position it may end or start with.
    let what = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    let what = match what.strip_prefix("line ") {
        Some(rest) => rest.split_once(": ").map_or(what, |(_, w)| w),
        None => what,
    };
    match e.location() {
        Some(l) => format!("{file}:{}:{}: {what}", l.line(), l.column()),
        None => format!("{file}: {what}"),
    }
}

/// Interpolates every string value of the tree (not the keys, as Compose), naming where a
/// required variable was missing.
pub fn interpolate_tree(
    v: &mut Value,
    vars: &Vars,
    warnings: &mut Vec<String>,
    path: &str,
) -> Result<(), String> {
    match v {
        Value::String(s) => {
            *s = interpolate(s, vars, warnings).map_err(|e| format!("{path}: {e}"))?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, vars, warnings, &format!("{path}[{i}]"))?;
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                interpolate_tree(item, vars, warnings, &at)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Service keys whose lists add up across files (Compose's merge rules); other lists and all
/// scalars are replaced by the later file.
const APPENDED: [&str; 7] = [
    "ports",
    "volumes",
    "secrets",
    "configs",
    "env_file",
    "dns",
    "extra_hosts",
];

/// Merges `over` into `base`: mappings key by key, `environment` and `labels` by name in
/// either form, the lists of [`APPENDED`] keys appended (without repeating an equal entry),
/// anything else replaced.
pub fn merge(base: &mut Value, over: Value) {
    merge_at(base, over, "");
}

/// Keys whose entries merge by name whether written as a list (`K=V`) or a mapping.
const KEYED: [&str; 2] = ["environment", "labels"];

/// A list of `K=V` (or bare `K`) as a mapping; a mapping as it is.
fn as_mapping(v: Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        Value::Array(items) => {
            let mut m = Map::new();
            for item in items {
                let s = match item {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                match s.split_once('=') {
                    Some((k, v)) => m.insert(k.to_string(), Value::String(v.to_string())),
                    None => m.insert(s, Value::Null),
                };
            }
            Some(m)
        }
        _ => None,
    }
}

fn merge_at(base: &mut Value, over: Value, key: &str) {
    if KEYED.contains(&key) && (base.is_array() || over.is_array()) {
        if let (Some(mut b), Some(o)) = (as_mapping(base.take()), as_mapping(over.clone())) {
            b.extend(o);
            *base = Value::Object(b);
            return;
        }
        *base = over;
        return;
    }
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_at(existing, v, &k),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if APPENDED.contains(&key) => {
            for item in o {
                if !b.contains(&item) {
                    b.push(item);
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Reads, interpolates and merges files in order: (name, text) pairs.
pub fn load(
    files: &[(String, String)],
    vars: &Vars,
    warnings: &mut Vec<String>,
) -> Result<Value, String> {
    let mut merged = Value::Object(Map::new());
    for (name, text) in files {
        let mut v = parse(text, name)?;
        interpolate_tree(&mut v, vars, warnings, name)?;
        merge(&mut merged, v);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn yaml_1_2_and_clear_errors_with_line_and_column() {
        let v = parse(
            "services:\n  web:\n    image: nginx\n    environment:\n      DEBUG: yes\n      ON: on\n      T: true\n",
            "docker-compose.yml",
        )
        .unwrap();
        // `yes` and `on` are strings in YAML 1.2, as in Compose.
        assert_eq!(
            v["services"]["web"]["environment"],
            json!({"DEBUG": "yes", "ON": "on", "T": true})
        );
        let e = parse("services:\n  web:\n   image: [x\n", "app.yml").unwrap_err();
        assert!(e.starts_with("app.yml:3:11: "), "{e}");
        let e = parse("a: 1\na: 2\n", "app.yml").unwrap_err();
        assert!(e.starts_with("app.yml:2:1: duplicate mapping key"), "{e}");
        assert_eq!(
            parse("", "app.yml").unwrap_err(),
            "app.yml: the file is empty"
        );
        assert!(parse("- a\n- b\n", "app.yml")
            .unwrap_err()
            .contains("is a mapping"));
        let big = "a: ".to_string() + &"x".repeat(MAX_FILE_BYTES);
        assert!(parse(&big, "app.yml").unwrap_err().contains("KiB"));
    }

    #[test]
    fn files_are_interpolated_then_merged_later_ones_winning() {
        let vars = Vars::new([("TAG".to_string(), "2".to_string())], []);
        let files = vec![
            (
                "base.yml".to_string(),
                "services:\n  web:\n    image: app:${TAG}\n    command: [a, b]\n    ports: ['80:80']\n    deploy: {replicas: 2}\n".to_string(),
            ),
            (
                "prod.yml".to_string(),
                "services:\n  web:\n    command: [c]\n    ports: ['443:443', '80:80']\n    deploy: {replicas: 5}\n  db:\n    image: db:${DB_TAG:-15}\n".to_string(),
            ),
        ];
        let mut warnings = Vec::new();
        let v = load(&files, &vars, &mut warnings).unwrap();
        assert_eq!(
            v,
            json!({"services": {
                "web": {"image": "app:2", "command": ["c"], "ports": ["80:80", "443:443"],
                        "deploy": {"replicas": 5}},
                "db": {"image": "db:15"}
            }})
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        // environment merges by name, list or mapping.
        let files = vec![
            (
                "a.yml".to_string(),
                "services:\n  web:\n    environment: [A=1, B=2, C]\n".to_string(),
            ),
            (
                "b.yml".to_string(),
                "services:\n  web:\n    environment: {B: 3, D: 4}\n".to_string(),
            ),
        ];
        let v = load(&files, &vars, &mut warnings).unwrap();
        assert_eq!(
            v["services"]["web"]["environment"],
            json!({"A": "1", "B": 3, "C": null, "D": 4})
        );
        let bad = vec![(
            "x.yml".to_string(),
            "services:\n  web:\n    image: ${IMAGE:?name the image}\n".to_string(),
        )];
        assert_eq!(
            load(&bad, &vars, &mut warnings).unwrap_err(),
            "x.yml.services.web.image: required variable IMAGE is missing a value: name the image"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// No input panics the loader.
        #[test]
        fn any_text_is_an_answer_not_a_panic(s in "\\PC{0,200}") {
            let _ = load(&[("f.yml".to_string(), s)], &Vars::default(), &mut Vec::new());
        }

        /// Nor does YAML-shaped noise (indentation, flow collections, anchors, aliases).
        #[test]
        fn yaml_shaped_noise_is_an_answer_not_a_panic(
            parts in prop::collection::vec(
                prop::sample::select(vec![
                    "a:", " b:", "  - x", "[", "]", "{", "}", "&x", "*x", "<<:", "'", "\"",
                    "\n", "\n  ", ": ", "${A}", "|", ">", "---", "#", "? ", ",",
                ]),
                0..60,
            )
        ) {
            let s: String = parts.concat();
            let _ = load(&[("f.yml".to_string(), s)], &Vars::default(), &mut Vec::new());
        }
    }
}
