//! librdkafka settings beyond the brokers (TLS, SASL, timeouts): flags, and a properties file
//! for what must not show in the process list.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// `--kafka-option KEY=VALUE` (repeatable) and `--kafka-options-file PATH`.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct KafkaOptions {
    /// Extra librdkafka setting, KEY=VALUE (repeatable), e.g. security.protocol=SASL_SSL. A
    /// flag overrides the same key in --kafka-options-file. Flags show in the process list:
    /// put passwords in the file.
    #[arg(long = "kafka-option", value_parser = parse_key_value)]
    options: Vec<(String, String)>,
    /// A file of librdkafka settings, one KEY=VALUE per line, `#` or `!` comments (librdkafka's
    /// names: sasl.username, sasl.password, ssl.ca.location; not Java's sasl.jaas.config).
    #[arg(long = "kafka-options-file", env = "COLLECT_KAFKA_OPTIONS_FILE")]
    file: Option<PathBuf>,
}

impl KafkaOptions {
    /// The file's settings, then the flags'. Errors name the file and the line, never a
    /// value (it may be a password).
    pub(crate) fn resolve(&self) -> Result<Vec<(String, String)>> {
        let mut all = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("reading the Kafka options file {}", path.display())
                })?;
                parse_properties(&text)
                    .map_err(|e| anyhow::anyhow!("Kafka options file {}: {e}", path.display()))?
            }
            None => Vec::new(),
        };
        all.extend(self.options.iter().cloned());
        Ok(all)
    }
}

/// A `--kafka-option` value: `KEY=VALUE`.
pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    if k.trim().is_empty() {
        return Err(format!("'{s}' has an empty key"));
    }
    Ok((k.trim().to_string(), v.to_string()))
}

/// The settings of a properties file: `KEY=VALUE` lines (the key trimmed, the value without
/// its leading blanks, as Java's `Properties` reads it), blank lines and `#`/`!` comments.
fn parse_properties(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
            continue;
        }
        let Some((k, v)) = trimmed.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", n + 1));
        };
        let key = k.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("line {}: the key is empty or has blanks", n + 1));
        }
        out.push((key.to_string(), v.trim_start().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_properties_file_reads_like_kafka_client_properties() {
        let text = "# TLS and SASL\n\nsecurity.protocol=SASL_SSL\r\n! a comment\n  sasl.mechanism = SCRAM-SHA-512\nsasl.password= p=ss#word \n";
        assert_eq!(
            parse_properties(text).unwrap(),
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("sasl.password".into(), "p=ss#word ".into()),
            ]
        );
    }

    #[test]
    fn a_malformed_line_is_named_without_its_value() {
        let e = parse_properties("security.protocol=SSL\nhunter2\n").unwrap_err();
        assert_eq!(e, "line 2: expected KEY=VALUE");
        let e = parse_properties("=hunter2\n").unwrap_err();
        assert!(e.starts_with("line 1:") && !e.contains("hunter2"), "{e}");
        let e = parse_properties("sasl password=hunter2\n").unwrap_err();
        assert!(e.starts_with("line 1:") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn flags_override_the_file_and_a_missing_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("collect-kafka-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.properties");
        std::fs::write(&path, "linger.ms=5\nacks=all\n").unwrap();
        let o = KafkaOptions {
            options: vec![("linger.ms".into(), "20".into())],
            file: Some(path.clone()),
        };
        let all = o.resolve().unwrap();
        // librdkafka applies settings in order: the flag's comes last and wins.
        assert_eq!(
            all.last().unwrap(),
            &("linger.ms".to_string(), "20".to_string())
        );
        assert_eq!(all.len(), 3);
        let missing = KafkaOptions {
            options: Vec::new(),
            file: Some(dir.join("absent.properties")),
        };
        let e = format!("{:#}", missing.resolve().unwrap_err());
        assert!(e.contains("absent.properties"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
