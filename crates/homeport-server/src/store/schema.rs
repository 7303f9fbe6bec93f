//! One schema definition for both backends: migrations are lists of
//! changes in abstract column types, rendered to each dialect's DDL. The
//! version is SQLite's `user_version` or the `homeport_schema_version`
//! table in PostgreSQL; migration *n* is applied once, in a transaction
//! with its version bump.

/// A column type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// Text (JSON documents are stored as text).
    Text,
    /// A 64-bit integer (timestamps in ms).
    Int,
}

/// A column.
#[derive(Clone, Copy, Debug)]
pub struct Col {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub ty: Ty,
}

/// One schema change.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// A table (every column `NOT NULL`) with a primary key.
    Table {
        /// Its name.
        name: &'static str,
        /// Its columns.
        cols: &'static [Col],
        /// The primary key's columns.
        key: &'static [&'static str],
    },
    /// An index.
    Index {
        /// Its name.
        name: &'static str,
        /// The table.
        table: &'static str,
        /// The columns.
        cols: &'static [&'static str],
    },
}

/// A backend's SQL dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

const fn col(name: &'static str, ty: Ty) -> Col {
    Col { name, ty }
}

/// The migrations, in order: the index + 1 is the version.
pub const MIGRATIONS: &[&[Change]] = &[
    // 1: fetched key responses (the notary) and cached values.
    &[
        Change::Table {
            name: "server_keys",
            cols: &[
                col("server_name", Ty::Text),
                col("json", Ty::Text),
                col("fetched_at", Ty::Int),
                col("valid_until_ts", Ty::Int),
            ],
            key: &["server_name"],
        },
        Change::Table {
            name: "kv",
            cols: &[
                col("namespace", Ty::Text),
                col("key", Ty::Text),
                col("value", Ty::Text),
                col("expires", Ty::Int),
            ],
            key: &["namespace", "key"],
        },
    ],
    // 2: leases shared by instances, and expiry scans.
    &[
        Change::Table {
            name: "leases",
            cols: &[
                col("name", Ty::Text),
                col("holder", Ty::Text),
                col("expires", Ty::Int),
            ],
            key: &["name"],
        },
        Change::Index {
            name: "kv_expires",
            table: "kv",
            cols: &["expires"],
        },
    ],
];

/// The version this build migrates to.
pub fn latest() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// The tables the latest schema has (integrity checks).
pub fn tables() -> Vec<&'static str> {
    MIGRATIONS
        .iter()
        .flat_map(|m| m.iter())
        .filter_map(|c| match c {
            Change::Table { name, .. } => Some(*name),
            Change::Index { .. } => None,
        })
        .collect()
}

fn ty(t: Ty, d: Dialect) -> &'static str {
    match (t, d) {
        (Ty::Text, _) => "TEXT",
        (Ty::Int, Dialect::Sqlite) => "INTEGER",
        (Ty::Int, Dialect::Postgres) => "BIGINT",
    }
}

/// One change as DDL.
pub fn render(c: &Change, d: Dialect) -> String {
    match c {
        Change::Table { name, cols, key } => {
            let cols: Vec<String> = cols
                .iter()
                .map(|c| format!("{} {} NOT NULL", c.name, ty(c.ty, d)))
                .collect();
            format!(
                "CREATE TABLE {name} ({}, PRIMARY KEY ({}))",
                cols.join(", "),
                key.join(", ")
            )
        }
        Change::Index { name, table, cols } => {
            format!("CREATE INDEX {name} ON {table} ({})", cols.join(", "))
        }
    }
}

/// Migration `index` (0-based) as statements.
pub fn statements(index: usize, d: Dialect) -> Vec<String> {
    MIGRATIONS
        .get(index)
        .map(|m| m.iter().map(|c| render(c, d)).collect())
        .unwrap_or_default()
}

/// The error for a database migrated by a newer homeport.
pub fn too_new(found: i64) -> String {
    format!(
        "the store's schema is version {found}, newer than this homeport knows ({}); \
         run the homeport that migrated it, or a newer one",
        latest()
    )
}

/// Tables whose presence means "this is a homeserver's database": homeport
/// refuses to share it (DESIGN.md: never the homeserver's own database).
pub const HOMESERVER_TABLES: &[&str] = &["events", "state_groups", "room_memberships"];

/// The error for a database that has the homeserver table `table`.
pub fn homeserver_database(table: &str) -> String {
    format!(
        "this looks like a homeserver's database (it has a table `{table}`); \
         homeport needs a database of its own"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_dialects() {
        let s = statements(0, Dialect::Sqlite);
        assert_eq!(
            s[0],
            "CREATE TABLE server_keys (server_name TEXT NOT NULL, json TEXT NOT NULL, \
             fetched_at INTEGER NOT NULL, valid_until_ts INTEGER NOT NULL, PRIMARY KEY (server_name))"
        );
        let p = statements(0, Dialect::Postgres);
        assert!(p[1].contains("expires BIGINT NOT NULL"), "{}", p[1]);
        assert!(p[1].ends_with("PRIMARY KEY (namespace, key))"), "{}", p[1]);
        assert_eq!(
            statements(1, Dialect::Postgres)[1],
            "CREATE INDEX kv_expires ON kv (expires)"
        );
        assert!(statements(99, Dialect::Sqlite).is_empty());
        assert_eq!(tables(), ["server_keys", "kv", "leases"]);
        assert_eq!(latest(), 2);
    }
}
