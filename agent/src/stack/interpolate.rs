//! Compose's variable interpolation and `.env` files: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}` and `$$`, with
//! defaults and alternatives interpolated in turn (as compose-go does). Values come from the
//! environment first, then from the `.env` file next to the first Compose file (Swarm ignores
//! that file; Compose users rely on it).

use std::collections::BTreeMap;

/// Deepest nesting of `${…}` inside defaults (a bound for hostile input).
const MAX_DEPTH: usize = 16;

/// Where variables come from: the environment, then the `.env` file.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    env: BTreeMap<String, String>,
    dotenv: BTreeMap<String, String>,
}

impl Vars {
    /// Variables from the process environment and a `.env` file's entries.
    pub fn new(
        env: impl IntoIterator<Item = (String, String)>,
        dotenv: impl IntoIterator<Item = (String, String)>,
    ) -> Vars {
        Vars {
            env: env.into_iter().collect(),
            dotenv: dotenv.into_iter().collect(),
        }
    }

    /// A variable's value: the environment's, else the `.env` file's.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .or_else(|| self.dotenv.get(name))
            .map(String::as_str)
    }
}

/// Interpolates one string. Unset variables without a default become empty strings and add a
/// warning (Compose's words); `${VAR:?message}` and `${VAR?message}` of unset variables, and
/// malformed templates, are errors.
pub fn interpolate(s: &str, vars: &Vars, warnings: &mut Vec<String>) -> Result<String, String> {
    interpolate_at(s, vars, warnings, 0)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn unset_warning(name: &str, warnings: &mut Vec<String>) {
    let w = format!("The \"{name}\" variable is not set. Defaulting to a blank string.");
    if !warnings.contains(&w) {
        warnings.push(w);
    }
}

fn interpolate_at(
    s: &str,
    vars: &Vars,
    warnings: &mut Vec<String>,
    depth: usize,
) -> Result<String, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "invalid interpolation format for {s:?}: nested too deep"
        ));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.chars().next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let body_start = &after[1..];
                let end = closing_brace(body_start).ok_or_else(|| {
                    format!("invalid interpolation format for {s:?}: a \"${{\" is not closed")
                })?;
                let body = &body_start[..end];
                out.push_str(&expand(body, s, vars, warnings, depth)?);
                rest = &body_start[end + 1..];
            }
            Some(c) if is_name_start(c) => {
                let len = after
                    .char_indices()
                    .find(|(_, c)| !is_name_char(*c))
                    .map_or(after.len(), |(i, _)| i);
                let name = &after[..len];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => unset_warning(name, warnings),
                }
                rest = &after[len..];
            }
            _ => {
                return Err(format!(
                    "invalid interpolation format for {s:?}: a \"$\" must be followed by a \
                     name, \"{{\" or another \"$\" (write \"$$\" for a literal \"$\")"
                ))
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `}` closing a `${` whose body starts `body`, counting nested `${…}`.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// One `${…}` body: a name, then nothing or an operator and its word.
fn expand(
    body: &str,
    whole: &str,
    vars: &Vars,
    warnings: &mut Vec<String>,
    depth: usize,
) -> Result<String, String> {
    let len = body
        .char_indices()
        .find(|(_, c)| !is_name_char(*c))
        .map_or(body.len(), |(i, _)| i);
    let name = &body[..len];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(format!(
            "invalid interpolation format for {whole:?}: \"${{{body}}}\" names no variable"
        ));
    }
    let op = &body[len..];
    let value = vars.get(name);
    let word = |w: &str, warnings: &mut Vec<String>| interpolate_at(w, vars, warnings, depth + 1);
    let (op, w) = if let Some(w) = op.strip_prefix(":-") {
        (":-", w)
    } else if let Some(w) = op.strip_prefix(":?") {
        (":?", w)
    } else if let Some(w) = op.strip_prefix(":+") {
        (":+", w)
    } else {
        // One character (of any width) of operator, or none.
        let len = op.chars().next().map_or(0, char::len_utf8);
        op.split_at(len)
    };
    match (op, value) {
        ("", Some(v)) => Ok(v.to_string()),
        ("", None) => {
            unset_warning(name, warnings);
            Ok(String::new())
        }
        (":-", Some(v)) if !v.is_empty() => Ok(v.to_string()),
        (":-", _) => word(w, warnings),
        ("-", Some(v)) => Ok(v.to_string()),
        ("-", None) => word(w, warnings),
        (":?", Some(v)) if !v.is_empty() => Ok(v.to_string()),
        ("?", Some(v)) => Ok(v.to_string()),
        (":?" | "?", _) => {
            let msg = word(w, warnings)?;
            Err(if msg.is_empty() {
                format!("required variable {name} is missing a value")
            } else {
                format!("required variable {name} is missing a value: {msg}")
            })
        }
        (":+", Some(v)) if !v.is_empty() => word(w, warnings),
        (":+", _) => Ok(String::new()),
        ("+", Some(_)) => word(w, warnings),
        ("+", None) => Ok(String::new()),
        _ => Err(format!(
            "invalid interpolation format for {whole:?}: unknown operator in \"${{{body}}}\""
        )),
    }
}

