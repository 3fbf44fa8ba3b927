//! What a refused `--resume` tells the user: only the settings that differ from the run's, so
//! a changed epoch count reads as one line instead of the whole configuration to compare.

use serde_json::Value;

/// One line per setting where `requested` differs from `saved` (both run identities as JSON),
/// as `name: saved S, requested R`. Names are the fields' paths, without the `train` and
/// `context` levels that every run setting sits under (`epochs`, `set`, `encoder.backbone`).
pub(crate) fn differences(saved: &Value, requested: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    compare(&[], saved, requested, &mut lines);
    lines
}

fn compare(path: &[&str], saved: &Value, requested: &Value, lines: &mut Vec<String>) {
    match (saved, requested) {
        (Value::Object(old), Value::Object(new)) => {
            let keys = old.keys().chain(new.keys().filter(|key| !old.contains_key(*key)));
            for key in keys {
                let field = [path, &[key.as_str()]].concat();
                compare(&field, old.get(key).unwrap_or(&Value::Null), new.get(key).unwrap_or(&Value::Null), lines);
            }
        }
        _ if saved != requested => {
            let name = path.iter().filter(|part| !matches!(**part, "train" | "context")).copied().collect::<Vec<_>>();
            lines.push(format!("{}: saved {saved}, requested {requested}", name.join(".")));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::differences;
    use serde_json::json;

    #[test]
    fn only_the_differing_leaves_are_named() {
        let saved = json!({"train": {"epochs": 2, "seed": 0, "context": {"set": ["K=16"], "limit": null}},
                           "encoder": {"backbone": "resnet18"}, "objective": "simclr"});
        let requested = json!({"train": {"epochs": 3, "seed": 0, "context": {"set": ["K=16"], "limit": 60}},
                               "encoder": {"backbone": "resnet18"}, "objective": "simclr", "new": true});
        assert_eq!(
            differences(&saved, &requested),
            ["limit: saved null, requested 60", "epochs: saved 2, requested 3", "new: saved null, requested true"]
        );
        assert!(differences(&saved, &saved).is_empty());
    }
}
