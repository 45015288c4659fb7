//! The scripts against a real `redis-server` (started here on a free port, killed on
//! drop), for what the HTTP tests cannot bring about on purpose.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use deadpool_redis::redis::{self, Value, aio::MultiplexedConnection};

use super::{Scripts, script::Invocation};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn redis_server() -> (Server, MultiplexedConnection) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (is it on PATH?)");
    let server = Server(child);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    for _ in 0..300 {
        if let Ok(conn) = client.get_multiplexed_async_connection().await {
            return (server, conn);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("redis-server did not start");
}

fn acquire<'a>(scripts: &'a Scripts, agent: &str, token: &str, reply_key: &str) -> Invocation<'a> {
    let mut call = scripts.acquire.invocation();
    call.key("t{0}:lock:r")
        .key("t{0}:fence:r")
        .key("t{0}:events")
        .key("t{0}:expiry")
        .key("t{0}:held")
        .key("t{0}:leases")
        .key(reply_key)
        .arg(token)
        .arg(agent)
        .arg(60_000)
        .arg("r")
        .arg("t:events")
        .arg(100)
        .arg(60_000)
        .arg("")
        .arg("");
    call
}

fn forced_release<'a>(scripts: &'a Scripts, reply_key: &str) -> Invocation<'a> {
    let mut call = scripts.release.invocation();
    call.key("t{0}:lock:r")
        .key("t{0}:events")
        .key("t{0}:expiry")
        .key("t{0}:held")
        .key("t{0}:leases")
        .key(reply_key)
        .arg("")
        .arg("r")
        .arg("t:events")
        .arg(100)
        .arg("");
    call
}

async fn holder(conn: &mut MultiplexedConnection) -> Option<String> {
    redis::cmd("HGET")
        .arg("t{0}:lock:r")
        .arg("agent")
        .query_async(conn)
        .await
        .unwrap()
}

/// A cluster connection resends a call whose reply it lost. A forced release run again
/// after someone else took the lock must not end their lease: it answers what it
/// answered the first time and changes nothing.
#[tokio::test]
async fn a_change_run_again_returns_its_first_reply_and_changes_nothing() {
    let (_server, mut conn) = redis_server().await;
    let scripts = Scripts::new("PUBLISH", Duration::from_secs(10));

    let granted = acquire(&scripts, "agent-a", "digest-a", "t{0}:reply:1")
        .invoke(&mut conn)
        .await
        .unwrap();
    let released = forced_release(&scripts, "t{0}:reply:2")
        .invoke(&mut conn)
        .await
        .unwrap();
    assert!(matches!(&released, Value::Array(items) if items[0] == Value::Int(1)));
    acquire(&scripts, "agent-b", "digest-b", "t{0}:reply:3")
        .invoke(&mut conn)
        .await
        .unwrap();

    // A call answered from its kept reply still writes (it renews the kept reply), so
    // that a WAIT after it waits for the replicas to reach the change.
    let () = redis::cmd("PEXPIRE")
        .arg("t{0}:reply:2")
        .arg(5_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let again = forced_release(&scripts, "t{0}:reply:2")
        .invoke(&mut conn)
        .await
        .unwrap();
    assert_eq!(again, released, "the first run's reply");
    let renewed: i64 = redis::cmd("PTTL")
        .arg("t{0}:reply:2")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(renewed > 5_000, "{renewed}");
    assert_eq!(holder(&mut conn).await.as_deref(), Some("agent-b"));
    let regranted = acquire(&scripts, "agent-a", "digest-a", "t{0}:reply:1")
        .invoke(&mut conn)
        .await
        .unwrap();
    assert_eq!(regranted, granted, "a grant run again is the same grant");
    assert_eq!(holder(&mut conn).await.as_deref(), Some("agent-b"));

    // The kept reply goes after its time; a 16-digit fencing token survived the keeping.
    let ttl: i64 = redis::cmd("PTTL")
        .arg("t{0}:reply:1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=10_000).contains(&ttl), "{ttl}");
    let Value::Array(items) = &granted else {
        panic!("{granted:?}")
    };
    assert!(matches!(items[1], Value::Int(fence) if fence > 1_000_000_000_000_000));

    // Outside cluster mode no key is given, and a forced release does what it says.
    let mut plain = scripts.release.invocation();
    plain
        .key("t{0}:lock:r")
        .key("t{0}:events")
        .key("t{0}:expiry")
        .key("t{0}:held")
        .key("t{0}:leases")
        .arg("")
        .arg("r")
        .arg("t:events")
        .arg(100)
        .arg("");
    plain.invoke(&mut conn).await.unwrap();
    assert_eq!(holder(&mut conn).await, None);
}
