//! The merchant's category tree as evaluation reads it: a rule scoped to a category matches its
//! descendants, so a line's categories are expanded with their ancestors once per evaluation.

use std::collections::HashMap;

/// Category id → parent id (top-level categories map to nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    parents: HashMap<String, Option<String>>,
}

impl Catalog {
    /// From `(category_id, parent_id)` pairs; an empty parent is top level.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Catalog {
            parents: pairs
                .into_iter()
                .map(|(id, parent)| (id, (!parent.is_empty()).then_some(parent)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    pub fn contains(&self, category_id: &str) -> bool {
        self.parents.contains_key(category_id)
    }

    /// `categories` with all their ancestors, each once, in first-seen order. A cycle (which
    /// the store refuses, but a hand-built catalog may have) stops the walk.
    pub fn with_ancestors<'a>(&'a self, categories: &'a [String]) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::with_capacity(categories.len() * 2);
        for c in categories {
            let mut current: Option<&str> = Some(c.as_str());
            while let Some(id) = current {
                if out.contains(&id) {
                    break;
                }
                out.push(id);
                current = self.parents.get(id).and_then(|p| p.as_deref());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_are_added_once() {
        let catalog = Catalog::new([
            ("drinks".to_owned(), String::new()),
            ("coffee".to_owned(), "drinks".to_owned()),
            ("espresso".to_owned(), "coffee".to_owned()),
        ]);
        let cats = vec![
            "espresso".to_owned(),
            "coffee".to_owned(),
            "misc".to_owned(),
        ];
        assert_eq!(
            catalog.with_ancestors(&cats),
            ["espresso", "coffee", "drinks", "misc"]
        );
        let cyclic = Catalog::new([
            ("a".to_owned(), "b".to_owned()),
            ("b".to_owned(), "a".to_owned()),
        ]);
        assert_eq!(cyclic.with_ancestors(&["a".to_owned()]), ["a", "b"]);
    }
}
