//! The ClickHouse test harness itself (tests/it/common/clickhouse.rs).

use crate::common::clickhouse::*;
use serde_json::json;

#[tokio::test]
async fn fresh_databases_are_distinct_and_empty() {
    let ch = ClickHouse::shared().await;
    let a = ch.fresh_database("harness::fresh databases!").await;
    let b = ch.fresh_database("harness::fresh databases!").await;
    assert_ne!(a, b);
    for db in [&a, &b] {
        assert!(db.starts_with("harness__fresh_databases_"), "{db}");
        let tables = ch
            .rows(&format!(
                "SELECT count() AS n FROM system.tables WHERE database = '{db}'"
            ))
            .await;
        assert_eq!(tables, vec![json!({"n": 0})]);
    }

    // A table in one is not visible in the other.
    ch.exec(&format!(
        "CREATE TABLE {a}.t (x UInt8) ENGINE = MergeTree ORDER BY x"
    ))
    .await;
    ch.exec(&format!("INSERT INTO {a}.t VALUES (7)")).await;
    assert_eq!(ch.exec(&format!("SELECT x FROM {a}.t")).await, "7\n");
    let in_b = ch
        .rows(&format!(
            "SELECT name FROM system.tables WHERE database = '{b}'"
        ))
        .await;
    assert!(in_b.is_empty(), "{in_b:?}");
}

#[tokio::test]
async fn private_server_keeps_rows_across_kill9_and_restart() {
    let mut server = PrivateServer::start().await;
    let ch = server.client();
    let db = ch.fresh_database("kill9").await;
    ch.exec(&format!(
        "CREATE TABLE {db}.t (id UInt32, s String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    ch.exec(&format!("INSERT INTO {db}.t VALUES (1, 'before kill')"))
        .await;

    let (port, pid) = (server.port, server.pid());
    server.kill9();
    assert!(
        reqwest::get(format!("{}/ping", server.url()))
            .await
            .is_err(),
        "server still answers after kill9"
    );
    server.restart().await;
    assert_eq!(server.port, port);
    assert_ne!(server.pid(), pid);

    let rows = server
        .client()
        .rows(&format!("SELECT id, s FROM {db}.t"))
        .await;
    assert_eq!(rows, vec![json!({"id": 1, "s": "before kill"})]);
}
