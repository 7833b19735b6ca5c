//! One SQL surface over both databases the store runs on, SQLite (embedded, the default) and
//! PostgreSQL (networked, for many reviewers and several servers).
//!
//! Store code writes one statement for both: parameters as `?1`, `?2`, ... (rewritten to
//! `$1`, `$2`, ... for PostgreSQL), standard SQL both accept (`ON CONFLICT`, `RETURNING`,
//! `CAST`), and branches on [`Conn::dialect`] only where the two genuinely differ (JSON
//! functions, locking). Integers are 64-bit on both sides: the PostgreSQL schema declares
//! every integer column `BIGINT`, and callers bind `i64`, never `i32` or `bool`.
//!
//! Statements are prepared once per connection and cached (rusqlite's statement cache; a map
//! of prepared statements on each PostgreSQL connection).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use crate::StoreError;

/// Which SQL a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a statement parameter, as either driver takes it.
///
/// PostgreSQL types every parameter from its context, and narrower than SQLite would: `?1 = 0`
/// makes `?1` an `int4`, `SELECT ?1` a `text`. An [`Arg`] converts to whatever type the server
/// chose (an integer into `int4`, `int2`, `float8`, `bool` or `text`), so one statement binds
/// the same Rust values on both databases; a value that does not fit is an error, never a
/// silent truncation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// Anything a statement parameter can be bound to.
pub(crate) trait Param: Sync {
    fn arg(&self) -> Arg<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn arg(&self) -> Arg<'_> {
                Arg::Int(i64::from(*self))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u16, u8, bool);

impl Param for f64 {
    fn arg(&self) -> Arg<'_> {
        Arg::Real(*self)
    }
}

impl Param for f32 {
    fn arg(&self) -> Arg<'_> {
        Arg::Real(f64::from(*self))
    }
}

impl Param for str {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(self)
    }
}

impl Param for String {
    fn arg(&self) -> Arg<'_> {
        Arg::Text(self)
    }
}

impl Param for [u8] {
    fn arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}

impl Param for Vec<u8> {
    fn arg(&self) -> Arg<'_> {
        Arg::Blob(self)
    }
}

impl<T: Param + ?Sized> Param for &T {
    fn arg(&self) -> Arg<'_> {
        (**self).arg()
    }
}

impl<T: Param> Param for Option<T> {
    fn arg(&self) -> Arg<'_> {
        self.as_ref().map_or(Arg::Null, Param::arg)
    }
}

/// An owned parameter, for statements whose parameters are gathered at run time (filters).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Int(i64),
    Real(f64),
    Text(String),
}

impl Param for Value {
    fn arg(&self) -> Arg<'_> {
        match self {
            Value::Int(v) => Arg::Int(*v),
            Value::Real(v) => Arg::Real(*v),
            Value::Text(s) => Arg::Text(s),
        }
    }
}

/// A value of any column type, as stored: what `mmloop migrate` carries from one database to
/// the other.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Param for Cell {
    fn arg(&self) -> Arg<'_> {
        match self {
            Cell::Null => Arg::Null,
            Cell::Int(v) => Arg::Int(*v),
            Cell::Real(v) => Arg::Real(*v),
            Cell::Text(s) => Arg::Text(s),
            Cell::Blob(b) => Arg::Blob(b),
        }
    }
}

impl Cell {
    /// Writes the cell as a field of PostgreSQL's `COPY ... FROM STDIN` text format.
    fn write_copy_field(&self, out: &mut Vec<u8>) {
        match self {
            Cell::Null => out.extend_from_slice(b"\\N"),
            Cell::Int(v) => out.extend_from_slice(v.to_string().as_bytes()),
            Cell::Real(v) => out.extend_from_slice(v.to_string().as_bytes()),
            Cell::Text(s) => {
                for b in s.bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        _ => out.push(b),
                    }
                }
            }
            // bytea's hex input `\x...`, its backslash escaped for the text format.
            Cell::Blob(b) => {
                out.extend_from_slice(b"\\\\x");
                out.extend_from_slice(hex::encode(b).as_bytes());
            }
        }
    }
}

