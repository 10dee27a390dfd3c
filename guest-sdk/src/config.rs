//! Parsing the operator's configuration document into the author's type.

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};

use crate::ConfigFormat;

/// Parses a module's configuration. A module without a configuration file is parsed
/// from an empty TOML document, so a type whose fields all have defaults needs no file.
pub(crate) fn parse<T: DeserializeOwned>(format: ConfigFormat, text: &str) -> Result<T, String> {
    match format {
        ConfigFormat::None => toml::from_str("")
            .map_err(|e| format!("this policy needs a configuration file: {}", e.message())),
        ConfigFormat::Toml => toml::from_str(text).map_err(|e| toml_error(text, &e)),
        ConfigFormat::Json => {
            serde_json::from_str(text).map_err(|e| format!("in JSON configuration: {e}"))
        }
    }
}

/// One line: where in the document, and what is wrong.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("in TOML configuration at line {line}, column {column}: {message}")
        }
        None => format!("in TOML configuration: {message}"),
    }
}

/// The configuration of a policy that takes none. A configuration file with any key
/// in it is an error, so that an operator's setting is never silently ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoConfig;

impl<'de> Deserialize<'de> for NoConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let keys = BTreeMap::<String, IgnoredAny>::deserialize(deserializer)?;
        match keys.keys().next() {
            None => Ok(NoConfig),
            Some(key) => Err(serde::de::Error::custom(format!(
                "this policy takes no configuration, but the file sets `{key}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        groups: Vec<String>,
    }

    #[test]
    fn missing_file_parses_as_empty_document() {
        let s: Sample = parse(ConfigFormat::None, "").unwrap();
        assert!(s.groups.is_empty());
    }

    #[test]
    fn toml_and_json_documents_parse_alike() {
        let a: Sample = parse(ConfigFormat::Toml, "groups = [\"sre\"]").unwrap();
        let b: Sample = parse(ConfigFormat::Json, "{\"groups\": [\"sre\"]}").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key_and_line() {
        let err = parse::<Sample>(ConfigFormat::Toml, "groups = []\ngrups = []").unwrap_err();
        assert!(
            err.contains("grups") && err.contains("line 2, column 1"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn no_config_accepts_an_empty_document_and_refuses_keys() {
        parse::<NoConfig>(ConfigFormat::None, "").unwrap();
        parse::<NoConfig>(ConfigFormat::Toml, "").unwrap();
        let err = parse::<NoConfig>(ConfigFormat::Toml, "x = 1").unwrap_err();
        assert!(
            err.contains("takes no configuration") && err.contains("`x`"),
            "{err}"
        );
    }
}
