//! librdkafka settings from a file (`--kafka-config`), so that SASL passwords and key
//! passwords never appear in argv: one `key=value` a line, `#` comments and blank lines
//! ignored, whitespace around key and value trimmed (the format of librdkafka's and Kafka's
//! `.properties` client files, without escapes or line continuations).

use std::path::Path;

/// Errors reading a client settings file. They never quote a value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OptionsError {
    #[error("cannot read Kafka client settings {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("Kafka client settings {path}, line {line}: expected key=value")]
    Syntax { path: String, line: usize },
}

/// Parses the text of a settings file (`path` is only used in errors).
pub fn parse(path: &str, text: &str) -> Result<Vec<(String, String)>, OptionsError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(OptionsError::Syntax {
                path: path.to_string(),
                line: i + 1,
            });
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(OptionsError::Syntax {
                path: path.to_string(),
                line: i + 1,
            });
        }
        out.push((k.to_string(), v.trim().to_string()));
    }
    Ok(out)
}

/// Reads `file` (if given) and appends `cli` after it, so a `--kafka-option` on the command
/// line overrides the file.
pub fn merged(
    file: Option<&Path>,
    cli: &[(String, String)],
) -> Result<Vec<(String, String)>, OptionsError> {
    let mut out = match file {
        Some(p) => {
            let path = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| OptionsError::Read {
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            parse(&path, &text)?
        }
        None => Vec::new(),
    };
    out.extend(cli.iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blanks_and_spaces() {
        let got = parse(
            "f",
            "# SASL\n\n  security.protocol = SASL_SSL\n! also a comment\nsasl.password=a=b \n",
        )
        .expect("parse");
        assert_eq!(
            got,
            vec![
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
                ("sasl.password".to_string(), "a=b".to_string()),
            ]
        );
    }

    #[test]
    fn a_line_without_equals_names_its_number_not_its_text() {
        let e = parse("f", "a=1\nsecret-without-equals\n").expect_err("syntax");
        assert_eq!(
            e,
            OptionsError::Syntax {
                path: "f".into(),
                line: 2
            }
        );
        assert!(!e.to_string().contains("secret"));
        assert!(parse("f", " = x").is_err());
    }

    #[test]
    fn the_command_line_comes_after_the_file() {
        let dir = std::env::temp_dir().join(format!("kopts-{}", std::process::id()));
        std::fs::write(&dir, "client.id=file\n").expect("write");
        let got = merged(Some(&dir), &[("client.id".into(), "cli".into())]).expect("merged");
        assert_eq!(got.last().map(|(_, v)| v.as_str()), Some("cli"));
        let _ = std::fs::remove_file(&dir);
        assert!(matches!(
            merged(Some(Path::new("/nonexistent/k.properties")), &[]),
            Err(OptionsError::Read { .. })
        ));
    }
}
