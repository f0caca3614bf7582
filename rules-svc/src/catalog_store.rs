//! The merchant's category tree as stored (CatalogService): the category SQL, the checks an
//! upsert must pass (parents exist or come in the same batch, no cycles, at most 1000), and
//! deletions that move children up to the deleted category's parent.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use kopilka_proto::rules as pb;
use kopilka_runtime::validate::Violations;
use kopilka_runtime::Timestamp;

use crate::error::Error;
use crate::store::{on_tx, Tx};

/// Most categories per upsert or delete call.
pub const MAX_BATCH: usize = 1000;
/// Longest category id.
pub const MAX_CATEGORY_ID: usize = 64;
/// Longest category name.
pub const MAX_NAME: usize = 256;

/// A stored category.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CategoryRow {
    pub category_id: String,
    pub name: String,
    /// '' = top level.
    pub parent_id: String,
}

impl CategoryRow {
    pub fn proto(&self) -> pb::Category {
        pb::Category {
            category_id: self.category_id.clone(),
            name: self.name.clone(),
            parent_id: self.parent_id.clone(),
        }
    }
}

impl Tx {
    /// The merchant's whole tree as `(category_id, parent_id)` pairs.
    pub async fn category_parents(
        &mut self,
        merchant: &str,
    ) -> Result<Vec<(String, String)>, Error> {
        Ok(on_tx!(self, c => sqlx::query_as(
            "SELECT category_id, parent_id FROM categories WHERE merchant_id = $1",
        )
        .bind(merchant).fetch_all(&mut **c).await?))
    }

    pub async fn category(
        &mut self,
        merchant: &str,
        id: &str,
    ) -> Result<Option<CategoryRow>, Error> {
        Ok(on_tx!(self, c => sqlx::query_as(
            "SELECT category_id, name, parent_id FROM categories WHERE merchant_id = $1 AND category_id = $2",
        )
        .bind(merchant).bind(id).fetch_optional(&mut **c).await?))
    }

    pub async fn upsert_category(
        &mut self,
        merchant: &str,
        row: &CategoryRow,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        on_tx!(self, c => sqlx::query(
            "INSERT INTO categories (merchant_id, category_id, name, parent_id, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (merchant_id, category_id) DO UPDATE SET name = excluded.name,
                 parent_id = excluded.parent_id, updated_at = excluded.updated_at",
        )
        .bind(merchant).bind(&row.category_id).bind(&row.name).bind(&row.parent_id)
        .bind(Timestamp::from(now))
        .execute(&mut **c).await.map(|_| ())?);
        Ok(())
    }

    /// Deletes a category after moving its children to its parent.
    pub async fn delete_category(
        &mut self,
        merchant: &str,
        row: &CategoryRow,
    ) -> Result<(), Error> {
        on_tx!(self, c => sqlx::query(
            "UPDATE categories SET parent_id = $3 WHERE merchant_id = $1 AND parent_id = $2",
        )
        .bind(merchant).bind(&row.category_id).bind(&row.parent_id)
        .execute(&mut **c).await.map(|_| ())?);
        on_tx!(self, c => sqlx::query(
            "DELETE FROM categories WHERE merchant_id = $1 AND category_id = $2",
        )
        .bind(merchant).bind(&row.category_id)
        .execute(&mut **c).await.map(|_| ())?);
        Ok(())
    }

