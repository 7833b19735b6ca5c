//! Counts a person reads to see where a project stands.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::sql::Conn;
use crate::versions::VersionInfo;
use crate::{Store, StoreError};

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub name: String,
    pub items: u64,
    pub by_task: BTreeMap<String, u64>,
    pub by_status: BTreeMap<String, u64>,
    pub by_split: BTreeMap<String, u64>,
    pub images: u64,
    pub image_bytes: u64,
    pub images_copied: u64,
    pub candidates: u64,
    pub items_with_candidates: u64,
    pub versions: u64,
    pub head: Option<VersionInfo>,
    /// Mutations recorded since the latest version.
    pub changes_since_head: u64,
    pub audit_events: u64,
}

fn counts(c: Conn, sql: &str) -> Result<BTreeMap<String, u64>, StoreError> {
    let rows = c.query(sql, &[], |r| {
        Ok((r.get::<Option<String>>(0)?.unwrap_or_else(|| "-".into()), r.get::<i64>(1)? as u64))
    })?;
    Ok(rows.into_iter().collect())
}

impl Store {
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        let head = match self.version("HEAD").await {
            Ok(v) => Some(v),
            Err(StoreError::NoVersions) => None,
            Err(e) => return Err(e),
        };
        self.db()
            .read(move |c| {
                let one = |sql: &str| -> Result<u64, StoreError> { Ok(c.one(sql, &[], |r| r.get::<i64>(0))? as u64) };
                let name: String =
                    c.optional("SELECT value FROM project WHERE key = 'name'", &[], |r| r.get(0))?.unwrap_or_default();
                let head_seq: i64 = c.one("SELECT COALESCE(MAX(audit_seq), 0) FROM versions", &[], |r| r.get(0))?;
                let changes: i64 = c.one(
                    "SELECT COUNT(*) FROM events WHERE seq > ?1 AND action NOT IN ('commit', 'project.init')",
                    &[&head_seq],
                    |r| r.get(0),
                )?;
                Ok(Stats {
                    name,
                    items: one("SELECT COUNT(*) FROM items")?,
                    by_task: counts(c, "SELECT task, COUNT(*) FROM items GROUP BY task")?,
                    by_status: counts(
                        c,
                        "SELECT COALESCE(l.status, 'pending'), COUNT(*) FROM items i LEFT JOIN labels l ON l.id = i.label_id GROUP BY 1",
                    )?,
                    by_split: counts(c, "SELECT split, COUNT(*) FROM items GROUP BY split")?,
                    images: one("SELECT COUNT(*) FROM images")?,
                    image_bytes: one("SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM images")?,
                    images_copied: one("SELECT COUNT(*) FROM images WHERE copied = 1")?,
                    candidates: one("SELECT COUNT(*) FROM candidates")?,
                    items_with_candidates: one("SELECT COUNT(DISTINCT item_id) FROM candidates")?,
                    versions: one("SELECT COUNT(*) FROM versions")?,
                    head,
                    changes_since_head: changes as u64,
                    audit_events: one("SELECT COUNT(*) FROM events")?,
                })
            })
            .await
    }
}