/// Parses a `.env` file: `KEY=VALUE` lines, `export KEY=VALUE`, `#` comments and blank lines;
/// values single-quoted (literal), double-quoted (`\n`, `\t`, `\"`, `\\` escapes) or bare (a
/// ` #` starts a comment; surrounding spaces are trimmed). Errors name the line.
pub fn parse_dotenv(text: &str, file: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let bad = |why: &str| format!("{file}:{}: {why}", n + 1);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        let key = key.trim();
        if key.is_empty() || !key.starts_with(is_name_start) || !key.chars().all(is_name_char) {
            return Err(bad(&format!("invalid variable name {key:?}")));
        }
        let value = value.trim();
        let value = if let Some(v) = value.strip_prefix('\'') {
            v.strip_suffix('\'')
                .ok_or_else(|| bad("unterminated single quote"))?
                .to_string()
        } else if let Some(v) = value.strip_prefix('"') {
            let v = v
                .strip_suffix('"')
                .ok_or_else(|| bad("unterminated double quote"))?;
            unescape(v)
        } else {
            match value.find(" #") {
                Some(i) => value[..i].trim_end().to_string(),
                None => value.to_string(),
            }
        };
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vars() -> Vars {
        Vars::new(
            [
                ("TAG".to_string(), "v1.5".to_string()),
                ("EMPTY".to_string(), String::new()),
                ("PORT".to_string(), "8080".to_string()),
            ],
            [
                ("PORT".to_string(), "9999".to_string()),
                ("FROM_DOTENV".to_string(), "yes".to_string()),
            ],
        )
    }

    fn run(s: &str) -> Result<String, String> {
        interpolate(s, &vars(), &mut Vec::new())
    }

    #[test]
    fn the_compose_specification_s_examples() {
        assert_eq!(run("webapp:${TAG}").unwrap(), "webapp:v1.5");
        assert_eq!(run("webapp:$TAG").unwrap(), "webapp:v1.5");
        assert_eq!(run("${UNSET:-default}").unwrap(), "default");
        assert_eq!(run("${EMPTY:-default}").unwrap(), "default");
        assert_eq!(run("${EMPTY-default}").unwrap(), "");
        assert_eq!(run("${UNSET-default}").unwrap(), "default");
        assert_eq!(run("${TAG:+replaced}").unwrap(), "replaced");
        assert_eq!(run("${EMPTY:+replaced}").unwrap(), "");
        assert_eq!(run("${EMPTY+replaced}").unwrap(), "replaced");
        assert_eq!(run("${UNSET+replaced}").unwrap(), "");
        assert_eq!(run("$$TAG costs $$5").unwrap(), "$TAG costs $5");
        // Nested: the default is interpolated in turn.
        assert_eq!(run("${UNSET:-${TAG}-x}").unwrap(), "v1.5-x");
        assert_eq!(run("${UNSET:-${ALSO_UNSET:-deep}}").unwrap(), "deep");
        // The environment wins over .env; .env fills in.
        assert_eq!(run("${PORT}:${FROM_DOTENV}").unwrap(), "8080:yes");
        assert_eq!(run("no variables").unwrap(), "no variables");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(
            run("${UNSET:?set UNSET to the database URL}").unwrap_err(),
            "required variable UNSET is missing a value: set UNSET to the database URL"
        );
        assert_eq!(
            run("${EMPTY:?}").unwrap_err(),
            "required variable EMPTY is missing a value"
        );
        assert_eq!(run("${EMPTY?must be set}").unwrap(), "");
        assert!(run("${UNSET?must be set}").is_err());
        assert_eq!(run("${TAG:?x}").unwrap(), "v1.5");
    }

    #[test]
    fn unset_variables_warn_once_and_malformed_templates_are_errors() {
        let mut w = Vec::new();
        let out = interpolate("a${NOPE}b$NOPE", &vars(), &mut w).unwrap();
        assert_eq!(out, "ab");
        assert_eq!(
            w,
            vec!["The \"NOPE\" variable is not set. Defaulting to a blank string."]
        );
        for bad in [
            "${", "${TAG", "${}", "${1X}", "$ x", "$", "${TAG:x}", "${TAG!}",
        ] {
            let e = run(bad).unwrap_err();
            assert!(e.contains("invalid interpolation format"), "{bad}: {e}");
        }
    }

    #[test]
    fn dotenv_files_parse_like_compose() {
        let text = "# comment\n\nA=1\nexport B = two words \nC='lit $X # not a comment'\nD=\"line\\nnext\"\nE=val # trailing\nF=\n";
        let got = parse_dotenv(text, ".env").unwrap();
        assert_eq!(
            got,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "lit $X # not a comment".into()),
                ("D".into(), "line\nnext".into()),
                ("E".into(), "val".into()),
                ("F".into(), String::new()),
            ]
        );
        assert_eq!(
            parse_dotenv("A=1\nnonsense\n", ".env").unwrap_err(),
            ".env:2: expected KEY=VALUE"
        );
        assert!(parse_dotenv("1A=x", ".env")
            .unwrap_err()
            .contains("invalid variable name"));
        assert!(parse_dotenv("A='open", ".env")
            .unwrap_err()
            .contains("single quote"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// No input panics, and text without `$` comes back unchanged.
        #[test]
        fn any_input_is_an_answer_not_a_panic(s in "\\PC{0,64}", t in "[^$]{0,64}") {
            let _ = run(&s);
            let _ = parse_dotenv(&s, ".env");
            prop_assert_eq!(run(&t).unwrap(), t);
        }

        /// Deeply nested defaults are refused, not a stack overflow.
        #[test]
        fn nesting_is_bounded(n in 1usize..200) {
            let s = format!("{}x{}", "${A:-".repeat(n), "}".repeat(n));
            let r = run(&s);
            if n <= MAX_DEPTH {
                prop_assert_eq!(r.unwrap(), "x");
            } else {
                prop_assert!(r.is_err());
            }
        }
    }
}