    /// Categories ordered by id after `after`, children of `parent` only if given.
    pub async fn list_categories(
        &mut self,
        merchant: &str,
        parent: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<CategoryRow>, Error> {
        Ok(on_tx!(self, c => sqlx::query_as(
            "SELECT category_id, name, parent_id FROM categories
             WHERE merchant_id = $1 AND ($2 IS NULL OR parent_id = $2) AND ($3 IS NULL OR category_id > $3)
             ORDER BY category_id LIMIT $4",
        )
        .bind(merchant).bind(parent).bind(after).bind(limit)
        .fetch_all(&mut **c).await?))
    }
}

/// Field checks of an upsert that need no database: sizes, ids, duplicates, self-parents.
pub fn check_upsert(categories: &[pb::Category], v: &mut Violations) {
    if categories.is_empty() {
        v.add(
            "categories",
            format!("must hold 1 to {MAX_BATCH} categories"),
        );
        return;
    }
    if categories.len() > MAX_BATCH {
        v.limit("categories", MAX_BATCH, "categories");
        return;
    }
    let mut seen = HashSet::new();
    for (i, c) in categories.iter().enumerate() {
        let field = |f: &str| format!("categories[{i}].{f}");
        check_category_id(&field("category_id"), &c.category_id, v);
        if c.name.chars().count() > MAX_NAME {
            v.limit(&field("name"), MAX_NAME, "characters");
        }
        if !c.parent_id.is_empty() {
            check_category_id(&field("parent_id"), &c.parent_id, v);
        }
        if !c.category_id.is_empty() && c.parent_id == c.category_id {
            v.add(field("parent_id"), "a category cannot be its own parent");
        }
        if !seen.insert(c.category_id.as_str()) {
            v.add(
                field("category_id"),
                format!("`{}` appears twice in the batch", c.category_id),
            );
        }
    }
}

/// 1 to [`MAX_CATEGORY_ID`] characters (LIMIT_EXCEEDED above).
pub fn check_category_id(field: &str, id: &str, v: &mut Violations) {
    if id.is_empty() {
        v.add(field, format!("must be 1 to {MAX_CATEGORY_ID} characters"));
    } else if id.chars().count() > MAX_CATEGORY_ID {
        v.limit(field, MAX_CATEGORY_ID, "characters");
    }
}

/// Checks the batch against the stored tree: every parent exists after the upsert, and no
/// category becomes its own ancestor. Returns the ids that already existed.
pub fn check_tree(
    existing: &[(String, String)],
    categories: &[pb::Category],
    v: &mut Violations,
) -> HashSet<String> {
    let mut parents: HashMap<&str, &str> = existing
        .iter()
        .map(|(id, parent)| (id.as_str(), parent.as_str()))
        .collect();
    let before: HashSet<String> = categories
        .iter()
        .filter(|c| parents.contains_key(c.category_id.as_str()))
        .map(|c| c.category_id.clone())
        .collect();
    for c in categories {
        parents.insert(&c.category_id, &c.parent_id);
    }
    for (i, c) in categories.iter().enumerate() {
        if !c.parent_id.is_empty() && !parents.contains_key(c.parent_id.as_str()) {
            v.add(
                format!("categories[{i}].parent_id"),
                format!(
                    "unknown category `{}`: it must exist or be in the same batch",
                    c.parent_id
                ),
            );
            continue;
        }
        // Walk up at most the tree's size: coming back to the start is a cycle; a longer walk
        // is a cycle elsewhere that the member's own check reports.
        let mut path = vec![c.category_id.as_str()];
        let mut current = c.parent_id.as_str();
        while !current.is_empty() && path.len() <= parents.len() {
            if current == c.category_id {
                path.push(current);
                v.add(
                    format!("categories[{i}].parent_id"),
                    format!("makes a cycle: {}", path.join(" → ")),
                );
                break;
            }
            path.push(current);
            current = parents.get(current).copied().unwrap_or("");
        }
    }
    before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(id: &str, parent: &str) -> pb::Category {
        pb::Category {
            category_id: id.into(),
            name: id.into(),
            parent_id: parent.into(),
        }
    }

    #[test]
    fn parents_may_come_in_the_same_batch_in_any_order() {
        let mut v = Violations::new();
        let existing = vec![("drinks".to_owned(), String::new())];
        let before = check_tree(
            &existing,
            &[
                cat("espresso", "coffee"),
                cat("coffee", "drinks"),
                cat("drinks", ""),
            ],
            &mut v,
        );
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(before, HashSet::from(["drinks".to_owned()]));
    }

    #[test]
    fn unknown_parents_and_cycles_are_refused_with_their_paths() {
        let mut v = Violations::new();
        let existing = vec![
            ("a".to_owned(), String::new()),
            ("b".to_owned(), "a".to_owned()),
        ];
        check_tree(&existing, &[cat("a", "b"), cat("x", "nowhere")], &mut v);
        let v = v.fields();
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].0, "categories[0].parent_id");
        assert!(v[0].1.contains("a → b → a"), "{}", v[0].1);
        assert_eq!(v[1].0, "categories[1].parent_id");
    }

    #[test]
    fn batch_shape_is_checked() {
        let mut v = Violations::new();
        check_upsert(&[cat("a", "a"), cat("a", ""), cat("", "")], &mut v);
        let fields: Vec<&str> = v.fields().iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "categories[0].parent_id",
                "categories[1].category_id",
                "categories[2].category_id"
            ]
        );
        let mut v = Violations::new();
        check_upsert(&[], &mut v);
        assert_eq!(v.fields()[0].0, "categories");
    }
}
