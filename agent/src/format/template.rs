//! `--format` templates, close to the docker CLI's Go templates: `{{.Field}}` (and nested
//! `{{.Spec.Name}}`), `{{json .}}` / `{{json .Field}}`, `{{upper .Field}}`, `{{lower .Field}}`,
//! `\t` and `\n` escapes, and a `table` prefix that prints a header and aligns the columns
//! separated by tabs. `--format json` prints one JSON object per line.
//!
//! Rows are any `Serialize` value whose fields are named as docker names them (`ID`, `Name`,
//! …); an unknown field is an error that lists the known ones.

use serde::Serialize;
use serde_json::Value;

/// Longest template accepted.
const MAX_TEMPLATE: usize = 4096;

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    /// Literal text.
    Text(String),
    /// `{{[func] .A.B}}` (`path` empty for `.`).
    Action {
        func: Option<Func>,
        path: Vec<String>,
    },
}

/// The functions a template may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    Json,
    Upper,
    Lower,
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    table: bool,
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text` (with or without the `table` prefix).
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.len() > MAX_TEMPLATE {
            return Err(format!("the template is longer than {MAX_TEMPLATE} bytes"));
        }
        let (table, body) = match text.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with([' ', '\t']) => {
                (true, rest.trim_start_matches([' ', '\t']))
            }
            _ => (false, text),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut pieces = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("template: unclosed action in {text:?}"))?;
            pieces.push(parse_action(&after[..end])?);
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("template: unexpected }} in {text:?}"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { table, pieces })
    }

    /// The template applied to one row.
    pub fn render(&self, row: &Value) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Action { func, path } => {
                    let value = lookup(row, path)?;
                    let text = match func {
                        Some(Func::Json) => {
                            serde_json::to_string(value).map_err(|e| e.to_string())?
                        }
                        Some(Func::Upper) => plain(value).to_uppercase(),
                        Some(Func::Lower) => plain(value).to_lowercase(),
                        None => plain(value),
                    };
                    // Untrusted text from the cluster: no control characters but tab/newline
                    // coming from the template itself.
                    out.extend(text.chars().map(|c| if c.is_control() { '?' } else { c }));
                }
            }
        }
        Ok(out)
    }

    /// The header a `table` template prints: each action's last field name, in capitals,
    /// words split (`DesiredState` → `DESIRED STATE`).
    fn header(&self) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Action { path, .. } => match path.last() {
                    Some(name) => out.push_str(&header_words(name)),
                    None => out.push_str("VALUE"),
                },
            }
        }
        out
    }
}

fn parse_action(inner: &str) -> Result<Piece, String> {
    let words: Vec<&str> = inner.split_whitespace().collect();
    let (func, arg) = match words.as_slice() {
        [arg] => (None, *arg),
        [f, arg] => {
            let func = match *f {
                "json" => Func::Json,
                "upper" => Func::Upper,
                "lower" => Func::Lower,
                other => {
                    return Err(format!(
                        "template: unknown function {other:?} (json, upper, lower)"
                    ))
                }
            };
            (Some(func), *arg)
        }
        _ => return Err(format!("template: cannot read {{{{{inner}}}}}")),
    };
    let path = if arg == "." {
        Vec::new()
    } else {
        let fields = arg
            .strip_prefix('.')
            .ok_or_else(|| format!("template: expected .Field, found {arg:?}"))?;
        let path: Vec<String> = fields.split('.').map(str::to_string).collect();
        if path
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(format!("template: bad field {arg:?}"));
        }
        path
    };
    Ok(Piece::Action { func, path })
}

fn lookup<'a>(row: &'a Value, path: &[String]) -> Result<&'a Value, String> {
    let mut value = row;
    for name in path {
        value = match value {
            Value::Object(map) => map.get(name).ok_or_else(|| {
                let known: Vec<&str> = map.keys().map(String::as_str).collect();
                format!("template: no field {name:?} (fields: {})", known.join(", "))
            })?,
            _ => return Err(format!("template: {name:?} is not a field of a value")),
        };
    }
    Ok(value)
}

/// A value as text: strings bare, null empty, the rest as JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn header_words(name: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let boundary = i > 0
            && c.is_ascii_uppercase()
            && (chars[i - 1].is_ascii_lowercase()
                || chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase()));
        if boundary {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Aligns tab-separated columns (each padded to its widest cell plus three spaces).
fn align(lines: &[String]) -> String {
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in &rows {
        for (c, cell) in row.iter().enumerate() {
            widths[c] = widths[c].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c] + 3 - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end_matches(' '));
        out.push('\n');
    }
    out
}

/// `rows` through `template` (or one JSON object per line for `json`), one line per row.
pub fn render_rows<T: Serialize>(template: &str, rows: &[T]) -> Result<String, String> {
    let values: Vec<Value> = rows
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if template == "json" {
        return Ok(values.iter().map(|v| format!("{v}\n")).collect());
    }
    let t = Template::parse(template)?;
    let mut lines: Vec<String> = Vec::with_capacity(values.len() + 1);
    if t.table {
        lines.push(t.header());
    }
    for v in &values {
        lines.push(t.render(v)?);
    }
    if t.table {
        return Ok(align(&lines));
    }
    let mut out = String::new();
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    Ok(out)
}

/// Whether `format` asks for a template or `json` rather than a built-in layout.
pub fn is_template(format: &str) -> bool {
    format == "json" || format.contains("{{")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Row {
        #[serde(rename = "ID")]
        id: &'static str,
        name: &'static str,
        desired_state: &'static str,
        labels: Vec<&'static str>,
    }

    fn rows() -> Vec<Row> {
        vec![
            Row {
                id: "a1",
                name: "web",
                desired_state: "Running",
                labels: vec!["x"],
            },
            Row {
                id: "b22",
                name: "db\u{1b}[2J",
                desired_state: "Shutdown",
                labels: vec![],
            },
        ]
    }

    #[test]
    fn fields_functions_and_escapes() {
        assert_eq!(
            render_rows("{{.ID}} {{.Name}}", &rows()).unwrap(),
            "a1 web\nb22 db?[2J\n"
        );
        assert_eq!(
            render_rows("{{upper .DesiredState}}\\t{{json .Labels}}", &rows()).unwrap(),
            "RUNNING\t[\"x\"]\nSHUTDOWN\t[]\n"
        );
        assert_eq!(
            render_rows("{{json .}}", &rows()[..1]).unwrap(),
            "{\"DesiredState\":\"Running\",\"ID\":\"a1\",\"Labels\":[\"x\"],\"Name\":\"web\"}\n"
        );
        assert_eq!(
            render_rows("json", &rows()[..1]).unwrap(),
            render_rows("{{json .}}", &rows()[..1]).unwrap()
        );
        let t = Template::parse("{{.Spec.Name}}").unwrap();
        assert_eq!(t.render(&json!({"Spec": {"Name": "n"}})).unwrap(), "n");
    }

    #[test]
    fn tables_have_a_header_and_aligned_columns() {
        assert_eq!(
            render_rows("table {{.ID}}\\t{{.Name}}\\t{{.DesiredState}}", &rows()).unwrap(),
            "ID    NAME     DESIRED STATE\n\
             a1    web      Running\n\
             b22   db?[2J   Shutdown\n"
        );
    }

    #[test]
    fn bad_templates_are_clear_errors() {
        let e = render_rows("{{.Nope}}", &rows()).unwrap_err();
        assert!(
            e.contains("no field \"Nope\"") && e.contains("ID, Labels"),
            "{e}"
        );
        for bad in [
            "{{.ID",
            "{{nope .ID}}",
            "{{ID}}",
            "{{.I-D}}",
            "x}}",
            "{{a b c}}",
            "{{..}}",
        ] {
            assert!(render_rows(bad, &rows()).is_err(), "{bad}");
        }
        assert!(render_rows(&"x".repeat(5000), &rows()).is_err());
        assert!(is_template("{{.ID}}") && is_template("json") && !is_template("table"));
    }
}
