//! A project on disk: `DIR/mmloop.toml` (settings a person edits) and `DIR/.mmloop/`
//! (database, copied image blobs, reports). Copy the folder and it still works: nothing
//! outside it is referenced except images kept in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Inner, Store, StoreError, db};

/// Where a project keeps its files.
#[derive(Clone, Debug)]
pub struct ProjectPaths {
    pub root: PathBuf,
    pub dot: PathBuf,
    pub db: PathBuf,
    pub blobs: PathBuf,
    pub reports: PathBuf,
    pub audit_head: PathBuf,
    pub config: PathBuf,
}

impl ProjectPaths {
    pub fn new(root: &Path) -> Self {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let dot = root.join(".mmloop");
        ProjectPaths {
            db: dot.join("mmloop.db"),
            blobs: dot.join("blobs"),
            reports: dot.join("reports"),
            audit_head: dot.join("audit-head"),
            config: root.join("mmloop.toml"),
            dot,
            root,
        }
    }
}

/// Settings from `mmloop.toml`. Sections other stages own (engine rules, review) are kept
/// in `raw` for them to read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub project: ProjectSection,
    #[serde(default)]
    pub import: ImportSection,
    #[serde(skip)]
    pub raw: toml::Table,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProjectSection {
    pub name: String,
    /// A PostgreSQL URL (`postgres://user@host/db`) when the project's database is on a
    /// server; unset: SQLite in `.mmloop/mmloop.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportSection {
    /// Copy images into the project instead of referencing them in place.
    #[serde(default)]
    pub copy_images: bool,
    /// Images with more pixels are refused (decompression bombs); PIL's limit by default.
    #[serde(default = "default_max_pixels")]
    pub max_image_pixels: u64,
}

fn default_max_pixels() -> u64 {
    crate::images::ImageLimits::default().max_pixels
}

impl Default for ImportSection {
    fn default() -> Self {
        ImportSection { copy_images: false, max_image_pixels: default_max_pixels() }
    }
}

const CONFIG_TEMPLATE: &str = r#"# mmloop project settings.

[project]
name = "{name}"
{database}
[import]
# Copy images into .mmloop/blobs instead of referencing them where they are.
copy_images = false
# Refuse images with more pixels than this (decompression bombs); PIL's default limit.
max_image_pixels = 178956970
"#;

impl Config {
    fn load(path: &Path) -> Result<Config, StoreError> {
        let text = std::fs::read_to_string(path).map_err(|e| StoreError::IoPath { path: path.into(), source: e })?;
        let raw: toml::Table =
            toml::from_str(&text).map_err(|e| StoreError::Config(format!("{}: {e}", path.display())))?;
        let mut cfg: Config =
            raw.clone().try_into().map_err(|e| StoreError::Config(format!("{}: {e}", path.display())))?;
        cfg.raw = raw;
        Ok(cfg)
    }
}

impl Store {
    /// Creates a project in `dir` (made if missing), its database in `.mmloop/`.
    pub async fn init(dir: &Path, name: Option<&str>, actor: &str) -> Result<Store, StoreError> {
        Store::init_with(dir, name, actor, None).await
    }