impl Column for Cell {
    fn lite(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Self> {
        use rusqlite::types::ValueRef;
        Ok(match r.get_ref(i)? {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(v) => Cell::Int(v),
            ValueRef::Real(v) => Cell::Real(v),
            ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        })
    }
    fn pg_opt(r: &postgres::Row, i: usize) -> Result<Option<Self>, StoreError> {
        use postgres::types::Type;
        let cell = match *pg_type(r, i)? {
            Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL => i64::pg_opt(r, i)?.map(Cell::Int),
            Type::FLOAT8 | Type::FLOAT4 => f64::pg_opt(r, i)?.map(Cell::Real),
            Type::BYTEA => Vec::<u8>::pg_opt(r, i)?.map(Cell::Blob),
            _ => String::pg_opt(r, i)?.map(Cell::Text),
        };
        Ok(Some(cell.unwrap_or(Cell::Null)))
    }
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Arg::Null => ValueRef::Null,
            Arg::Int(v) => ValueRef::Integer(v),
            Arg::Real(v) => ValueRef::Real(v),
            Arg::Text(s) => ValueRef::Text(s.as_bytes()),
            Arg::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl postgres::types::ToSql for Arg<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        let text_like = matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN);
        match *self {
            Arg::Null => Ok(IsNull::Yes),
            Arg::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::FLOAT8 => (v as f64).to_sql(ty, out),
                Type::FLOAT4 => (v as f32).to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                _ if text_like => v.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound to a {ty} parameter").into()),
            },
            Arg::Real(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (v as f32).to_sql(ty, out),
                _ if text_like => v.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("a number cannot be bound to a {ty} parameter").into()),
            },
            Arg::Text(s) => s.to_sql(ty, out),
            Arg::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A connection to either database, as store code sees it.
#[derive(Clone, Copy)]
pub(crate) enum Conn<'c> {
    Lite(&'c rusqlite::Connection),
    Pg(&'c PgConn),
}

impl<'c> From<&'c rusqlite::Connection> for Conn<'c> {
    fn from(c: &'c rusqlite::Connection) -> Self {
        Conn::Lite(c)
    }
}

impl<'c> From<&'c rusqlite::Savepoint<'_>> for Conn<'c> {
    fn from(c: &'c rusqlite::Savepoint<'_>) -> Self {
        Conn::Lite(c)
    }
}

impl<'c> From<&'c rusqlite::Transaction<'_>> for Conn<'c> {
    fn from(c: &'c rusqlite::Transaction<'_>) -> Self {
        Conn::Lite(c)
    }
}

/// A PostgreSQL connection with the statements prepared on it.
pub(crate) struct PgConn {
    client: RefCell<postgres::Client>,
    statements: RefCell<HashMap<String, postgres::Statement>>,
}

impl PgConn {
    pub(crate) fn new(client: postgres::Client) -> PgConn {
        PgConn { client: RefCell::new(client), statements: RefCell::new(HashMap::new()) }
    }

    /// Whether the server closed this connection (restarted, or the connection broke).
    pub(crate) fn is_closed(&self) -> bool {
        self.client.borrow().is_closed()
    }

    fn prepared(&self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(st) = self.statements.borrow().get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.borrow_mut().prepare(&pg_sql(sql))?;
        self.statements.borrow_mut().insert(sql.to_string(), st.clone());
        Ok(st)
    }

    fn rows(&self, sql: &str, params: &[&dyn Param]) -> Result<Vec<postgres::Row>, StoreError> {
        let st = self.prepared(sql)?;
        let args: Vec<Arg> = params.iter().map(|p| p.arg()).collect();
        Ok(self.client.borrow_mut().query(&st, &pg_args(&args))?)
    }
}

fn pg_args<'a>(args: &'a [Arg<'a>]) -> Vec<&'a (dyn postgres::types::ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn postgres::types::ToSql + Sync)).collect()
}

