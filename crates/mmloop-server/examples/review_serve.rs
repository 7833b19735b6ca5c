//! Serves a project's review UI and API like `mmloop review`, without building the whole
//! `mmloop` binary (the benchmark uses it so that the server's build does not wait on the
//! model engines'). Creates the admin account on the first run from `MMLOOP_ADMIN_PASSWORD`,
//! prints the URL and an admin API token for the load generator, and stops on SIGTERM.
//!
//! ```sh
//! MMLOOP_ADMIN_PASSWORD=... cargo run --release -p mmloop-server --example review_serve -- PROJECT [PORT]
//! ```

use std::path::PathBuf;

/// The allocator of the `mmloop` binary, so the benchmark measures what `mmloop review` runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let project = PathBuf::from(args.next().expect("usage: review_serve PROJECT [PORT]"));
    let port: u16 = args.next().map(|p| p.parse().expect("PORT")).unwrap_or(0);
    let store = mmloop_store::Store::open(&project).await.expect("open the project");
    let password = std::env::var("MMLOOP_ADMIN_PASSWORD").unwrap_or_else(|_| "bench admin password".into());
    store.ensure_admin("admin", &password, "bench").await.expect("admin account");
    let (_, token) = store.create_token("admin", "bench", None, "bench").await.expect("token");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("listen");
    println!("http://{}", listener.local_addr().unwrap());
    println!("{}", token.secret);
    mmloop_server::serve(
        store.clone(),
        listener,
        mmloop_server::ServerConfig::default(),
        mmloop_server::shutdown_signal(),
    )
    .await
    .expect("serve");
    store.close();
}