    /// Creates a project in `dir` (made if missing) whose database is `database` (a
    /// PostgreSQL URL; `None`: SQLite in `.mmloop/`). `mmloop.toml` records it.
    pub async fn init_with(
        dir: &Path,
        name: Option<&str>,
        actor: &str,
        database: Option<&str>,
    ) -> Result<Store, StoreError> {
        let paths = ProjectPaths::new(dir);
        if paths.db.exists() {
            return Err(StoreError::AlreadyExists(paths.root));
        }
        if let Some(url) = database {
            check_database_url(url)?;
            if paths.config.exists() && Config::load(&paths.config)?.project.database.is_some() {
                return Err(StoreError::AlreadyExists(paths.root));
            }
        }
        if let Some(url) = database {
            // The server must take the project before its folder is made or says it lives there.
            let db = db::Db::open_postgres(url, true)?;
            let taken =
                db.read(|c| c.one("SELECT count(*) FROM project", &[], |r| r.get::<i64>(0))).await.map(|n| n > 0);
            db.close();
            if taken? {
                return Err(StoreError::Config(format!(
                    "{} already holds an mmloop project\n  hint: give each project a database of its own",
                    crate::pg::redact(url)
                )));
            }
        }
        for d in [&paths.root, &paths.dot, &paths.blobs, &paths.reports] {
            std::fs::create_dir_all(d).map_err(|e| StoreError::IoPath { path: d.clone(), source: e })?;
        }
        let name = name
            .map(String::from)
            .or_else(|| paths.root.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "mmloop".into());
        let database_line = match database {
            Some(url) => {
                format!("# The project's database (unset: SQLite in .mmloop/).\ndatabase = {}\n", toml_string(url))
            }
            None => String::new(),
        };
        let template = CONFIG_TEMPLATE.replace("{name}", &name.replace('"', "'")).replace("{database}", &database_line);
        let config_text = match std::fs::read_to_string(&paths.config) {
            Ok(text) if database.is_some() => Some(with_database(&text, &database_line)),
            Ok(_) => None,
            Err(_) => Some(template),
        };
        if let Some(text) = config_text {
            crate::fs::write_atomic(&paths.config, text.as_bytes())?;
        }
        let store = Store::open_paths(paths, true)?;
        let created = crate::now();
        let actor = actor.to_string();
        store
            .db()
            .write(move |conn| {
                let tx = conn.savepoint()?;
                conn.execute(
                    "INSERT INTO project (key, value) VALUES ('name', ?1), ('created', ?2)",
                    &[&name, &created],
                )?;
                crate::audit::append(
                    conn,
                    &actor,
                    "project.init",
                    "project",
                    None,
                    Some(&serde_json::json!({"name": name})),
                )?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        store.sync_audit_head().await?;
        Ok(store)
    }

    /// Opens the project in `dir`.
    pub async fn open(dir: &Path) -> Result<Store, StoreError> {
        let paths = ProjectPaths::new(dir);
        let on_server = paths.config.exists() && Config::load(&paths.config)?.project.database.is_some();
        if !on_server && !paths.db.exists() {
            return Err(StoreError::NotAProject(dir.to_path_buf()));
        }
        Store::open_paths(paths, false)
    }

    fn open_paths(paths: ProjectPaths, create: bool) -> Result<Store, StoreError> {
        let config = Config::load(&paths.config)?;
        let db = match &config.project.database {
            Some(url) => {
                // A second server's folder may hold only mmloop.toml: its own files (the audit
                // anchor it writes, reports) go under .mmloop/ as on the first.
                for d in [&paths.dot, &paths.blobs, &paths.reports] {
                    std::fs::create_dir_all(d).map_err(|e| StoreError::IoPath { path: d.clone(), source: e })?;
                }
                db::Db::open_postgres(url, create)?
            }
            None => db::Db::open(&paths.db, create)?,
        };
        Ok(Store {
            inner: Arc::new(Inner { paths, config, db, anchor: Default::default(), route_preview: Default::default() }),
        })
    }
}

/// Refuses a database URL this build cannot use, naming what it can.
fn check_database_url(url: &str) -> Result<(), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "{}: not a database this build can use\n  hint: give a PostgreSQL URL (postgres://user@host/db), or leave --database out for SQLite",
            crate::pg::redact(url)
        )))
    }
}

/// `s` as a TOML string.
pub(crate) fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// An existing `mmloop.toml` with the project's database set to `line` (replacing any).
pub(crate) fn with_database(text: &str, line: &str) -> String {
    let mut out = String::new();
    let mut in_project = false;
    let mut placed = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            if in_project && !placed {
                out.push_str(line);
                placed = true;
            }
            in_project = t == "[project]";
        } else if in_project
            && (t.starts_with("database ") || t.starts_with("database=") || t.starts_with("# The project's database"))
        {
            continue;
        }
        out.push_str(l);
        out.push('\n');
        if in_project && t == "[project]" && !placed {
            out.push_str(line);
            placed = true;
        }
    }
    if !placed {
        out.push_str("\n[project]\n");
        out.push_str(line);
    }
    out
}