/// Rewrites SQLite's numbered parameters (`?1`, and `?` for "one more than the last") into
/// PostgreSQL's `$1`, leaving string literals, quoted names and comments alone.
pub(crate) fn pg_sql(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    let mut last = 0u32;
    while let Some((_, c)) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for (_, d) in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek().is_some_and(|&(_, d)| d == '-') => {
                out.push(c);
                for (_, d) in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let mut digits = String::new();
                while let Some(&(_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                    digits.push(d);
                    chars.next();
                }
                let n = if digits.is_empty() { last + 1 } else { digits.parse().unwrap_or(last + 1) };
                last = last.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

impl<'c> Conn<'c> {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Conn::Lite(_) => Dialect::Sqlite,
            Conn::Pg(_) => Dialect::Postgres,
        }
    }

    /// Runs one statement; returns the number of rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<u64, StoreError> {
        match self {
            Conn::Lite(c) => {
                let n = c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params.iter().map(|p| p.arg())))?;
                Ok(n as u64)
            }
            Conn::Pg(c) => {
                let st = c.prepared(sql)?;
                let args: Vec<Arg> = params.iter().map(|p| p.arg()).collect();
                Ok(c.client.borrow_mut().execute(&st, &pg_args(&args))?)
            }
        }
    }

    /// Runs statements without parameters (schema changes, transaction control).
    pub(crate) fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Conn::Lite(c) => Ok(c.execute_batch(sql)?),
            Conn::Pg(c) => Ok(c.client.borrow_mut().batch_execute(sql)?),
        }
    }

    /// Calls `f` on every row, in order. `f` may run other statements on this connection.
    pub(crate) fn each(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match self {
            Conn::Lite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params.iter().map(|p| p.arg())))?;
                while let Some(r) = rows.next()? {
                    f(&Row::Lite(r))?;
                }
                Ok(())
            }
            Conn::Pg(c) => {
                for r in c.rows(sql, params)? {
                    f(&Row::Pg(&r))?;
                }
                Ok(())
            }
        }
    }

    /// Rows whose `column` is one of `values`: `SELECT ... WHERE` + `column IN (...)` +
    /// `rest` (more conditions, an ORDER BY that holds within a chunk of values). PostgreSQL
    /// takes the whole list as one array parameter (`= ANY(?1)`, whose plan does not depend on
    /// how many values come); SQLite a fixed-size chunk of parameters at a time, padded with
    /// NULL, so either statement is prepared once.
    pub(crate) fn query_in<V: Param, T>(
        &self,
        sql: &str,
        column: &str,
        values: &[V],
        rest: &str,
        mut f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        if values.is_empty() {
            return Ok(out);
        }
        match self {
            Conn::Lite(_) => {
                const CHUNK: usize = 256;
                let marks: Vec<String> = (1..=CHUNK).map(|i| format!("?{i}")).collect();
                let sql = format!("{sql} {column} IN ({}){rest}", marks.join(", "));
                let none: Option<i64> = None;
                for chunk in values.chunks(CHUNK) {
                    let mut params: Vec<&dyn Param> = chunk.iter().map(|v| v as &dyn Param).collect();
                    params.resize(CHUNK, &none);
                    self.each(&sql, &params, |r| {
                        out.push(f(r)?);
                        Ok(())
                    })?;
                }
            }
            Conn::Pg(c) => {
                let st = c.prepared(&format!("{sql} {column} = ANY(?1){rest}"))?;
                for chunk in values.chunks(1 << 16) {
                    let args: Vec<Arg> = chunk.iter().map(|v| v.arg()).collect();
                    let list: &[Arg] = &args;
                    let rows = c.client.borrow_mut().query(&st, &[&list])?;
                    for r in &rows {
                        out.push(f(&Row::Pg(r))?);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every row, mapped by `f`.
    pub(crate) fn query<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.each(sql, params, |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row mapped by `f`, or `None` when there is none.
    pub(crate) fn optional<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match self {
            Conn::Lite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params.iter().map(|p| p.arg())))?;
                rows.next()?.map(|r| f(&Row::Lite(r))).transpose()
            }
            Conn::Pg(c) => c.rows(sql, params)?.first().map(|r| f(&Row::Pg(r))).transpose(),
        }
    }

    /// The first row mapped by `f`; an error when there is none.
    pub(crate) fn one<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.optional(sql, params, f)?.ok_or_else(|| {
            StoreError::Internal(format!("no row from: {}", sql.split_whitespace().collect::<Vec<_>>().join(" ")))
        })
    }

    /// Appends `rows` to `table` (its `columns`, in order): PostgreSQL's `COPY`, or prepared
    /// inserts on SQLite.
    pub(crate) fn copy_in(&self, table: &str, columns: &[&str], rows: &[Vec<Cell>]) -> Result<(), StoreError> {
        match self {
            Conn::Lite(_) => {
                let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
                let sql = format!("INSERT INTO {table} ({}) VALUES ({})", columns.join(", "), marks.join(", "));
                for row in rows {
                    let params: Vec<&dyn Param> = row.iter().map(|c| c as &dyn Param).collect();
                    self.execute(&sql, &params)?;
                }
                Ok(())
            }
            Conn::Pg(c) => {
                use std::io::Write as _;
                let mut data = Vec::with_capacity(rows.len() * 64);
                for row in rows {
                    for (i, cell) in row.iter().enumerate() {
                        if i > 0 {
                            data.push(b'\t');
                        }
                        cell.write_copy_field(&mut data);
                    }
                    data.push(b'\n');
                }
                let mut client = c.client.borrow_mut();
                let mut w = client.copy_in(&format!("COPY {table} ({}) FROM STDIN", columns.join(", ")))?;
                w.write_all(&data).map_err(StoreError::Io)?;
                w.finish()?;
                Ok(())
            }
        }
    }

    /// Opens a savepoint: its changes stand or fall together. Dropped without
    /// [`Savepoint::commit`], it rolls them back.
    pub(crate) fn savepoint(&self) -> Result<Savepoint<'c>, StoreError> {
        self.batch("SAVEPOINT mmloop")?;
        Ok(Savepoint { conn: *self, done: false })
    }
}

