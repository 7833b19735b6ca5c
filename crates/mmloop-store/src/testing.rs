//! Test helpers shared with the other crates' tests (feature `testing`): a throwaway
//! PostgreSQL database on the server the tests are given.

/// A fresh, empty PostgreSQL database for one test on the server `MMLOOP_TEST_POSTGRES` names
/// (`tools/pg_test_server.sh start DIR` starts one); dropped with the guard. `None` when no
/// server is configured, unless `MMLOOP_REQUIRE_POSTGRES` is set (CI): then the test fails.
pub fn postgres() -> Option<PgDatabase> {
    let Ok(server) = std::env::var("MMLOOP_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("MMLOOP_REQUIRE_POSTGRES").is_none(),
            "MMLOOP_REQUIRE_POSTGRES is set but MMLOOP_TEST_POSTGRES names no server (tools/pg_test_server.sh)"
        );
        eprintln!("skipped: no PostgreSQL server (set MMLOOP_TEST_POSTGRES, see tools/pg_test_server.sh)");
        return None;
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!("mmloop_test_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    pg_admin(&server, &format!("DROP DATABASE IF EXISTS {name}")).expect("the test PostgreSQL server");
    pg_admin(&server, &format!("CREATE DATABASE {name}")).expect("a test database");
    let url = match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("MMLOOP_TEST_POSTGRES={server}: expected a URL ending in /DATABASE"),
    };
    Some(PgDatabase { server, url, name })
}

/// See [`postgres`].
pub struct PgDatabase {
    server: String,
    pub url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = pg_admin(&self.server, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Runs `sql` on the database at `url` from a thread of its own (the `postgres` client must not
/// run on an async thread, where the tests are).
pub fn pg_admin(url: &str, sql: &str) -> Result<(), postgres::Error> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || postgres::Client::connect(&url, postgres::NoTls)?.batch_execute(&sql))
        .join()
        .expect("the admin thread")
}
