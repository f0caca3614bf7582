//! The program document's human form: a `kopilka.rules.v1.Program` written as YAML or JSON in
//! the proto3 JSON mapping (proto field names, enum values by name, decimals as strings). One
//! schema — the proto message — serves the API and the files people write.

use kopilka_proto::rules::Program;

/// The demo café program `kopilka dev` publishes (`rules-svc/programs/demo-cafe.yaml`).
pub const DEMO_PROGRAM_YAML: &str = include_str!("../programs/demo-cafe.yaml");

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not a valid program document: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("not a valid program document: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads a program from YAML (JSON is valid YAML too).
pub fn from_yaml(text: &str) -> Result<Program, DocumentError> {
    Ok(serde_yaml::from_str(text)?)
}

/// Writes a program as YAML.
pub fn to_yaml(program: &Program) -> Result<String, DocumentError> {
    Ok(serde_yaml::to_string(program)?)
}

/// Writes a program as JSON.
pub fn to_json(program: &Program) -> Result<String, DocumentError> {
    Ok(serde_json::to_string_pretty(program)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kopilka_proto::rules::rule::Effect;

    #[test]
    fn demo_program_reads_with_every_rule() {
        let program = from_yaml(DEMO_PROGRAM_YAML).expect("the demo program parses");
        assert_eq!(program.name, "Demo café");
        let ids: Vec<&str> = program.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "sale-no-points",
                "receipt-brackets",
                "happy-hours",
                "birthday",
                "start-bonus"
            ]
        );
        let Some(Effect::AccrueBrackets(table)) = &program.rules[1].effect else {
            panic!(
                "receipt-brackets is a bracket table: {:?}",
                program.rules[1].effect
            );
        };
        assert_eq!(table.brackets.len(), 3);
    }

    #[test]
    fn yaml_and_json_round_trip() {
        let program = from_yaml(DEMO_PROGRAM_YAML).unwrap();
        assert_eq!(from_yaml(&to_yaml(&program).unwrap()).unwrap(), program);
        assert_eq!(from_yaml(&to_json(&program).unwrap()).unwrap(), program);
    }

    #[test]
    fn unknown_fields_and_enum_values_are_refused() {
        assert!(from_yaml("name: x\nbogus_field: 1\n").is_err());
        assert!(from_yaml("name: x\nsettings: {money_rounding: ROUNDING_SIDEWAYS}\n").is_err());
    }
}