/// See [`Conn::savepoint`]. Savepoints of the same name nest: each release or rollback
/// applies to the newest one open.
pub(crate) struct Savepoint<'c> {
    conn: Conn<'c>,
    done: bool,
}

impl<'c> Savepoint<'c> {
    pub(crate) fn commit(mut self) -> Result<(), StoreError> {
        self.done = true;
        self.conn.batch("RELEASE SAVEPOINT mmloop")
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.batch("ROLLBACK TO SAVEPOINT mmloop; RELEASE SAVEPOINT mmloop");
            // Appends it held are gone: the writer's cached head with them.
            crate::pg::group_forget_head();
        }
    }
}

/// One result row of either database.
pub(crate) enum Row<'r> {
    Lite(&'r rusqlite::Row<'r>),
    Pg(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `i` (from 0) as a `T`.
    pub(crate) fn get<T: Column>(&self, i: usize) -> Result<T, StoreError> {
        match self {
            Row::Lite(r) => Ok(T::lite(r, i)?),
            Row::Pg(r) => T::pg(r, i),
        }
    }
}

/// A Rust type a column reads into, from either database. PostgreSQL's narrower integer and
/// float types read into `i64` and `f64` as SQLite's do.
pub(crate) trait Column: Sized {
    fn lite(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Self>;
    fn pg_opt(r: &postgres::Row, i: usize) -> Result<Option<Self>, StoreError>;
    fn pg(r: &postgres::Row, i: usize) -> Result<Self, StoreError> {
        Self::pg_opt(r, i)?.ok_or_else(|| {
            StoreError::Internal(format!("column {:?} is NULL", r.columns().get(i).map_or("?", |c| c.name())))
        })
    }
}

impl<T: Column + rusqlite::types::FromSql> Column for Option<T> {
    fn lite(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn pg_opt(r: &postgres::Row, i: usize) -> Result<Option<Self>, StoreError> {
        Ok(Some(T::pg_opt(r, i)?))
    }
}

fn pg_type(r: &postgres::Row, i: usize) -> Result<&postgres::types::Type, StoreError> {
    r.columns().get(i).map(|c| c.type_()).ok_or_else(|| StoreError::Internal(format!("no column {i} in the row")))
}

impl Column for i64 {
    fn lite(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn pg_opt(r: &postgres::Row, i: usize) -> Result<Option<Self>, StoreError> {
        use postgres::types::Type;
        Ok(match *pg_type(r, i)? {
            Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(i64::from),
            Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(i64::from),
            Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(i64::from),
            _ => r.try_get(i)?,
        })
    }
}

impl Column for f64 {
    fn lite(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn pg_opt(r: &postgres::Row, i: usize) -> Result<Option<Self>, StoreError> {
        use postgres::types::Type;
        Ok(match *pg_type(r, i)? {
            Type::FLOAT4 => r.try_get::<_, Option<f32>>(i)?.map(f64::from),
            Type::INT8 | Type::INT4 | Type::INT2 => i64::pg_opt(r, i)?.map(|v| v as f64),
            _ => r.try_get(i)?,
        })
    }
}

impl Column for bool {
    fn lite(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn pg_opt(r: &postgres::Row, i: usize) -> Result<Option<Self>, StoreError> {
        Ok(match *pg_type(r, i)? {
            postgres::types::Type::BOOL => r.try_get(i)?,
            _ => i64::pg_opt(r, i)?.map(|v| v != 0),
        })
    }
}

impl Column for String {
    fn lite(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn pg_opt(r: &postgres::Row, i: usize) -> Result<Option<Self>, StoreError> {
        Ok(r.try_get(i)?)
    }
}

impl Column for Vec<u8> {
    fn lite(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Self> {
        r.get(i)
    }
    fn pg_opt(r: &postgres::Row, i: usize) -> Result<Option<Self>, StoreError> {
        Ok(r.try_get(i)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_dollars_outside_literals() {
        assert_eq!(pg_sql("SELECT 1"), "SELECT 1");
        assert_eq!(pg_sql("SELECT ?1, ?2 WHERE a = ?1"), "SELECT $1, $2 WHERE a = $1");
        assert_eq!(pg_sql("VALUES (?, ?, ?5, ?)"), "VALUES ($1, $2, $5, $6)");
        assert_eq!(pg_sql("SELECT '?1', \"a?\" -- why?\n, ?1"), "SELECT '?1', \"a?\" -- why?\n, $1");
        assert_eq!(pg_sql("SELECT 'it''s ?' || ?3"), "SELECT 'it''s ?' || $3");
    }

    /// The same values bind to both databases, whatever type PostgreSQL gives a parameter;
    /// one that does not fit is an error. (A parameter with no context, `?4 IS NULL` alone,
    /// has no type on PostgreSQL: statements give it one with a CAST.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn values_bind_alike_on_both_databases() {
        let dir = tempfile::tempdir().unwrap();
        let mut dbs = vec![crate::db::Db::open(&dir.path().join("t.db"), true).unwrap()];
        let pg = crate::test_support::postgres();
        if let Some(pg) = &pg {
            dbs.push(crate::db::Db::open_postgres(&pg.url, true).unwrap());
        }
        for db in dbs {
            let got = db
                .read(|c| {
                    c.one(
                        "SELECT ?1 = 0, ?2 + 1, CAST(?3 AS TEXT), CAST(?4 AS BIGINT) IS NULL, CAST(?5 AS BIGINT), CAST(?6 AS DOUBLE PRECISION) * 2",
                        &[&0i64, &41i64, &"x", &None::<i64>, &true, &1.5f64],
                        |r| {
                            Ok((
                                r.get::<bool>(0)?,
                                r.get::<i64>(1)?,
                                r.get::<String>(2)?,
                                r.get::<bool>(3)?,
                                r.get::<i64>(4)?,
                                r.get::<f64>(5)?,
                            ))
                        },
                    )
                })
                .await
                .unwrap();
            assert_eq!(got, (true, 42, "x".to_string(), true, 1, 3.0), "{:?}", db.dialect());
            db.close();
        }
        if let Some(pg) = &pg {
            let db = crate::db::Db::open_postgres(&pg.url, false).unwrap();
            let e = db.read(|c| c.one("SELECT ?1 = 0", &[&(1i64 << 40)], |r| r.get::<bool>(0))).await;
            assert!(e.is_err(), "an i64 too wide for int4 is refused: {e:?}");
            db.close();
        }
    }
}
